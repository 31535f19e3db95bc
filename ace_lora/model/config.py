"""The method's settings: the AceLoRAConfig of a model, the choices of its flags, and the default backbone.

Torch-free, so that command lines (and their --help) can offer these choices without loading torch.
"""
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import Any, Callable, List, Optional, Sequence, Tuple

from ace_lora.errors import UserInputError
from ace_lora.model.methods import get_method, peft_config_for

BIOMEDCLIP_HUB = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
LOCAL_PREFIX = "local-dir:"  # open_clip's name for a model folder on disk
HUB_PREFIX = "hf-hub:"
TRANSFORMERS_PREFIX = "hf:"  # a transformers CLIPModel / SiglipModel: a Hub id or a save_pretrained folder
TAG_SEPARATOR = "@"  # ViT-B-16@openai: an open_clip model name and its pretrained tag


def model_spec(model: str, pretrained: Optional[str] = None) -> str:
    """The one string that names a backbone: `model`, with `@pretrained` for an open_clip model name."""
    if not pretrained:
        return model
    if model.startswith((LOCAL_PREFIX, HUB_PREFIX, TRANSFORMERS_PREFIX)):
        raise UserInputError(f"--pretrained is for open_clip model names; {model} brings its own weights")
    name, _, tag = model.partition(TAG_SEPARATOR)
    if tag and tag != pretrained:
        raise UserInputError(f"--model {model} names the weights {tag!r}, --pretrained {pretrained!r}: give one")
    return f"{name}{TAG_SEPARATOR}{pretrained}"
# The registered losses (ace_lora.model.loss makes each from its entry): what it uses and how it scores.
LOSS_KINDS = {
    "label_guided": dict(uses_labels=True, sigmoid=False),  # the released default
    "clip": dict(uses_labels=False, sigmoid=False),
    "siglip": dict(uses_labels=False, sigmoid=True),
    "label_guided_siglip": dict(uses_labels=True, sigmoid=True),
}
LORA_POSITIONS = ("all", "bottom", "mid", "up", "half-up", "half-bottom", "top", "top3")
LORA_PARAMS = ("q", "k", "v", "o")
GNN_CHOICES = ("both", "vision", "text", "none")


def select_layers(position: str, depth: int) -> List[int]:
    """Layer indices that get LoRA, relative to depth (for 12 layers: bottom 0-3, mid 4-7, up 8-11)."""
    third, half = depth // 3, depth // 2
    ranges = {
        "all": range(depth),
        "bottom": range(0, third),
        "mid": range(third, 2 * third),
        "up": range(2 * third, depth),
        "half-bottom": range(0, half),
        "half-up": range(half, depth),
        "top": range(depth - 1, depth),
        "top3": range(max(depth - 3, 0), depth),
    }
    if position not in ranges:
        raise UserInputError(f"unknown LoRA position '{position}'; choose from {', '.join(LORA_POSITIONS)}")
    if not ranges[position]:
        raise UserInputError(f"LoRA position '{position}' selects no layer of a {depth}-layer tower")
    return list(ranges[position])


def setting(default, *, flag: str, help: str, released: Optional[str], part: str, shapes: bool = True,
            choices: Optional[Sequence[str]] = None, rule: Optional[Tuple[str, Callable[[Any], bool]]] = None,
            released_alias: Optional[str] = None):
    """One declared model setting: its default, its training flag and help, its key in the released weight
    format (None: not recorded there; `released_alias`: a second key the authors' files use), the part of the model
    it belongs to ('lora': merged away by export; 'hgnn': kept by export), whether it changes the trained tensors'
    meaning (`shapes`: compared by --init-from), its choices and a rule ('>= 1', predicate) every value keeps."""
    factory = (lambda: list(default)) if isinstance(default, list) else None
    metadata = dict(flag=flag, help=help, released=released, part=part, shapes=shapes, choices=choices, rule=rule,
                    released_alias=released_alias)
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


AT_LEAST_ONE = (">= 1", lambda v: v >= 1)


