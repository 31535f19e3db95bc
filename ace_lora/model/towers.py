"""The two towers of an open_clip or transformers model, by family: where LoRA goes, all output tokens in the
joint space, and the CLS-attention row the hypergraph needs. Attention keeps its fused kernels: the CLS row comes from
forward hooks on the last layer's projections, and only that row is computed (O(N), not O(N^2)).

Families (the table in docs/method.md, "Towers"):
- `timm-vit`: TimmModel with a timm VisionTransformer trunk and a class token (BiomedCLIP). CLS role: the
  class token; its row of the last block's pre-softmax (q * scale) @ k^T, heads averaged; tokens:
  `visual.head(trunk.forward_features(x))`. With an attention-pool (MAP) head instead (SigLIP): the pool's
  latent query; token 0 is the pooled output, then the tokens the pool attends to (the patches); the CLS
  row is the query's pre-softmax scores over them.
- `open_clip-vit`: VisionTransformer with class-token pooling (OpenAI CLIP, LAION, MetaCLIP, DFN,
  QuiltNet). The same CLS rule, from the last block's fused in_proj; tokens: `ln_post`, then `@ proj`.
- `hf-text`: HFTextEncoder (BERT, PubMedBERT, RoBERTa). CLS role: [CLS] at position 0; the last layer's
  softmax probabilities of its row, padding masked; tokens: `text.proj(last_hidden_state)`, all positions,
  padding included (as released).
- `open_clip-text`: TextTransformer, or the text tower inlined in CLIP. CLS role: the token the tower pools
  (argmax / eos: the end-of-text token; last; first); its softmax probabilities under the tower's own
  (causal) mask; tokens: `ln_final`, then the text projection, the pooled token first and the other
  positions after it in order, padding included.

Refined token 0 is the tower's embedding, so with LoRA B = 0 and no hypergraph each family's embedding is
the frozen model's own (tested). nn.MultiheadAttention (the open_clip families) holds q, k and v in one
fused `in_proj_weight` used by a functional call, so it is replaced (setattr on its block) by
`FusedMultiheadAttention`: the same parameters as an `in_proj` Linear (which LoRA and peft can wrap) and
`out_proj`, computed with scaled_dot_product_attention. Export renames `in_proj.weight` back to
`in_proj_weight` (EXPORT_RENAMES), so an export loads with plain open_clip.

- `hf-clip-vision`, `hf-clip-text`, `hf-siglip-vision`, `hf-siglip-text`: a transformers CLIPModel / SiglipModel
  (`--model hf:...`); LoRA on each layer's q_proj/k_proj/v_proj (out_proj for 'o'); the CLS roles are the class
  token, the pooled end-of-text token (causal), the attention-pool probe (token 0: the pooled output) and the
  last token (bidirectional); see each class.

Towers with another architecture (ModifiedResNet, ConvNeXt and other timm trunks, CoCa's attentional
pooler and appended text class token) are refused in one line naming the class and the supported families.
"""
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from open_clip.hf_model import ClsLastHiddenStatePooler, ClsPooler, HFTextEncoder
from open_clip.model import CLIP
from open_clip.timm_model import TimmModel
from open_clip.transformer import TextTransformer, VisionTransformer
from torch import nn
from transformers import PreTrainedModel

from ace_lora.errors import UserInputError
from ace_lora.model.config import AceLoRAConfig, select_layers
from ace_lora.model.hgnn import fp32_region
from ace_lora.model.lora import FUSED_QKV, LoRAMap, LoRASite, inject_lora

VISION_FAMILIES = ("timm-vit", "open_clip-vit")
TEXT_FAMILIES = ("hf-text", "open_clip-text")
EXPORT_RENAMES = ((".attn.in_proj.weight", ".attn.in_proj_weight"), (".attn.in_proj.bias", ".attn.in_proj_bias"))


