"""LoRA, all of it: the low-rank layers, their injection into the places each tower family names
(`LoRASite`s, from ace_lora.model.towers), merging for inference and export, and the released key names.

Update of a frozen weight W (out, in): W + s * B @ A with A (r, in), B (out, r), s = alpha / sqrt(r)
(the released ACE-LoRA scaling, not the alpha / r of the original LoRA paper). A is kaiming-uniform
(a = sqrt(5)), B is zero, so a fresh adapter leaves the model unchanged. Training computes the
update low-rank, `dropout(x) @ A^T @ B^T`: B @ A is only formed when merging for inference/export.
"""
import math
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Sequence, Tuple

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


def merged_state_dict(module: nn.Module) -> Dict[str, torch.Tensor]:
    """`module`'s state_dict with every LoRA update merged into its frozen weight, under the names the module had
    before injection (a wrapper's `base.` dropped, the factors left out); CPU copies. The module is left as it was."""
    was_merged = all(m.merged for m in module.modules() if isinstance(m, MergeableLoRA))
    set_merged(module, True)
    try:
        factors = tuple(f"{name}." for name, m in module.named_modules() if isinstance(m, LoRAFactors))
        return {key.replace(".base.", "."): value.detach().clone().cpu()
                for key, value in module.state_dict().items() if not key.startswith(factors)}
    finally:
        set_merged(module, was_merged)


# ---- injection -----------------------------------------------------------------------------------------------
LoRAMap = Dict[int, Dict[str, LoRAFactors]]  # {layer index: {'q': factors, ...}}
FUSED_QKV = ("q", "k", "v")


@dataclass(frozen=True)
class LoRASite:
    """A Linear that can carry LoRA: `getattr(owner, attr)`, holding the projections `projections` (('q',) for a
    separate query Linear, FUSED_QKV for a fused in -> 3 * dim one, ('o',) for the output projection)."""

    owner: nn.Module
    attr: str
    projections: Tuple[str, ...]


def inject_lora(sites: Dict[int, List[LoRASite]], params: Sequence[str], r: int, alpha: float,
                dropout: float) -> LoRAMap:
    """Wrap the `params` projections of every site (setattr on its owner): a fused q/k/v Linear gets one
    FusedQKVLoRA with a pair per chosen projection, any other Linear a LoRALinear. Returns the factors by layer."""
    found: LoRAMap = {}
    for layer, layer_sites in sites.items():
        found[layer] = {}
        for site in layer_sites:
            chosen = [p for p in site.projections if p in params]
            if not chosen:
                continue
            base = getattr(site.owner, site.attr)
            if site.projections == FUSED_QKV:
                wrapped = FusedQKVLoRA(base, chosen, r, alpha, dropout)
                found[layer].update({p: wrapped.lora[p] for p in wrapped.parts})
            else:
                wrapped = LoRALinear(base, r, alpha, dropout)
                found[layer][chosen[0]] = wrapped.lora
            setattr(site.owner, site.attr, wrapped)
    return found


# ---- the released weight format's names ----------------------------------------------------------------------
PROJECTION_KEYS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "proj"}  # the released names


def released_lora_entries(text_lora: LoRAMap, vision_lora: LoRAMap) -> Iterator[Tuple[str, str, LoRAFactors]]:
    """(layer key, projection key, factors) in the released numbering: `layer_<n>` counts the layers that carry
    LoRA, text tower first, then the image tower (so `all` gives text 0-11, image 12-23)."""
    adapted = [parts for layers in (text_lora, vision_lora) for _, parts in sorted(layers.items()) if parts]
    for n, parts in enumerate(adapted):
        for p, factors in parts.items():
            yield f"layer_{n}", PROJECTION_KEYS[p], factors
