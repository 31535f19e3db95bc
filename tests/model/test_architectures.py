"""The medical transformers architectures with random weights: their trainable counts, counted by hand."""
import pytest

from ace_lora.model.architectures import ARCHITECTURES, random_backbone
from ace_lora.model.model import AceLoRAModel


def hand_count(image_width: int, text_width: int, layers: int, joint: int, bias: bool, r: int = 4,
               hidden: int = 128) -> int:
    """LoRA r on q, k, v (square) of every layer of both towers, two adapters per tower in the joint space, the
    scale and (SigLIP) the logit bias."""
    lora = layers * 3 * r * 2 * (image_width + text_width)
    adapters = 2 * 2 * (joint * hidden + hidden + hidden * joint + joint)
    return lora + adapters + 1 + bias


def test_plip_is_clip_vit_b_32():
    model = AceLoRAModel(random_backbone("plip"))
    assert model.num_trainable() == hand_count(768, 512, 12, 512, bias=False) == 895_489
    assert model.input_spec.size == 224 and model.tokenizer(["edema"]).shape == (1, 77)


@pytest.mark.slow
def test_medsiglip_448_is_siglip_so400m_at_448_pixels():
    backbone = random_backbone("medsiglip-448")
    assert sum(p.numel() for p in backbone.clip.parameters()) == 878_300_338  # the model card's "about 900 M"
    model = AceLoRAModel(backbone)
    assert model.num_trainable() == hand_count(1152, 1152, 27, 1152, bias=True) == 2_677_762
    assert model.input_spec.size == 448 and model.tokenizer(["edema"]).shape == (1, 64)
    assert set(ARCHITECTURES) == {"medsiglip-448", "plip"}
