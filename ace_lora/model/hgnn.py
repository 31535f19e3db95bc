"""ACE-HGNN: a hypergraph over all output tokens of one tower, refined by two small adapters.

Each token i spans one hyperedge over its top-k most related tokens. The CLS row uses the CLS
attention to the other tokens (global-to-local); patch/word rows use token-token cosine similarity
(local-to-local). The rules are exact, for compatibility with the released checkpoint:

1. S (B, N, N): S[i, j] = cos(x_i, x_j) for i, j >= 1; S[0, 1:] = CLS attention a; the diagonal and
   S[i, 0] for i >= 1 are -inf.
2. Keep the top-k entries of each row, softmax over them (others 0) -> A.
3. A[i, i] = 1 for all i, then A[i, 0] = A[0, i] for i >= 1.
4. E = phi_edge(A @ X); X' = phi_node(A^T @ E); X' is L2-normalised and X'[:, 0] is the embedding.

X is the L2-normalised token features, or for a prompt ensemble the average of each template's
normalised features: that average is propagated as it is (not re-normalised), while the similarities
in step 1 are cosines. This matches the released zero-shot class embeddings to 1e-7.

The hypergraph always runs in fp32, also under bf16/fp16 autocast: the top-k over cosine similarities
flips near-ties in low precision, which would change the neighbourhoods.
"""
import torch
import torch.nn.functional as F
from torch import nn

from ace_lora.model.config import AceLoRAConfig


class Adapter(nn.Module):
    """Linear(dim -> hidden) -> LeakyReLU(0.2) -> Linear(hidden -> dim); keys `down`, `up` as released.

    Weights are kaiming-normal; biases keep nn.Linear's default (uniform) initialisation, as released.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.act = nn.LeakyReLU(0.2)
        self.up = nn.Linear(hidden, dim)
        for layer in (self.down, self.up):
            nn.init.kaiming_normal_(layer.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


def fp32_region(x: torch.Tensor):
    """A region where autocast is off, so the computations inside run in the tensors' own dtype."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def hypergraph_incidence(x: torch.Tensor, cls_attention: torch.Tensor, topk: int) -> torch.Tensor:
    """Incidence matrix A (B, N, N), fp32, from token features x (B, N, D) and CLS weights (B, N-1)."""
    with fp32_region(x):
        return _incidence(x.float(), cls_attention.float(), topk)


def _incidence(x: torch.Tensor, cls_attention: torch.Tensor, topk: int) -> torch.Tensor:
    b, n, _ = x.shape
    eye = torch.eye(n - 1, dtype=torch.bool, device=x.device)
    unit = F.normalize(x[:, 1:], dim=-1)
    local = (unit @ unit.transpose(1, 2)).masked_fill(eye, float("-inf"))  # (B, N-1, N-1) cosines
    neg_inf_col = x.new_full((b, n - 1, 1), float("-inf"))
    top_row = torch.cat([x.new_full((b, 1, 1), float("-inf")), cls_attention.unsqueeze(1)], dim=2)
    scores = torch.cat([top_row, torch.cat([neg_inf_col, local], dim=2)], dim=1)  # (B, N, N)

    values, index = scores.topk(min(topk, n - 1), dim=-1)
    incidence = torch.zeros_like(scores).scatter(-1, index, values.softmax(dim=-1))
    incidence = incidence.masked_fill(torch.eye(n, dtype=torch.bool, device=x.device), 1.0)
    # Mirror the CLS row into column 0: every token's hyperedge also contains the CLS token, weighted
    # by the CLS token's attention to it. Column 0 is zero below the diagonal before this step.
    cls_row = torch.cat([x.new_zeros(b, 1), incidence[:, 0, 1:]], dim=1)  # (B, N)
    first_column = F.one_hot(torch.zeros((), dtype=torch.long, device=x.device), n).to(x.dtype)  # (N,)
    return incidence + cls_row.unsqueeze(-1) * first_column


class AceHgnn(nn.Module):
    """Edge and node adapters of one tower; `forward` maps normalised tokens (B, N, D) to refined ones."""

    def __init__(self, dim: int, config: AceLoRAConfig):
        super().__init__()
        self.edge_adapter = Adapter(dim, config.hidden_features)
        self.node_adapter = Adapter(dim, config.hidden_features)
        self.topk = config.topk

    def forward(self, x: torch.Tensor, cls_attention: torch.Tensor) -> torch.Tensor:
        """Refined, normalised tokens (B, N, D) in fp32 whatever the autocast state."""
        with fp32_region(x):
            x = x.float()
            incidence = hypergraph_incidence(x, cls_attention, self.topk)
            edges = self.edge_adapter(incidence @ x)  # (B, N, D) hyperedge features
            nodes = self.node_adapter(incidence.transpose(1, 2) @ edges)  # (B, N, D)
            return F.normalize(nodes, dim=-1)