class _Capture:
    """The latest output of a hooked projection (the last layer's q/k or fused qkv)."""

    def __init__(self):
        self.outputs: Dict[str, torch.Tensor] = {}

    def hook(self, name: str):
        def store(_module, _inputs, output):
            self.outputs[name] = output
        return store

    def pop(self, name: str) -> torch.Tensor:
        return self.outputs.pop(name)


class FusedMultiheadAttention(nn.Module):
    """nn.MultiheadAttention's self-attention with its fused in-projection as a Linear (`in_proj`).

    Takes and returns what open_clip's blocks pass to nn.MultiheadAttention (query = key = value,
    need_weights False, an additive or boolean attn_mask); the parameters are the original ones.
    """

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
            raise UserInputError("attention with separate q/k/v projection sizes is not supported")
        self.num_heads, self.head_dim, self.batch_first = mha.num_heads, mha.head_dim, mha.batch_first
        self.dropout = mha.dropout
        dim = mha.embed_dim
        self.in_proj = nn.Linear(dim, 3 * dim, bias=mha.in_proj_bias is not None,
                                 device=mha.in_proj_weight.device, dtype=mha.in_proj_weight.dtype)
        self.in_proj.weight = mha.in_proj_weight
        if mha.in_proj_bias is not None:
            self.in_proj.bias = mha.in_proj_bias
        self.out_proj = mha.out_proj

    def forward(self, query: torch.Tensor, key=None, value=None, need_weights: bool = False,
                attn_mask: Optional[torch.Tensor] = None, key_padding_mask=None,
                **_unused) -> Tuple[torch.Tensor, None]:
        cross = (key is not None and key is not query) or (value is not None and value is not query)
        if cross or key_padding_mask is not None:
            raise NotImplementedError("FusedMultiheadAttention is self-attention without a key padding mask")
        x = query if self.batch_first else query.transpose(0, 1)  # (B, N, D)
        b, n, d = x.shape
        q, k, v = self.in_proj(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if attn_mask is not None:  # nn.MultiheadAttention's bool mask is True where attention is NOT allowed
            attn_mask = ~attn_mask if attn_mask.dtype == torch.bool else attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0)  # (B, H, N, hd)
        out = self.out_proj(out.transpose(1, 2).reshape(b, n, d))
        return (out if self.batch_first else out.transpose(0, 1)), None


def _cls_scores(qkv: torch.Tensor, heads: int, head_dim: int, scale: float, q_norm: Callable = None,
                k_norm: Callable = None) -> torch.Tensor:
    """Pre-softmax (q_0 * scale) @ k^T over the other tokens, heads averaged: (B, N-1), from a fused
    (B, N, 3 * heads * head_dim) projection output."""
    b, n, _ = qkv.shape
    q, k, _ = qkv.reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    if q_norm is not None:
        q, k = q_norm(q), k_norm(k)  # (B, H, N, hd)
    scores = (q[:, :, :1] * scale) @ k.transpose(-2, -1)  # (B, H, 1, N)
    return scores[:, :, 0, 1:].mean(dim=1)


