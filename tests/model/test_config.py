"""The method's settings: layer selection relative to depth, the declarations' checks, and that every declared
setting reaches the model."""
import pytest
import torch

from ace_lora.errors import UserInputError
from ace_lora.model.config import AceLoRAConfig, declared_settings, select_layers, setting_default
from ace_lora.model.factory import build_model


def test_select_layers_relative_to_depth():
    assert select_layers("all", 12) == list(range(12))
    assert select_layers("bottom", 12) == [0, 1, 2, 3]
    assert select_layers("mid", 12) == [4, 5, 6, 7]
    assert select_layers("up", 12) == [8, 9, 10, 11]
    assert select_layers("half-bottom", 12) == [0, 1, 2, 3, 4, 5]
    assert select_layers("half-up", 12) == [6, 7, 8, 9, 10, 11]
    assert select_layers("top", 12) == [11]
    assert select_layers("top3", 12) == [9, 10, 11]
    assert select_layers("mid", 6) == [2, 3]
    with pytest.raises(UserInputError, match="unknown LoRA position 'middle'"):
        select_layers("middle", 12)
    with pytest.raises(UserInputError, match="LoRA position 'bottom' selects no layer of a 2-layer tower"):
        select_layers("bottom", 2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(dropout=1.5), r"--lora-dropout must be in \[0, 1\), got 1.5"),
    (dict(topk=0), "--topk must be >= 1, got 0"),
    (dict(hidden_features=0), "--hidden-features must be >= 1, got 0"),
    (dict(r=0), "--lora-r must be >= 1, got 0"),
    (dict(alpha=0.0), "--lora-alpha must be > 0, got 0.0"),
    (dict(params=["q", "x"]), "--params x is not one of q, k, v, o"),
    (dict(apply_gnn_encoders="image"), "--apply-gnn-encoders image is not one of both, vision, text, none"),
])
def test_config_rejects_out_of_range_values(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        AceLoRAConfig(**kwargs).validate()


# A valid value other than the default for every declared setting: a new declaration fails the tests below
# until it has one here, and then it is walked through the model (here) and a whole run (tests/train/test_loop.py).
EXAMPLE_VALUES = {"r": 2, "alpha": 2.0, "dropout": 0.3, "params": ["q", "v"], "position": "top", "topk": 2,
                  "hidden_features": 16, "apply_gnn_encoders": "vision"}


def test_every_declared_setting_has_an_example_value_and_a_flag_of_its_own():
    specs = declared_settings()
    assert {spec.name for spec in specs} == set(EXAMPLE_VALUES)
    assert len({spec.metadata["flag"] for spec in specs}) == len(specs)
    for spec in specs:
        assert EXAMPLE_VALUES[spec.name] != setting_default(spec)
        AceLoRAConfig(**{spec.name: EXAMPLE_VALUES[spec.name]}).validate()


def model_fingerprint(model_name: str, config: AceLoRAConfig):
    """What a setting can change: the trainable count, and the embeddings in training mode (fixed seeds, LoRA B
    random so that LoRA settings act, dropout masks drawn)."""
    torch.manual_seed(0)
    model = build_model(model_name, config)
    for layers in (model.text_lora, model.vision_lora):
        for parts in layers.values():
            for factors in parts.values():
                torch.nn.init.normal_(factors.lora_B, std=0.05)
    torch.manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    ids = model.tokenize(["a chest x-ray image of edema", "there is pneumonia"])
    torch.manual_seed(2)
    model.train()
    image, text, _, _ = model(images, ids)
    return model.num_trainable(), torch.cat([image, text]).detach()


def test_every_declared_setting_reaches_the_model(tiny_model_name):
    """A setting that is declared but never used by the model would leave both the count and the output alone."""
    base_count, base_output = model_fingerprint(tiny_model_name, AceLoRAConfig())
    for name, value in EXAMPLE_VALUES.items():
        count, output = model_fingerprint(tiny_model_name, AceLoRAConfig(**{name: value}))
        assert count != base_count or not torch.allclose(output, base_output), name