@dataclass
class AceLoRAConfig:
    """One model: LoRA (rank, alpha, dropout, projections, layers) and the ACE-HGNN (top-k, width, towers).

    Each setting is declared once, here (`setting`): the training flags, their YAML keys and --help, the
    validation, the run's config.yaml, the checkpoints' records, the resume and --init-from checks and the
    reading of released metadata all derive from these declarations (`declared_settings`). Adding one is a
    declaration plus its use in the model.
    """

    r: int = setting(4, flag="--lora-r", help="LoRA rank r", released="r", part="lora", rule=AT_LEAST_ONE)
    alpha: float = setting(1.0, flag="--lora-alpha", help="LoRA alpha; the update is scaled by alpha/sqrt(r)",
                           released="alpha", part="lora", rule=("> 0", lambda v: v > 0))
    dropout: float = setting(0.1, flag="--lora-dropout", help="dropout on the LoRA input", released="dropout_rate",
                             part="lora", shapes=False, rule=("in [0, 1)", lambda v: 0.0 <= v < 1.0))
    params: List[str] = setting(["q", "k", "v"], flag="--params", choices=LORA_PARAMS, released="params",
                                part="lora", help="attention projections that get LoRA (q k v, optionally o)")
    position: str = setting("all", flag="--position", choices=LORA_POSITIONS, released="position", part="lora",
                            help="which layers of each tower get LoRA (bottom/mid/up = thirds, half-*, top = last, "
                                 "top3 = last three)")
    topk: int = setting(5, flag="--topk", help="hyperedge size: top-k related tokens per token", released="topk",
                        released_alias="k_nearest", part="hgnn", rule=AT_LEAST_ONE)
    hidden_features: int = setting(128, flag="--hidden-features", help="hidden width of the ACE-HGNN adapters",
                                   released="hidden_features", part="hgnn", rule=AT_LEAST_ONE)
    apply_gnn_encoders: str = setting("both", flag="--apply-gnn-encoders", choices=GNN_CHOICES,
                                      released="apply_gnn_encoders", part="hgnn",
                                      help="towers that get the ACE-HGNN adapters; none = LoRA only (the CLIP-LoRA "
                                           "baseline)")
    # What else trains, from the method registry (not settings of their own): --method, and for a peft method
    # the peft config its flags make (ace_lora.model.methods).
    method: str = "ace_lora"
    peft: Optional[dict] = None

    def validate(self) -> None:
        """Every value keeps its declaration's choices and rule (one error naming the flag)."""
        for spec in declared_settings():
            value = getattr(self, spec.name)
            choices = spec.metadata["choices"]
            if choices is not None:
                unknown = [v for v in (value if isinstance(value, list) else [value]) if v not in choices]
                if unknown:
                    raise UserInputError(f"{spec.metadata['flag']} {' '.join(map(str, unknown))} is not one of "
                                         f"{', '.join(choices)}")
            rule = spec.metadata["rule"]
            if rule is not None and not rule[1](value):
                raise UserInputError(f"{spec.metadata['flag']} must be {rule[0]}, got {value}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "checkpoint") -> "AceLoRAConfig":
        """A recorded configuration; settings it predates read as their defaults, settings this version does not
        know (a file from a newer one) are refused: ignoring them would build another model."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise UserInputError(f"{source} records model settings this version does not know ({', '.join(unknown)}): "
                                 "it was written by a newer ACE-LoRA; update this repository")
        return cls(**values)


def declared_settings() -> Tuple[Field, ...]:
    """The declared settings of AceLoRAConfig (those with a flag), in declaration order."""
    return tuple(f for f in fields(AceLoRAConfig) if "flag" in f.metadata)


def setting_dest(spec: Field) -> str:
    """The argparse destination (and YAML key) of a declared setting: --lora-r -> lora_r."""
    return spec.metadata["flag"][2:].replace("-", "_")


def setting_default(spec: Field):
    return spec.default_factory() if spec.default is MISSING else spec.default


def add_setting_args(group) -> None:
    """The training flags of every declared setting."""
    for spec in declared_settings():
        kind = {"int": int, "float": float}.get(spec.type if isinstance(spec.type, str) else spec.type.__name__)
        many = isinstance(setting_default(spec), list)
        group.add_argument(spec.metadata["flag"], type=kind, default=setting_default(spec),
                           choices=spec.metadata["choices"], nargs="+" if many else None, help=spec.metadata["help"])


def config_from_args(args) -> AceLoRAConfig:
    """The model of the training flags; --method decides what else trains (ace_lora.model.methods): our own LoRA
    on --params, or a peft tuner made from the LoRA flags, or the backbone."""
    values = {spec.name: getattr(args, setting_dest(spec)) for spec in declared_settings()}
    peft = peft_config_for(args.method, values["r"], values["alpha"], values["dropout"], args.peft_config)
    values["params"] = list(values["params"]) if get_method(args.method).own_lora else []
    return AceLoRAConfig(**values, method=args.method, peft=peft)
