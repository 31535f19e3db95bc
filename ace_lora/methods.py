"""Baselines on the same pipeline: which numbers each method trains, built from the training flags.

| method | what trains |
| --- | --- |
| ace_lora | LoRA (ours) on q/k/v of both towers + ACE-HGNN adapters + scale |
| lora | LoRA only (the CLIP-LoRA design at ACE-LoRA's rank, scaling and positions) + scale |
| full | every backbone weight + scale (its own default learning rate, 1e-5) |
| dora, ia3, loha, vera | Hugging Face `peft` on the attention projections of both towers + scale |
| peft | any peft tuner for Linear layers from `--peft-config FILE` (a peft config as JSON) |
| bare | nothing: the zero-shot BiomedCLIP backbone (evaluation only) |

Every method can be combined with the ACE-HGNN (`--apply-gnn-encoders both|vision|text`): "X + ACE-HGNN".
The peft methods adapt timm's fused `qkv` projection as one Linear (768 -> 2304): one adapter over q, k
and v together (e.g. one DoRA magnitude per output of the fused matrix, one LoHa update for all three),
while BERT's query, key and value are three Linears with an adapter each. Our own LoRA keeps separate
(A, B) pairs for the q, k and v rows of the fused matrix.
"""
import json
import os
from typing import Dict, List, Optional

from .config import select_layers
from .errors import UserInputError

OWN_LORA_METHODS = ("ace_lora", "lora")
PEFT_METHODS = ("dora", "ia3", "loha", "vera", "peft")
METHODS = OWN_LORA_METHODS + ("full",) + PEFT_METHODS + ("bare",)
# Flag defaults each method brings (explicit flags and --config still win).
METHOD_DEFAULTS: Dict[str, dict] = {
    "lora": dict(apply_gnn_encoders="none"),
    "full": dict(apply_gnn_encoders="none", lr=1e-5),
    **{name: dict(apply_gnn_encoders="none") for name in PEFT_METHODS},
}
VERA_RANK = 256  # VeRA's shared random projections are wide (the VeRA paper's default); only scalings train


def target_modules(position: str, n_text: int, n_vision: int) -> str:
    """A peft `target_modules` regex: BERT query/key/value and the ViT fused qkv of the chosen layers."""
    text = "|".join(map(str, select_layers(position, n_text)))
    vision = "|".join(map(str, select_layers(position, n_vision)))
    return (rf"^(text\.transformer\.encoder\.layer\.({text})\.attention\.self\.(query|key|value)"
            rf"|visual\.trunk\.blocks\.({vision})\.attn\.qkv)$")


def peft_config_for(method: str, r: int, alpha: float, dropout: float,
                    peft_config_file: Optional[str] = None) -> Optional[dict]:
    """The peft config (a dict for peft.get_peft_config) of a peft method, None for the others. Without
    `target_modules`: the model adds them for its depth and --position (`target_modules`), unless a
    --peft-config file names its own."""
    if method not in PEFT_METHODS:
        return None
    if method == "peft":
        if not peft_config_file:
            raise UserInputError("--method peft needs --peft-config FILE (a peft config as JSON)")
        try:
            with open(peft_config_file, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, json.JSONDecodeError) as error:
            raise UserInputError(f"--peft-config {peft_config_file}: not a readable JSON file ({error})") from None
        if not isinstance(config, dict) or "peft_type" not in config:
            raise UserInputError(f"--peft-config {peft_config_file}: a JSON object with 'peft_type' is needed")
        return config
    if method == "dora":  # rsLoRA scaling alpha / sqrt(r), as ACE-LoRA's own LoRA
        return {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "lora_dropout": dropout, "use_dora": True,
                "use_rslora": True}
    if method == "ia3":
        return {"peft_type": "IA3", "feedforward_modules": []}
    if method == "loha":
        return {"peft_type": "LOHA", "r": r, "alpha": alpha, "module_dropout": dropout}
    return {"peft_type": "VERA", "r": VERA_RANK, "vera_dropout": dropout}


def apply_peft(clip, config: dict, position: str, n_text: int, n_vision: int) -> List[object]:
    """Inject the peft tuner into `clip` in place (only its adapters train); returns the PeftModel,
    which owns state some tuners share across layers (VeRA's projections) and must be kept alive."""
    from peft import get_peft_config, get_peft_model  # here: this module is imported by --help (no torch)
    config = {"target_modules": target_modules(position, n_text, n_vision), **config}
    try:
        peft_model = get_peft_model(clip, get_peft_config(config))
    except (ValueError, TypeError, KeyError) as error:
        raise UserInputError(f"the peft config does not apply to this model: {str(error).splitlines()[0]}") from None
    return [peft_model]


def check_method_file(path: Optional[str]) -> None:
    if path and not os.path.isfile(path):
        raise UserInputError(f"--peft-config {path}: file not found")

