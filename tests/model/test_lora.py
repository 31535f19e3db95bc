import math

import pytest
import torch
from torch import nn

from ace_lora.model.backbone import load_backbone
from ace_lora.model.config import AceLoRAConfig
from ace_lora.model.lora import FusedQKVLoRA, LoRAFactors, LoRALinear
from ace_lora.model.model import AceLoRAModel


def test_lora_linear_matches_dense_update_and_zero_b_is_identity():
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    x = torch.randn(3, 5, 16)
    lora = LoRALinear(base, r=4, alpha=1.0, dropout=0.0)
    torch.testing.assert_close(lora(x), base(x))  # B = 0 at initialisation
    nn.init.normal_(lora.lora.lora_B)
    dense = base.weight + (1.0 / math.sqrt(4)) * lora.lora.lora_B @ lora.lora.lora_A
    torch.testing.assert_close(lora(x), x @ dense.T + base.bias, rtol=1e-5, atol=1e-5)


def test_fused_qkv_lora_updates_only_chosen_parts_and_merges():
    torch.manual_seed(0)
    base = nn.Linear(8, 24)
    x = torch.randn(2, 3, 8)
    fused = FusedQKVLoRA(base, ["q", "v"], r=2, alpha=1.0, dropout=0.0)
    for factors in fused.lora.values():
        nn.init.normal_(factors.lora_B)
    ref = base(x)
    out = fused(x)
    torch.testing.assert_close(out[..., 8:16], ref[..., 8:16])  # k untouched
    assert not torch.allclose(out[..., :8], ref[..., :8])
    dq = (fused.lora["q"].lora_B @ fused.lora["q"].lora_A) / math.sqrt(2)
    torch.testing.assert_close(out[..., :8], ref[..., :8] + x @ dq.T, rtol=1e-5, atol=1e-5)
    fused.merge()
    torch.testing.assert_close(fused(x), out, rtol=1e-5, atol=1e-5)
    fused.unmerge()
    torch.testing.assert_close(base(x), ref, rtol=1e-5, atol=1e-5)


def test_dropout_applies_to_lora_input_only():
    torch.manual_seed(0)
    base = nn.Linear(8, 8)
    lora = LoRALinear(base, r=2, alpha=1.0, dropout=0.9).train()
    x = torch.randn(4, 8)
    torch.testing.assert_close(lora(x), base(x))  # B = 0: dropout cannot leak into the base path


def _delta_weight_calls(module):
    """Count calls of LoRAFactors.delta_weight (the dense B @ A) on our own factor objects."""
    calls = []
    for factors in [m for m in module.modules() if isinstance(m, LoRAFactors)]:
        factors.delta_weight = lambda: calls.append(1)
    return calls


def test_lora_forward_is_low_rank_in_every_wrapper():
    """The training forward never forms B @ A, for plain and fused-qkv LoRA alike."""
    torch.manual_seed(0)
    wrappers = [LoRALinear(nn.Linear(64, 64), r=4, alpha=1.0, dropout=0.1),
                FusedQKVLoRA(nn.Linear(64, 192), ["q", "k", "v"], r=4, alpha=1.0, dropout=0.1)]
    calls = _delta_weight_calls(nn.ModuleList(wrappers))
    x = torch.randn(2, 5, 64)
    sum(w(x).sum() for w in wrappers).backward()
    assert not calls
    assert all(p.grad is not None for w in wrappers for n, p in w.named_parameters() if "lora_" in n)


