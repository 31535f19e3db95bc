"""Building ACE-LoRA models: for training, and for evaluation from a checkpoint or the bare backbone."""
from typing import Optional

from ace_lora.model.backbone import load_backbone
from ace_lora.model.checkpoint import read_trained
from ace_lora.model.config import BIOMEDCLIP_HUB, AceLoRAConfig
from ace_lora.model.model import AceLoRAModel

# The zero-shot baseline: BiomedCLIP itself (no LoRA, no hypergraph; token 0 is open_clip's embedding).
BARE_BACKBONE = AceLoRAConfig(params=[], apply_gnn_encoders="none")


def build_model(model_name: str = BIOMEDCLIP_HUB, config: Optional[AceLoRAConfig] = None,
                device: str = "cpu") -> AceLoRAModel:
    model = AceLoRAModel(load_backbone(model_name), config or AceLoRAConfig())
    return model.to(device)


def load_model_for_eval(model_name: str = BIOMEDCLIP_HUB, checkpoint: Optional[str] = None,
                        device: str = "cpu", merge: bool = True) -> AceLoRAModel:
    """A model in eval mode with LoRA merged (no low-rank overhead at inference).

    `checkpoint` may be the released weight format (`weights` + `metadata`), our training
    checkpoint (`trainable` + `config`), an export folder (ace_lora/model/export.py: it is its own merged
    backbone, so `model_name` is not used), or None for the bare BiomedCLIP baseline `model_name`.
    """
    if checkpoint is None:
        model = build_model(model_name, AceLoRAConfig(**BARE_BACKBONE.to_dict()))
    else:
        trained = read_trained(checkpoint)  # every format, one reader
        model = build_model(trained.backbone or model_name, trained.config)
        trained.load_into(model)
    model.eval().requires_grad_(False)
    if merge:
        model.merge_lora(True)
    return model.to(device)