class Tower:
    """One tower of one model: its family, attention layers, joint-space width and token features.

    `lora_sites` names where q, k, v and o live in one layer (ace_lora.model.lora injects there); `peft_targets`
    names the Linears a peft tuner adapts;
    `attach_hooks` (after LoRA and peft) hooks the last layer; `tokens(x)` gives (tokens (B, N, D) in
    the joint space, CLS attention over the other tokens (B, N-1)).
    """

    family: str
    prefix: str  # the layers' module path in the CLIP model, with `{}` for the layer index
    output_dim: int

    def __init__(self):
        self.capture = _Capture()

    @property
    def layers(self) -> Sequence[nn.Module]:
        raise NotImplementedError

    def describe(self) -> dict:
        """The architecture, as checkpoints record it: another one refuses to load them."""
        return {"family": self.family, "layers": len(self.layers), "output_dim": self.output_dim}

    def lora_sites(self, layer: nn.Module) -> List[LoRASite]:
        raise NotImplementedError

    def prepare_lora_layer(self, layer: nn.Module) -> None:
        """What a family changes in a layer that gets LoRA, besides the LoRA itself (nothing by default)."""

    def inject_lora(self, config: AceLoRAConfig) -> LoRAMap:
        """Our LoRA on config.params of the layers config.position selects; {} without params."""
        if not config.params:
            return {}
        chosen = select_layers(config.position, len(self.layers))
        for i in chosen:
            self.prepare_lora_layer(self.layers[i])
        return inject_lora({i: self.lora_sites(self.layers[i]) for i in chosen}, config.params, config.r,
                           config.alpha, config.dropout)

    def peft_targets(self, position: str) -> str:
        raise NotImplementedError

    def attach_hooks(self) -> None:
        raise NotImplementedError

    def tokens(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def _layer_regex(prefix: str, indices: Sequence[int], suffix: str) -> str:
    return re.escape(prefix).replace(r"\{\}", "(" + "|".join(map(str, indices)) + ")") + suffix


# ---- image towers ------------------------------------------------------------------------------------------
class TimmViTTower(Tower):
    """timm ViT trunks: with a class token (BiomedCLIP), or with an attention-pool (MAP) head (SigLIP), whose
    latent query plays the CLS role: its output is token 0, its pre-softmax scores over the trunk's tokens
    the CLS row, and the trunk's tokens follow."""

    family = "timm-vit"
    prefix = "visual.trunk.blocks.{}"

    def __init__(self, visual: TimmModel):
        super().__init__()
        self.visual = visual
        trunk = visual.trunk
        self.map_head = getattr(trunk, "attn_pool", None) is not None
        pool = getattr(trunk, "global_pool", "token")
        if not self.map_head and (getattr(trunk, "cls_token", None) is None or pool != "token"):
            raise UserInputError(f"image tower {type(trunk).__name__} with global pool {pool!r} (neither class-token "
                                 f"nor attention-pool pooling) is not supported; {supported_families()}")
        # the joint-space width: the open_clip head's projection, else the trunk's head, else its features
        self.output_dim = (visual.head.proj.out_features if hasattr(visual.head, "proj") else
                           trunk.head.out_features if isinstance(trunk.head, nn.Linear) else trunk.num_features)

    def describe(self) -> dict:
        return {**super().describe(), **({"head": "map"} if self.map_head else {})}

    @property
    def layers(self):
        return self.visual.trunk.blocks

    def lora_sites(self, layer):
        return [LoRASite(layer.attn, "qkv", FUSED_QKV), LoRASite(layer.attn, "proj", ("o",))]

    def peft_targets(self, position: str) -> str:
        return _layer_regex(self.prefix, select_layers(position, len(self.layers)), r"\.attn\.qkv")

    def attach_hooks(self) -> None:
        if self.map_head:
            self._attn = self.visual.trunk.attn_pool
            self._attn.q.register_forward_hook(self.capture.hook("q"))
            self._attn.kv.register_forward_hook(self.capture.hook("kv"))
        else:
            self._attn = self.layers[-1].attn
            self._attn.qkv.register_forward_hook(self.capture.hook("qkv"))

    def tokens(self, images):
        trunk, attn = self.visual.trunk, self._attn
        if not self.map_head:  # the trunk's own norm and head (identities for BiomedCLIP), then open_clip's head
            tokens = self.visual.head(trunk.head(trunk.fc_norm(trunk.forward_features(images))))  # (B, N, D)
            return tokens, _cls_scores(self.capture.pop("qkv"), attn.num_heads, attn.head_dim, attn.scale,
                                       attn.q_norm, attn.k_norm)
        features = trunk.forward_features(images)  # (B, prefix + N, width)
        pooled = trunk.forward_head(features)  # (B, width'): the attention pool's query output, as the tower pools
        # the tokens the pool attends to: the patches, and the class/register tokens only if the trunk says so
        seen = features if getattr(trunk, "pool_include_prefix", False) else features[:, trunk.num_prefix_tokens:]
        tokens = self.visual.head(torch.cat([pooled[:, None], trunk.head(seen)], dim=1))  # (B, 1 + N, D)
        b, n, _ = seen.shape
        q = self.capture.pop("q")[:, :1].reshape(b, 1, attn.num_heads, attn.head_dim).transpose(1, 2)
        k = self.capture.pop("kv").reshape(b, n, 2, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)[0]
        q, k = attn.q_norm(q), attn.k_norm(k)  # (B, H, 1, hd), (B, H, N, hd)
        return tokens, ((q * attn.scale) @ k.transpose(-2, -1))[:, :, 0].mean(dim=1)  # (B, N)


def _replace_attention(blocks: Sequence[nn.Module]) -> None:
    for block in blocks:
        if isinstance(block.attn, nn.MultiheadAttention):
            block.attn = FusedMultiheadAttention(block.attn)


class _ResblocksTower(Tower):
    """open_clip's own transformers (`<module>.transformer.resblocks`): nn.MultiheadAttention replaced by
    FusedMultiheadAttention, LoRA and peft on its in_proj, the last block's in_proj hooked."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self._module = module
        _replace_attention(self.layers)

    @property
    def layers(self):
        return self._module.transformer.resblocks

    def lora_sites(self, layer):
        return [LoRASite(layer.attn, "in_proj", FUSED_QKV), LoRASite(layer.attn, "out_proj", ("o",))]

    def peft_targets(self, position: str) -> str:
        return _layer_regex(self.prefix, select_layers(position, len(self.layers)), r"\.attn\.in_proj")

    def attach_hooks(self) -> None:
        self._attn = self.layers[-1].attn
        self._attn.in_proj.register_forward_hook(self.capture.hook("qkv"))


class OpenClipViTTower(_ResblocksTower):
    family = "open_clip-vit"
    prefix = "visual.transformer.resblocks.{}"

    def __init__(self, visual: VisionTransformer):
        if visual.attn_pool is not None or visual.pool_type != "tok":
            raise UserInputError(f"image tower {type(visual).__name__} with pool type {visual.pool_type!r} or an "
                                 f"attentional pooler is not supported yet (class-token pooling is); "
                                 f"{supported_families()}")
        super().__init__(visual)
        self.visual = visual
        self.output_dim = visual.proj.shape[1] if visual.proj is not None else visual.transformer.width

    def tokens(self, images):
        v = self.visual
        x = v.conv1(images)  # (B, width, h, w); the steps of open_clip's VisionTransformer, all tokens kept
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, h * w, width)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = v.ln_pre(v.patch_dropout(torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)))
        x = v.ln_post(v.transformer(x))  # (B, N, width)
        tokens = x @ v.proj if v.proj is not None else x
        attn = self._attn
        return tokens, _cls_scores(self.capture.pop("qkv"), attn.num_heads, attn.head_dim, attn.head_dim ** -0.5)


# ---- text towers -------------------------------------------------------------------------------------------
class HFTextTower(Tower):
    family = "hf-text"
    prefix = "text.transformer.encoder.layer.{}"
    _NAMES = {"q": "query", "k": "key", "v": "value"}

    def __init__(self, text: HFTextEncoder, output_dim: int):
        super().__init__()
        self.text, self.output_dim = text, output_dim
        pooler = text.pooler
        token_pooled = isinstance(pooler, ClsLastHiddenStatePooler) or (
            isinstance(pooler, ClsPooler) and (not pooler.use_pooler_output or getattr(text.transformer, "pooler",
                                                                                       None) is None))
        if not token_pooled:
            raise UserInputError(f"Hugging Face text tower with {type(pooler).__name__} pooling is not supported (the "
                                 f"[CLS] token's last hidden state is, as BiomedCLIP's); {supported_families()}")
        if not hasattr(text.transformer, "encoder") or not hasattr(self.layers[0].attention, "self"):
            raise UserInputError(f"Hugging Face text tower {type(text.transformer).__name__} is not a BERT/RoBERTa-"
                                 f"style encoder; {supported_families()}")

    @property
    def layers(self):
        return self.text.transformer.encoder.layer

    def lora_sites(self, layer):
        attn = layer.attention
        return [LoRASite(attn.self, name, (p,)) for p, name in self._NAMES.items()] + [
            LoRASite(attn.output, "dense", ("o",))]

    def prepare_lora_layer(self, layer) -> None:
        """In a layer with LoRA the attention-probability dropout and the dropout after the attention output
        projection are switched off (Dropout(0)), as in the released attention module (LayerNorm(proj(context) +
        hidden)); embedding and feed-forward dropout stay."""
        layer.attention.self.dropout = nn.Dropout(0.0)  # BertSelfAttention reads self.dropout.p in training
        layer.attention.output.dropout = nn.Dropout(0.0)

    def peft_targets(self, position: str) -> str:
        return _layer_regex(self.prefix, select_layers(position, len(self.layers)),
                            r"\.attention\.self\.(query|key|value)")

    def attach_hooks(self) -> None:
        self._attn = self.layers[-1].attention.self
        self._attn.query.register_forward_hook(self.capture.hook("q"))
        self._attn.key.register_forward_hook(self.capture.hook("k"))

    def tokens(self, input_ids):
        text = self.text
        mask = input_ids != text.config.pad_token_id  # (B, L)
        out = text.transformer(input_ids=input_ids, attention_mask=mask.long())
        tokens = text.proj(out.last_hidden_state)  # (B, L, D)
        attn = self._attn
        q = self.capture.pop("q")[:, :1]  # (B, 1, H * hd)
        k = self.capture.pop("k")  # (B, L, H * hd)
        b, length, _ = k.shape
        heads, hd = attn.num_attention_heads, attn.attention_head_size
        q = q.reshape(b, 1, heads, hd).transpose(1, 2)  # (B, H, 1, hd)
        k = k.reshape(b, length, heads, hd).transpose(1, 2)  # (B, H, L, hd)
        scores = (q @ k.transpose(-2, -1)).float() * attn.scaling  # (B, H, 1, L)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        return tokens, scores.softmax(dim=-1)[:, :, 0, 1:].mean(dim=1)


class OpenClipTextTower(_ResblocksTower):
    """open_clip's own text transformer: a `TextTransformer` (CustomTextCLIP.text) or the tower inlined in
    `CLIP` (token_embedding, positional_embedding, transformer, ln_final, text_projection, attn_mask)."""

    family = "open_clip-text"

    def __init__(self, text: nn.Module, prefix: str):
        if getattr(text, "cls_emb", None) is not None or getattr(text, "use_pad_mask", False):
            raise UserInputError("text towers with an appended class token or a padding mask (CoCa) are not supported "
                                 f"yet; {supported_families()}")
        self.text, self.prefix = text, prefix
        self.pool_type = getattr(text, "pool_type", None) or getattr(text, "text_pool_type", "argmax")
        if self.pool_type not in ("argmax", "eos", "last", "first"):
            raise UserInputError(f"text pool type {self.pool_type!r} is not supported (argmax, eos, last, first are)")
        self.eos_id = getattr(text, "eos_id", None) or getattr(text, "text_eos_id", None)
        projection = text.text_projection
        self.output_dim = (projection.out_features if isinstance(projection, nn.Linear) else
                           projection.shape[1] if projection is not None else text.transformer.width)
        super().__init__(text)

    def pooled_position(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B,) the position the tower pools (open_clip's text_global_pool)."""
        b, length = input_ids.shape
        if self.pool_type == "argmax":
            return input_ids.argmax(dim=-1)
        if self.pool_type == "eos":
            return (input_ids == self.eos_id).int().argmax(dim=-1)
        return torch.full((b,), length - 1 if self.pool_type == "last" else 0, device=input_ids.device)

    def tokens(self, input_ids):
        t = self.text
        x = t.token_embedding(input_ids) + t.positional_embedding[:input_ids.shape[1]]  # (B, L, width)
        mask = t.attn_mask[:input_ids.shape[1], :input_ids.shape[1]] if t.attn_mask is not None else None
        x = t.ln_final(t.transformer(x, attn_mask=mask))
        projection = t.text_projection
        tokens = projection(x) if isinstance(projection, nn.Linear) else x @ projection if projection is not None else x
        b, length = input_ids.shape
        pooled = self.pooled_position(input_ids)  # (B,)
        order = pooled_first(pooled, length)  # (B, L)
        tokens = tokens.gather(1, order[..., None].expand(-1, -1, tokens.shape[-1]))
        attn = self._attn
        qkv = self.capture.pop("qkv")  # (B, L, 3 * width)
        q, k, _ = qkv.reshape(b, length, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q = q.gather(2, pooled[:, None, None, None].expand(-1, q.shape[1], 1, q.shape[-1]))  # (B, H, 1, hd)
        scores = (q @ k.transpose(-2, -1)).float() * attn.head_dim ** -0.5  # (B, H, 1, L)
        if mask is not None:
            scores = scores + mask.float()[pooled][:, None, None, :]
        probs = scores.softmax(dim=-1)[:, :, 0].mean(dim=1)  # (B, L)
        return tokens, probs.gather(1, order[:, 1:])


def pooled_first(pooled: torch.Tensor, length: int) -> torch.Tensor:
    """(B, L) positions with the pooled one first, then the others in order: hypergraph token 0 is the pooled one."""
    keys = torch.arange(length, device=pooled.device).expand(pooled.shape[0], -1)
    return keys.masked_fill(F.one_hot(pooled, length).bool(), -1).argsort(dim=-1)


# ---- transformers towers (CLIPModel, SiglipModel) --------------------------------------------------------------
class _TransformersTower(Tower):
    """A transformers encoder (`<model>.encoder.layers`): LoRA and peft on each layer's self_attn q_proj, k_proj,
    v_proj (and out_proj for 'o'), the last layer's q_proj and k_proj hooked. The model's own attention
    (SDPA) runs untouched."""

    def __init__(self, model: nn.Module, prefix: str):
        super().__init__()
        self.model, self.prefix = model, prefix

    @property
    def layers(self):
        return self.model.encoder.layers

    def lora_sites(self, layer):
        attn = layer.self_attn
        return [LoRASite(attn, "q_proj", ("q",)), LoRASite(attn, "k_proj", ("k",)), LoRASite(attn, "v_proj", ("v",)),
                LoRASite(attn, "out_proj", ("o",))]

    def peft_targets(self, position: str) -> str:
        return _layer_regex(self.prefix, select_layers(position, len(self.layers)),
                            r"\.self_attn\.(q_proj|k_proj|v_proj)")

    def attach_hooks(self) -> None:
        self._attn = self.layers[-1].self_attn
        self._attn.q_proj.register_forward_hook(self.capture.hook("q"))
        self._attn.k_proj.register_forward_hook(self.capture.hook("k"))

    def _scores(self, rows: torch.Tensor) -> torch.Tensor:
        """Pre-softmax (q_row * scale) @ k^T of the last layer, per head: (B, H, L), `rows` (B,) the query
        position of each sample."""
        attn = self._attn
        q, k = self.capture.pop("q"), self.capture.pop("k")  # (B, L, H * hd)
        b, length, _ = k.shape
        q = q[torch.arange(b, device=q.device), rows].reshape(b, attn.num_heads, 1, attn.head_dim)
        k = k.reshape(b, length, attn.num_heads, attn.head_dim).transpose(1, 2)  # (B, H, L, hd)
        with fp32_region(k):  # the row decides the hypergraph's top-k: no near-tie flipped by bf16
            return ((q.float() * attn.scale) @ k.float().transpose(-2, -1))[:, :, 0]


class TransformersCLIPVisionTower(_TransformersTower):
    """CLIPModel's image tower. CLS role: the class token; its row of the last layer's pre-softmax scores, heads
    averaged; tokens: `visual_projection(post_layernorm(last_hidden_state))`, all of them (the model applies both
    to the class token alone: token 0 is `get_image_features`)."""

    family = "hf-clip-vision"

    def __init__(self, clip: nn.Module):
        super().__init__(clip.vision_model, "vision_model.encoder.layers.{}")
        self.clip, self.output_dim = clip, clip.visual_projection.out_features

    def tokens(self, images):
        x = self.model.post_layernorm(self.model(pixel_values=images).last_hidden_state)  # (B, N, width)
        scores = self._scores(torch.zeros(images.shape[0], dtype=torch.long, device=images.device))  # (B, H, N)
        return self.clip.visual_projection(x), scores[:, :, 1:].mean(dim=1)


class TransformersSiglipVisionTower(_TransformersTower):
    """SiglipModel's image tower. CLS role: the attention-pool head's probe (its latent query); token 0 is the
    pooled output (`get_image_features`), then the post-layernorm patch tokens it attends to; the CLS row is the
    probe's pre-softmax scores over them, heads averaged, computed from the head's own (frozen) projections."""

    family = "hf-siglip-vision"

    def __init__(self, clip: nn.Module):
        if not getattr(clip.vision_model, "use_head", False):
            raise UserInputError("a SigLIP image tower without its attention-pool head (vision_use_head false) has no "
                                 f"pooled embedding; {supported_families()}")
        super().__init__(clip.vision_model, "vision_model.encoder.layers.{}")
        self.output_dim = clip.config.vision_config.hidden_size

    def attach_hooks(self) -> None:  # the CLS row comes from the head, not from the encoder's last layer
        pass

    def tokens(self, images):
        out = self.model(pixel_values=images)
        x = out.last_hidden_state  # (B, N, width), post-layernorm
        pool = self.model.head.attention  # nn.MultiheadAttention(batch_first), query = the probe
        width, heads = pool.embed_dim, pool.num_heads
        q = F.linear(self.model.head.probe, pool.in_proj_weight[:width], pool.in_proj_bias[:width])  # (1, 1, width)
        k = F.linear(x, pool.in_proj_weight[width:2 * width], pool.in_proj_bias[width:2 * width])  # (B, N, width)
        q = q.reshape(1, heads, 1, width // heads)
        k = k.reshape(x.shape[0], x.shape[1], heads, width // heads).transpose(1, 2)  # (B, H, N, hd)
        with fp32_region(k):  # as _scores: the row decides the hypergraph's top-k
            scores = ((q.float() * (width // heads) ** -0.5) @ k.float().transpose(-2, -1))[:, :, 0]  # (B, H, N)
        return torch.cat([out.pooler_output[:, None], x], dim=1), scores.mean(dim=1)


class TransformersCLIPTextTower(_TransformersTower):
    """CLIPModel's text tower. CLS role: the end-of-text token the model pools (the highest id for configs with
    eos_token_id 2, else the first eos), under the causal mask; tokens: `text_projection(last_hidden_state)`, the
    pooled one first, then the other positions in order, padding included; the CLS row is its softmax row."""

    family = "hf-clip-text"

    def __init__(self, clip: nn.Module):
        super().__init__(clip.text_model, "text_model.encoder.layers.{}")
        self.clip, self.output_dim = clip, clip.text_projection.out_features

    def pooled_position(self, input_ids: torch.Tensor) -> torch.Tensor:
        eos = self.model.eos_token_id
        return input_ids.argmax(dim=-1) if eos == 2 else (input_ids == eos).int().argmax(dim=-1)

    def tokens(self, input_ids):
        x = self.model(input_ids=input_ids).last_hidden_state  # (B, L, width), after the final layernorm
        b, length = input_ids.shape
        pooled = self.pooled_position(input_ids)
        order = pooled_first(pooled, length)
        tokens = self.clip.text_projection(x).gather(1, order[..., None].expand(-1, -1, self.output_dim))
        scores = self._scores(pooled)  # (B, H, L)
        later = torch.arange(length, device=input_ids.device)[None] > pooled[:, None]  # the causal mask's row
        probs = scores.masked_fill(later[:, None], float("-inf")).softmax(dim=-1).mean(dim=1)  # (B, L)
        return tokens, probs.gather(1, order[:, 1:])


class TransformersSiglipTextTower(_TransformersTower):
    """SiglipModel's text tower. CLS role: the last position, which the model pools (padding to max length, as it
    was trained), bidirectional attention; tokens: `head(last_hidden_state)`, the last one first, then the others in
    order; the CLS row is its softmax row."""

    family = "hf-siglip-text"

    def __init__(self, clip: nn.Module):
        super().__init__(clip.text_model, "text_model.encoder.layers.{}")
        self.output_dim = self.model.head.out_features

    def tokens(self, input_ids):
        x = self.model(input_ids=input_ids).last_hidden_state  # (B, L, width), after the final layernorm
        b, length = input_ids.shape
        pooled = torch.full((b,), length - 1, dtype=torch.long, device=input_ids.device)
        order = pooled_first(pooled, length)
        tokens = self.model.head(x).gather(1, order[..., None].expand(-1, -1, self.output_dim))
        probs = self._scores(pooled).softmax(dim=-1).mean(dim=1)  # (B, L)
        return tokens, probs.gather(1, order[:, 1:])


TRANSFORMERS_TOWERS = {"CLIPModel": (TransformersCLIPVisionTower, TransformersCLIPTextTower),
                       "SiglipModel": (TransformersSiglipVisionTower, TransformersSiglipTextTower)}


def _transformers_towers(clip: nn.Module):
    return TRANSFORMERS_TOWERS.get(type(clip).__name__) if isinstance(clip, PreTrainedModel) else None


# ---- which tower a model has -------------------------------------------------------------------------------
def supported_families() -> str:
    return ("supported: timm ViT image towers with a class token (BiomedCLIP) or an attention-pool head (SigLIP), "
            "open_clip VisionTransformer with "
            "class-token pooling (OpenAI CLIP, LAION, MetaCLIP, DFN, QuiltNet), Hugging Face BERT/RoBERTa text "
            "towers, open_clip text transformers; transformers CLIPModel and SiglipModel (--model hf:...)")


def vision_tower(clip: nn.Module) -> Tower:
    towers = _transformers_towers(clip)
    if towers is not None:
        return towers[0](clip)
    visual = clip.visual
    if isinstance(visual, TimmModel):
        if type(visual.trunk).__name__ != "VisionTransformer":
            raise UserInputError(f"image tower {type(visual.trunk).__name__} (timm) is not supported; "
                                 f"{supported_families()}")
        return TimmViTTower(visual)
    if isinstance(visual, VisionTransformer):
        return OpenClipViTTower(visual)
    raise UserInputError(f"image tower {type(visual).__name__} is not supported; {supported_families()}")


def text_tower(clip: nn.Module) -> Tower:
    towers = _transformers_towers(clip)
    if towers is not None:
        return towers[1](clip)
    if isinstance(clip, CLIP):  # the text tower's modules live on the model itself
        return OpenClipTextTower(clip, "transformer.resblocks.{}")
    text = getattr(clip, "text", None)
    if isinstance(text, HFTextEncoder):
        dim = text.output_dim if hasattr(text, "output_dim") else clip.embed_dim
        return HFTextTower(text, dim)
    if isinstance(text, TextTransformer):
        return OpenClipTextTower(text, "text.transformer.resblocks.{}")
    raise UserInputError(f"text tower {type(text).__name__} is not supported; {supported_families()}")


def architecture(vision: Tower, text: Tower) -> dict:
    return {"vision": vision.describe(), "text": text.describe()}


def check_layers(towers: List[Tower], position: str) -> None:
    """`position` selects at least one layer of every tower (a shallow model may have too few)."""
    for tower in towers:
        select_layers(position, len(tower.layers))
