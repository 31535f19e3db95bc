"""Low-rank adapters (LoRA) on the attention projections of both BiomedCLIP towers.

Update of a frozen weight W (out, in): W + s * B @ A with A (r, in), B (out, r), s = alpha / sqrt(r)
(the released ACE-LoRA scaling, not the alpha / r of the original LoRA paper). A is kaiming-uniform
(a = sqrt(5)), B is zero, so a fresh adapter leaves the model unchanged. Training computes the
update low-rank, `dropout(x) @ A^T @ B^T`: B @ A is only formed when merging for inference/export.
"""
import math
from typing import Dict, Iterable, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import select_layers


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
    """timm's fused qkv Linear (in -> 3 * dim) with separate (A, B) pairs for the chosen of q, k, v.

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




def inject_text_lora(bert_layers: nn.ModuleList, params: Sequence[str], position: str, r: int, alpha: float,
                     dropout: float) -> Dict[int, Dict[str, LoRAFactors]]:
    """Wrap query/key/value and attention.output.dense ('o') of the chosen layers in LoRALinear.

    In those layers the attention-probability dropout and the dropout after the attention output
    projection are switched off (replaced by Dropout(0)), as in the released attention module that
    computes LayerNorm(proj(context) + hidden); embedding and feed-forward dropout stay.
    Returns {layer index: {'q': factors, ...}} for checkpoint I/O.
    """
    names = {"q": "query", "k": "key", "v": "value"}
    found: Dict[int, Dict[str, LoRAFactors]] = {}
    if not params:
        return found
    for i in select_layers(position, len(bert_layers)):
        attn = bert_layers[i].attention
        attn.self.dropout = nn.Dropout(0.0)  # BertSelfAttention reads self.dropout.p in training
        attn.output.dropout = nn.Dropout(0.0)
        found[i] = {}
        for p in (p for p in ("q", "k", "v") if p in params):
            wrapped = LoRALinear(getattr(attn.self, names[p]), r, alpha, dropout)
            setattr(attn.self, names[p], wrapped)
            found[i][p] = wrapped.lora
        if "o" in params:
            attn.output.dense = LoRALinear(attn.output.dense, r, alpha, dropout)
            found[i]["o"] = attn.output.dense.lora
    return found


def inject_vision_lora(vit_blocks: nn.Sequential, params: Sequence[str], position: str, r: int, alpha: float,
                       dropout: float) -> Dict[int, Dict[str, LoRAFactors]]:
    """Wrap the fused qkv (q, k, v) and attn.proj ('o') of the chosen ViT blocks."""
    found: Dict[int, Dict[str, LoRAFactors]] = {}
    for i in select_layers(position, len(vit_blocks)):
        attn = vit_blocks[i].attn
        found[i] = {}
        qkv_parts = [p for p in params if p in ("q", "k", "v")]
        if qkv_parts:
            fused = FusedQKVLoRA(attn.qkv, qkv_parts, r, alpha, dropout)
            attn.qkv = fused
            found[i].update({p: fused.lora[p] for p in fused.parts})
        if "o" in params:
            attn.proj = LoRALinear(attn.proj, r, alpha, dropout)
            found[i]["o"] = attn.proj.lora
    return found


def set_merged(module: nn.Module, merged: bool) -> None:
    """Merge (True) or unmerge (False) every LoRA update inside `module` into its frozen weight."""
    for m in module.modules():
        if isinstance(m, MergeableLoRA):
            m.merge() if merged else m.unmerge()