def _lora_inputs(factors_by_part):
    """Record the (dropped) input each LoRAFactors receives."""
    seen = {}
    for part, factors in factors_by_part.items():
        factors.register_forward_hook(lambda m, i, o, part=part: seen.__setitem__(part, i[0]))
    return seen


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_q_k_v_see_independent_dropout_masks_at_rate_p(tiny_model_name, tower):
    """As released, each projection has its own dropout: three different masks, each keeping 1 - p."""
    torch.manual_seed(0)
    model = AceLoRAModel(load_backbone(tiny_model_name), AceLoRAConfig(dropout=0.3, apply_gnn_encoders="none"))
    model.train()
    model.clip.text.transformer.embeddings.dropout.p = 0.0  # so zeros in layer 0's input are LoRA dropout's
    layers = model.vision_lora if tower == "vision" else model.text_lora
    seen = _lora_inputs(layers[0])
    with torch.no_grad():
        if tower == "vision":
            model.image_tokens(torch.randn(8, 3, 64, 64))
        else:
            model.text_tokens(model.tokenize(["findings suggesting edema there is"] * 8))
    masks = {p: seen[p] != 0 for p in "qkv"}
    for p, q in (("q", "k"), ("k", "v"), ("q", "v")):
        assert (masks[p] != masks[q]).float().mean() > 0.2  # independent masks differ in ~2p(1-p) = 42%
    for mask in masks.values():
        assert mask.float().mean().item() == pytest.approx(0.7, abs=0.03)
    kept = seen["q"][masks["q"]]
    assert kept.abs().min() > 0  # kept entries are rescaled inputs, dropped ones exactly zero


def test_lora_layers_of_bert_train_without_attention_dropout(tiny_model_name):
    """Train-mode text forward: with LoRA and feed-forward/embedding dropout at 0, two forwards agree,
    although BERT's own attention dropout is 0.9; with feed-forward dropout on they differ."""
    torch.manual_seed(0)
    backbone = load_backbone(tiny_model_name)
    for layer in backbone.clip.text.transformer.encoder.layer:
        layer.attention.self.dropout.p = 0.9
        layer.attention.output.dropout.p = 0.9
        layer.output.dropout.p = 0.0
    backbone.clip.text.transformer.embeddings.dropout.p = 0.0
    model = AceLoRAModel(backbone, AceLoRAConfig(dropout=0.0, apply_gnn_encoders="none")).train()
    for layer in model.clip.text.transformer.encoder.layer:
        assert layer.attention.self.dropout.p == 0.0 and layer.attention.output.dropout.p == 0.0
    ids = model.tokenize(["findings suggesting edema", "a chest x-ray image of pneumonia"])
    with torch.no_grad():
        first, second = model.text_tokens(ids)[0], model.text_tokens(ids)[0]
        torch.testing.assert_close(first, second, rtol=0, atol=0)
        model.clip.text.transformer.encoder.layer[0].output.dropout.p = 0.5  # feed-forward dropout stays
        assert not torch.allclose(model.text_tokens(ids)[0], first)


def test_injection_wraps_the_named_sites_and_a_merged_state_dict_has_the_plain_names():
    from ace_lora.model.lora import FUSED_QKV, LoRASite, inject_lora, merged_state_dict
    torch.manual_seed(0)
    block = nn.Module()
    block.qkv, block.proj = nn.Linear(8, 24), nn.Linear(8, 8)
    plain = {k: v.clone() for k, v in block.state_dict().items()}
    found = inject_lora({0: [LoRASite(block, "qkv", FUSED_QKV), LoRASite(block, "proj", ("o",))]}, ["q", "v", "o"],
                        r=2, alpha=1.0, dropout=0.0)
    assert isinstance(block.qkv, FusedQKVLoRA) and isinstance(block.proj, LoRALinear)
    assert set(found[0]) == {"q", "v", "o"}
    assert found[0]["o"] is block.proj.lora and found[0]["q"] is block.qkv.lora["q"]
    for factors in found[0].values():
        nn.init.normal_(factors.lora_B)
    merged = merged_state_dict(block)
    assert set(merged) == set(plain)  # the names before injection, no factors
    expected = plain["qkv.weight"].clone()
    expected[:8] += found[0]["q"].delta_weight()
    expected[16:] += found[0]["v"].delta_weight()
    assert torch.allclose(merged["qkv.weight"], expected)
    assert torch.allclose(merged["proj.weight"], plain["proj.weight"] + found[0]["o"].delta_weight())
    assert not block.qkv.merged and torch.allclose(block.qkv.base.weight, plain["qkv.weight"], atol=1e-6)  # unmerged
