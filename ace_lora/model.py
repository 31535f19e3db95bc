"""ACE-LoRA model: frozen BiomedCLIP + LoRA on both towers + an ACE-HGNN per tower + a learned scale.

Token-level features come from the libraries' public submodules, with no patched methods:
- image: `visual.head(trunk.forward_features(x))`, all tokens (B, 1 + patches, D);
- text: `text.proj(transformer(...).last_hidden_state)`, all context positions, padding included.
The hypergraph's CLS weights come from forward hooks on the last attention layer's projections,
so attention itself keeps its fused (SDPA) kernel:
- image: the last ViT block's pre-softmax scores (q * scale) @ k^T, CLS row, CLS column dropped,
  averaged over heads (B, N-1);
- text: the last BERT layer's softmax attention probabilities of the CLS row with padding masked,
  CLS column dropped, averaged over heads (B, L-1).
Only the CLS row is computed, which costs O(N) rather than O(N^2).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone
from .config import AceLoRAConfig
from .data.transforms import input_spec, pixel_transform
from .hgnn import AceHgnn
from .lora import LoRAFactors, inject_text_lora, inject_vision_lora, set_merged
from .methods import apply_peft, get_method


class _ProjectionCapture:
    """Keeps the latest output of the hooked projection modules (the last layer's q/k)."""

    def __init__(self):
        self.outputs: Dict[str, torch.Tensor] = {}

    def hook(self, name: str):
        def store(_module, _inputs, output):
            self.outputs[name] = output
        return store


class AceLoRAModel(nn.Module):
    def __init__(self, backbone: Backbone, config: Optional[AceLoRAConfig] = None):
        super().__init__()
        self.config = config = config or AceLoRAConfig()
        config.validate()
        self.clip = backbone.clip
        self.tokenizer = backbone.tokenizer
        self.preprocess = backbone.preprocess  # the backbone's own PIL -> normalised float transform
        self.input_spec = input_spec(backbone.preprocess)
        self.eval_pixels = pixel_transform(backbone.preprocess, "eval")  # PIL -> uint8, normalised on the device
        self.clip.requires_grad_(False)

        bert_layers = self.clip.text.transformer.encoder.layer
        vit_blocks = self.clip.visual.trunk.blocks
        lora_args = (config.params, config.position, config.r, config.alpha, config.dropout)
        self.text_lora: Dict[int, Dict[str, LoRAFactors]] = inject_text_lora(bert_layers, *lora_args)
        self.vision_lora: Dict[int, Dict[str, LoRAFactors]] = inject_vision_lora(vit_blocks, *lora_args)
        # Baselines (ace_lora.methods): a peft tuner in place of our LoRA, or every backbone weight.
        self._peft_owner = (apply_peft(self.clip, config.peft, config.position, len(bert_layers), len(vit_blocks))
                            if config.peft else [])  # a list, so not a submodule
        if get_method(config.method).trains_backbone:
            self.clip.requires_grad_(True)
            self.clip.logit_scale.requires_grad_(False)  # the learned scale below is the one trained

        dim = self.clip.text.output_dim if hasattr(self.clip.text, "output_dim") else self.clip.embed_dim
        self.embed_dim = dim  # the joint space
        gnn = config.apply_gnn_encoders
        self.image_hgnn = AceHgnn(dim, config.hidden_features, config.topk) if gnn in ("both", "vision") else None
        self.text_hgnn = AceHgnn(dim, config.hidden_features, config.topk) if gnn in ("both", "text") else None
        base_scale = self.clip.logit_scale.detach().exp().item()
        self.logit_scale = nn.Parameter(torch.tensor(base_scale))  # stored linear, as released

        self._capture = _ProjectionCapture()
        last_attn = vit_blocks[-1].attn
        last_attn.qkv.register_forward_hook(self._capture.hook("vit_qkv"))
        last_bert = bert_layers[-1].attention.self
        last_bert.query.register_forward_hook(self._capture.hook("bert_q"))
        last_bert.key.register_forward_hook(self._capture.hook("bert_k"))
        self._vit_attn = last_attn
        self._bert_attn = last_bert
        # What the method trains, fixed here: evaluation freezes everything, export still reports this number.
        self.method_parameter_count = self.num_trainable()

    # ---- parameters ---------------------------------------------------------------------------
    def trainable_parameters(self) -> List[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def base_logit_scale(self) -> torch.Tensor:
        """The backbone's own exp(logit_scale) (the released evaluation's temperature)."""
        return self.clip.logit_scale.exp()

    def merge_lora(self, merged: bool = True) -> None:
        set_merged(self.clip, merged)

    # ---- token features ---------------------------------------------------------------------
    def image_tokens(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(tokens (B, N, D), CLS pre-softmax attention over the other tokens (B, N-1)); `images` normalised
        float (B, 3, S, S), or uint8 pixels (B, 1 or 3, S, S) that are normalised here (data/transforms.py)."""
        if images.dtype == torch.uint8:
            images = self.input_spec.normalise(images)
        visual = self.clip.visual
        tokens = visual.head(visual.trunk.forward_features(images))  # (B, N, D)
        attn = self._vit_attn
        qkv = self._capture.outputs.pop("vit_qkv")  # (B, N, 3 * heads * head_dim)
        b, n, _ = qkv.shape
        q, k, _ = qkv.reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)  # (B, H, N, hd)
        scores = (q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)  # (B, H, 1, N)
        return tokens, scores[:, :, 0, 1:].mean(dim=1)

    def text_tokens(self, input_ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(tokens (B, L, D), CLS attention probabilities over the other positions (B, L-1))."""
        text = self.clip.text
        mask = input_ids != text.config.pad_token_id  # (B, L)
        out = text.transformer(input_ids=input_ids, attention_mask=mask.long())
        tokens = text.proj(out.last_hidden_state)  # (B, L, D)
        attn = self._bert_attn
        q = self._capture.outputs.pop("bert_q")[:, :1]  # (B, 1, H * hd)
        k = self._capture.outputs.pop("bert_k")  # (B, L, H * hd)
        b, length, _ = k.shape
        heads, hd = attn.num_attention_heads, attn.attention_head_size
        q = q.reshape(b, 1, heads, hd).transpose(1, 2)  # (B, H, 1, hd)
        k = k.reshape(b, length, heads, hd).transpose(1, 2)  # (B, H, L, hd)
        scores = (q @ k.transpose(-2, -1)).float() * attn.scaling  # (B, H, 1, L)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        probs = scores.softmax(dim=-1)
        return tokens, probs[:, :, 0, 1:].mean(dim=1)

    # ---- embeddings ---------------------------------------------------------------------------
    def embed_image_tokens(self, tokens: torch.Tensor, cls_attention: torch.Tensor) -> torch.Tensor:
        """Refined, normalised fp32 tokens (B, N, D): the hypergraph output, or the plain normalised tokens."""
        return self._refine(self.image_hgnn, F.normalize(tokens.float(), dim=-1), cls_attention)

    def embed_text_tokens(self, tokens: torch.Tensor, cls_attention: torch.Tensor) -> torch.Tensor:
        return self._refine(self.text_hgnn, F.normalize(tokens.float(), dim=-1), cls_attention)

    @staticmethod
    def _refine(hgnn: Optional[AceHgnn], x: torch.Tensor, cls_attention: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if hgnn is None else hgnn(x, cls_attention)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised global image embedding (B, D): refined token 0."""
        return self.embed_image_tokens(*self.image_tokens(images))[:, 0]

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Normalised global text embedding (B, D): refined token 0."""
        return self.embed_text_tokens(*self.text_tokens(input_ids))[:, 0]

    def encode_prompt_ensemble(self, input_ids: torch.Tensor, num_templates: int) -> torch.Tensor:
        """Class embeddings (C, D) from prompts (C * T, L) ordered class-major.

        Normalised token features and CLS attention are averaged over the T templates of each class,
        then the text hypergraph runs once per class (the released zero-shot protocol).
        """
        tokens, attention = self.text_tokens(input_ids)
        x = F.normalize(tokens.float(), dim=-1)
        x = x.reshape(-1, num_templates, *x.shape[1:]).mean(dim=1)  # (C, L, D), not re-normalised
        attention = attention.reshape(-1, num_templates, attention.shape[-1]).mean(dim=1)  # (C, L-1)
        return self._refine(self.text_hgnn, x, attention)[:, 0]

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor):
        """(image embeddings (B, D), text embeddings (B, D), learned linear logit scale)."""
        return self.encode_image(images), self.encode_text(input_ids), self.logit_scale
