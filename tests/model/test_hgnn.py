import torch
import torch.nn.functional as F

from ace_lora.model.config import AceLoRAConfig
from ace_lora.model.hgnn import AceHgnn, Adapter, hypergraph_incidence


def test_incidence_rules_on_hand_made_input():
    # 4 tokens in 2-d; token 0 is CLS. Cosines among 1..3 and CLS weights are chosen by hand.
    x = F.normalize(torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]]), dim=-1)
    cls_attention = torch.tensor([[0.5, 0.2, 0.1]])
    a = hypergraph_incidence(x, cls_attention, topk=2)[0]
    # Row 0: top-2 of the CLS weights (tokens 1, 2) with softmax over [0.5, 0.2].
    p = torch.softmax(torch.tensor([0.5, 0.2]), 0)
    torch.testing.assert_close(a[0], torch.tensor([1.0, p[0], p[1], 0.0]))
    # Row 1: cos(1,2) = 0.8, cos(1,3) = 0; never itself or CLS; then diagonal 1 and A[1,0] = A[0,1].
    q = torch.softmax(torch.tensor([0.8, 0.0]), 0)
    torch.testing.assert_close(a[1], torch.tensor([p[0], 1.0, q[0], q[1]]))
    # Row 3: cos(3,2) = 0.6, cos(3,1) = 0; A[3,0] = A[0,3] = 0 (token 3 not in the CLS edge).
    r = torch.softmax(torch.tensor([0.0, 0.6]), 0)
    torch.testing.assert_close(a[3], torch.tensor([0.0, r[0], r[1], 1.0]))


def test_topk_keeps_k_entries_per_row_before_self_loops():
    torch.manual_seed(0)
    x = F.normalize(torch.randn(2, 9, 8), dim=-1)
    a = hypergraph_incidence(x, torch.rand(2, 8), topk=3)
    off_diag = a.clone()
    off_diag[:, torch.arange(9), torch.arange(9)] = 0
    off_diag[:, 1:, 0] = 0  # mirrored CLS column
    assert ((off_diag > 0).sum(-1) == 3).all()
    torch.testing.assert_close(off_diag.sum(-1), torch.ones(2, 9))
    torch.testing.assert_close(a[:, 1:, 0], a[:, 0, 1:])


def test_hgnn_forward_equals_formula_and_is_normalised():
    torch.manual_seed(0)
    hg = AceHgnn(16, AceLoRAConfig(hidden_features=8, topk=3))
    x = F.normalize(torch.randn(2, 7, 16), dim=-1)
    attn = torch.rand(2, 6)
    a = hypergraph_incidence(x, attn, 3)
    expected = F.normalize(hg.node_adapter(a.transpose(1, 2) @ hg.edge_adapter(a @ x)), dim=-1)
    out = hg(x, attn)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, 7))


def test_adapter_layout_matches_released_keys():
    adapter = Adapter(512, 128)
    shapes = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    assert shapes == {"down.weight": (128, 512), "down.bias": (128,), "up.weight": (512, 128), "up.bias": (512,)}


def test_adapter_init_as_released_kaiming_normal_weights_default_linear_biases():
    torch.manual_seed(0)
    adapter = Adapter(512, 128)
    for layer in (adapter.down, adapter.up):
        fan_in = layer.in_features
        bound = fan_in ** -0.5  # nn.Linear's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        assert layer.bias.abs().max() <= bound and layer.bias.abs().max() > 0.9 * bound
        assert abs(layer.weight.std().item() - (2.0 / fan_in) ** 0.5) < 0.05 * (2.0 / fan_in) ** 0.5


def test_hypergraph_runs_in_fp32_under_autocast():
    """Under bf16 autocast the incidence (and so the top-k neighbourhoods) equals the fp32 one."""
    torch.manual_seed(0)
    hg = AceHgnn(64, AceLoRAConfig(hidden_features=16, topk=5))
    x = F.normalize(torch.randn(4, 50, 64), dim=-1)
    attn = torch.randn(4, 49)
    reference_incidence, reference_out = hypergraph_incidence(x, attn, 5), hg(x, attn)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        incidence, out = hypergraph_incidence(x, attn, 5), hg(x, attn)
        unprotected = F.normalize(x[:, 1:]) @ F.normalize(x[:, 1:]).transpose(1, 2)
    assert unprotected.dtype == torch.bfloat16  # autocast is really on in this block
    assert incidence.dtype == out.dtype == torch.float32
    torch.testing.assert_close(incidence, reference_incidence, rtol=0, atol=0)
    torch.testing.assert_close(out, reference_out, rtol=0, atol=0)
