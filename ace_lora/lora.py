"""Low-rank adapters (LoRA) on attention projections (where they go, per tower family: ace_lora.towers).

Update of a frozen weight W (out, in): W + s * B @ A with A (r, in), B (out, r), s = alpha / sqrt(r)
(the released ACE-LoRA scaling, not the alpha / r of the original LoRA paper). A is kaiming-uniform
(a = sqrt(5)), B is zero, so a fresh adapter leaves the model unchanged. Training computes the
update low-rank, `dropout(x) @ A^T @ B^T`: B @ A is only formed when merging for inference/export.
"""
import math
from typing import Iterable, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class LoRAFactors(nn.Module):
    """One (A, B) pair: delta(x) = scaling * x @ A^T @ B^T."""

    def __init__(self, in_features: int, out_features: int, r: int, scaling: float):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling  # (out, in); merge/export only


class MergeableLoRA(nn.Module):
    """A frozen `base` Linear whose row blocks (`_blocks`) carry LoRA factors: merging adds each block's
    B @ A into the weight (no low-rank work at inference), unmerging takes it out again."""

    base: nn.Linear
    merged: bool

    def _blocks(self) -> Iterable[Tuple[slice, LoRAFactors]]:
        raise NotImplementedError

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            for rows, factors in self._blocks():
                self.base.weight[rows] += factors.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            for rows, factors in self._blocks():
                self.base.weight[rows] -= factors.delta_weight().to(self.base.weight.dtype)
            self.merged = False


class LoRALinear(MergeableLoRA):
    """A frozen nn.Linear plus one low-rank update (BERT query/key/value/output, ViT attn.proj)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base
        self.lora = LoRAFactors(base.in_features, base.out_features, r, alpha / math.sqrt(r))
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + self.lora(self.dropout(x))

    def _blocks(self) -> Iterable[Tuple[slice, LoRAFactors]]:
        yield slice(None), self.lora


class FusedQKVLoRA(MergeableLoRA):
    """A fused qkv Linear (in -> 3 * dim: timm's qkv, open_clip's in_proj) with separate (A, B) pairs for the
    chosen of q, k, v.

    Each of q, k and v has its own dropout on the input, so the three see independent masks, as the
    released per-projection LoRA layers do.
    """

    def __init__(self, base: nn.Linear, parts: Sequence[str], r: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base
        self.dim = base.out_features // 3
        self.parts = [p for p in ("q", "k", "v") if p in parts]
        scaling = alpha / math.sqrt(r)
        self.lora = nn.ModuleDict({p: LoRAFactors(base.in_features, self.dim, r, scaling) for p in self.parts})
        self.dropout = nn.ModuleDict({p: nn.Dropout(dropout) for p in self.parts})
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (B, N, 3 * dim)
        if self.merged or not self.parts:
            return y
        deltas = [self.lora[p](self.dropout[p](x)) if p in self.parts else y.new_zeros(*y.shape[:-1], self.dim)
                  for p in ("q", "k", "v")]  # each (B, N, dim)
        return y + torch.cat(deltas, dim=-1)

    def _blocks(self) -> Iterable[Tuple[slice, LoRAFactors]]:
        for p in self.parts:
            i = "qkv".index(p)
            yield slice(i * self.dim, (i + 1) * self.dim), self.lora[p]




def set_merged(module: nn.Module, merged: bool) -> None:
    """Merge (True) or unmerge (False) every LoRA update inside `module` into its frozen weight."""
    for m in module.modules():
        if isinstance(m, MergeableLoRA):
            m.merge() if merged else m.unmerge()
