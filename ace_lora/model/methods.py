"""The method registry: which numbers each `--method` trains, built from the training flags.

REGISTRY is the one list of methods (ace_lora, lora, full, dora, ia3, loha, vera, peft, bare); the model,
the trainer, the launcher, the sweep and export ask it (`get_method(name)`) instead of comparing names.
Adding a method is one `Method` entry: what trains (our LoRA, a peft config, the backbone, nothing), the
flag defaults it brings, and from that its weight format and how export merges it. Torch-free.

Every method can be combined with the ACE-HGNN (`--apply-gnn-encoders both|vision|text`): "X + ACE-HGNN".
The peft methods adapt a fused q/k/v projection (timm's `qkv`, open_clip's `in_proj`, 768 -> 2304) as one
Linear: one adapter over q, k and v together (e.g. one DoRA magnitude per output of the fused matrix, one
LoHa update for all three), while BERT's query, key and value are three Linears with an adapter each. Our
own LoRA keeps separate (A, B) pairs for the q, k and v rows of the fused matrix.
"""
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from ace_lora.errors import UserInputError

VERA_RANK = 256  # VeRA's shared random projections are wide (the VeRA paper's default); only scalings train
PeftConfigMaker = Callable[[int, float, float, Optional[str]], dict]  # (r, alpha, dropout, --peft-config) -> config


@dataclass(frozen=True)
class Method:
    """One entry of the registry: what a `--method` trains, and how the rest of the code treats it.

    own_lora: our LoRA factors on `--params` (r, alpha, dropout, positions), which is also the released
    weight format (ACE-LoRA_weights_*.pt); peft_config: a peft tuner instead (its config from the flags);
    trains_backbone: every backbone weight trains; trains: False for an evaluation-only baseline.
    export_merge: how export.py folds the method into plain open_clip weights ('own_lora', 'peft'
    through peft's merge_and_unload, 'as_trained' for weights that are already plain, 'none').
    """

    name: str
    what_trains: str
    own_lora: bool = False
    peft_config: Optional[PeftConfigMaker] = None
    trains_backbone: bool = False
    trains: bool = True
    defaults: Dict[str, object] = field(default_factory=dict)  # flag defaults (explicit flags still win)

    @property
    def released_format(self) -> bool:
        return self.own_lora

    @property
    def export_merge(self) -> str:
        if not self.trains:
            return "none"
        if self.peft_config is not None:
            return "peft"
        return "own_lora" if self.own_lora else "as_trained"


def _peft_file(_r: int, _alpha: float, _dropout: float, path: Optional[str]) -> dict:
    if not path:
        raise UserInputError("--method peft needs --peft-config FILE (a peft config as JSON)")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise UserInputError(f"--peft-config {path}: not a readable JSON file ({error})") from None
    if not isinstance(config, dict) or "peft_type" not in config:
        raise UserInputError(f"--peft-config {path}: a JSON object with 'peft_type' is needed")
    return config


NO_HGNN = {"apply_gnn_encoders": "none"}
REGISTRY: Dict[str, Method] = {m.name: m for m in (
    Method("ace_lora", "LoRA (ours) on q/k/v of both towers + ACE-HGNN adapters + scale", own_lora=True),
    Method("lora", "LoRA only (the CLIP-LoRA design at ACE-LoRA's rank, scaling and positions) + scale",
           own_lora=True, defaults=NO_HGNN),
    Method("full", "every backbone weight + scale (its own default learning rate, 1e-5)", trains_backbone=True,
           defaults={**NO_HGNN, "lr": 1e-5}),
    # rsLoRA scaling alpha / sqrt(r), as ACE-LoRA's own LoRA
    Method("dora", "peft DoRA on the attention projections of both towers + scale", defaults=NO_HGNN,
           peft_config=lambda r, alpha, dropout, _: {"peft_type": "LORA", "r": r, "lora_alpha": alpha,
                                                     "lora_dropout": dropout, "use_dora": True,
                                                     "use_rslora": True}),
    Method("ia3", "peft IA3 on the attention projections of both towers + scale", defaults=NO_HGNN,
           peft_config=lambda *_: {"peft_type": "IA3", "feedforward_modules": []}),
    Method("loha", "peft LoHa on the attention projections of both towers + scale", defaults=NO_HGNN,
           peft_config=lambda r, alpha, dropout, _: {"peft_type": "LOHA", "r": r, "alpha": alpha,
                                                     "module_dropout": dropout}),
    Method("vera", "peft VeRA on the attention projections of both towers + scale", defaults=NO_HGNN,
           peft_config=lambda r, alpha, dropout, _: {"peft_type": "VERA", "r": VERA_RANK, "vera_dropout": dropout}),
    Method("peft", "any peft tuner for Linear layers from --peft-config FILE (a peft config as JSON)",
           defaults=NO_HGNN, peft_config=_peft_file),
    Method("bare", "nothing: the zero-shot backbone (evaluation only)", trains=False),
)}
METHODS = tuple(REGISTRY)
PEFT_METHODS = tuple(name for name, m in REGISTRY.items() if m.peft_config is not None)


def get_method(name: str) -> Method:
    if name not in REGISTRY:
        raise UserInputError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return REGISTRY[name]


def target_modules(tower_targets: List[str]) -> str:
    """A peft `target_modules` regex from the towers' own (ace_lora.model.towers: `Tower.peft_targets`): BERT
    query/key/value, timm's fused qkv, open_clip's fused in_proj, of the layers --position chose."""
    return "^(" + "|".join(tower_targets) + ")$"


def peft_config_for(method: str, r: int, alpha: float, dropout: float,
                    peft_config_file: Optional[str] = None) -> Optional[dict]:
    """The peft config (a dict for peft.get_peft_config) of a peft method, None for the others. Without
    `target_modules`: the model adds its towers' for --position (`target_modules`), unless a
    --peft-config file names its own."""
    maker = get_method(method).peft_config
    return None if maker is None else maker(r, alpha, dropout, peft_config_file)


def apply_peft(clip, config: dict, tower_targets: List[str]):
    """Inject the peft tuner into `clip` in place (only its adapters train); returns the PeftModel,
    which owns state some tuners share across layers (VeRA's projections) and must be kept alive."""
    from peft import get_peft_config, get_peft_model  # here: this module is imported by --help (no torch)
    config = {"target_modules": target_modules(tower_targets), **config}
    try:
        peft_model = get_peft_model(clip, get_peft_config(config))
    except (ValueError, TypeError, KeyError) as error:
        raise UserInputError(f"the peft config does not apply to this model: {str(error).splitlines()[0]}") from None
    return peft_model


def check_method_file(path: Optional[str]) -> None:
    if path and not os.path.isfile(path):
        raise UserInputError(f"--peft-config {path}: file not found")

