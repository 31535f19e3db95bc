"""The method's settings: layer selection relative to depth and the range checks of AceLoRAConfig."""
import pytest

from ace_lora.config import AceLoRAConfig, select_layers
from ace_lora.errors import UserInputError


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
    (dict(dropout=1.5), r"LoRA dropout must be in \[0, 1\), got 1.5"),
    (dict(topk=0), "--topk and --hidden-features must be >= 1"),
    (dict(r=0), "LoRA rank must be >= 1"),
    (dict(params=["q", "x"]), r"unknown LoRA params \['x'\]"),
    (dict(apply_gnn_encoders="image"), "--apply-gnn-encoders must be one of"),
])
def test_config_rejects_out_of_range_values(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        AceLoRAConfig(**kwargs).validate()
