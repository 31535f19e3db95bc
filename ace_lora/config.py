"""The method's settings: the AceLoRAConfig of a model, the choices of its flags, and the default backbone.

Torch-free, so that command lines (and their --help) can offer these choices without loading torch.
"""
from dataclasses import asdict, dataclass, field
from typing import List, Optional

from .errors import UserInputError

BIOMEDCLIP_HUB = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
LOCAL_PREFIX = "local-dir:"  # open_clip's name for a model folder on disk
HUB_PREFIX = "hf-hub:"
TAG_SEPARATOR = "@"  # ViT-B-16@openai: an open_clip model name and its pretrained tag


def model_spec(model: str, pretrained: Optional[str] = None) -> str:
    """The one string that names a backbone: `model`, with `@pretrained` for an open_clip model name."""
    if not pretrained:
        return model
    if model.startswith((LOCAL_PREFIX, HUB_PREFIX)):
        raise UserInputError(f"--pretrained is for open_clip model names; {model} brings its own weights")
    name, _, tag = model.partition(TAG_SEPARATOR)
    if tag and tag != pretrained:
        raise UserInputError(f"--model {model} names the weights {tag!r}, --pretrained {pretrained!r}: give one")
    return f"{name}{TAG_SEPARATOR}{pretrained}"
LOSS_CHOICES = ("label_guided", "clip", "siglip", "label_guided_siglip")
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


@dataclass
class AceLoRAConfig:
    """One model: LoRA (rank, alpha, dropout, projections, layers) and the ACE-HGNN (top-k, width, towers)."""

    r: int = 4
    alpha: float = 1.0
    dropout: float = 0.1
    params: List[str] = field(default_factory=lambda: ["q", "k", "v"])
    position: str = "all"
    topk: int = 5
    hidden_features: int = 128
    apply_gnn_encoders: str = "both"
    method: str = "ace_lora"  # ace_lora.methods.METHODS: what else trains (own LoRA in `params`, peft, full)
    peft: Optional[dict] = None  # the peft config of a peft method (ace_lora.methods)

    def validate(self) -> None:
        unknown = [p for p in self.params if p not in LORA_PARAMS]
        if unknown:
            raise UserInputError(f"unknown LoRA params {unknown}; choose from {', '.join(LORA_PARAMS)}")
        if self.apply_gnn_encoders not in GNN_CHOICES:
            raise UserInputError(f"--apply-gnn-encoders must be one of {', '.join(GNN_CHOICES)}")
        if self.r < 1:
            raise UserInputError(f"LoRA rank must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserInputError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if self.alpha <= 0:
            raise UserInputError(f"LoRA alpha must be > 0, got {self.alpha}")
        if self.topk < 1 or self.hidden_features < 1:
            raise UserInputError(f"--topk and --hidden-features must be >= 1, got {self.topk} and "
                                 f"{self.hidden_features}")

    def to_dict(self) -> dict:
        return asdict(self)


