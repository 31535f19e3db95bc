"""ACE-LoRA model: a frozen open_clip model (BiomedCLIP by default) or transformers CLIPModel / SiglipModel +
LoRA on both towers + an ACE-HGNN per tower + a learned scale (and bias, for a SigLIP-trained model).

The towers (ace_lora.model.towers, by family) give all output tokens in the joint space and the CLS-attention
row, from the libraries' public submodules and forward hooks on the last attention layer's projections,
so attention itself keeps its fused (SDPA) kernel. For BiomedCLIP:
- image: `visual.head(trunk.forward_features(x))`, all tokens (B, 1 + patches, D); the last ViT block's
  pre-softmax scores (q * scale) @ k^T, CLS row, CLS column dropped, averaged over heads (B, N-1);
- text: `text.proj(transformer(...).last_hidden_state)`, all context positions, padding included; the
  last BERT layer's softmax attention probabilities of the CLS row with padding masked, CLS column
  dropped, averaged over heads (B, L-1).
Only the CLS row is computed, which costs O(N) rather than O(N^2).
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ace_lora.data.transforms import input_spec, pixel_transform
from ace_lora.errors import UserInputError
from ace_lora.model.backbone import Backbone
from ace_lora.model.config import AceLoRAConfig
from ace_lora.model.hgnn import AceHgnn
from ace_lora.model.lora import set_merged
from ace_lora.model.methods import apply_peft, get_method
from ace_lora.model.towers import architecture, check_layers, text_tower, vision_tower


class AceLoRAModel(nn.Module):
    def __init__(self, backbone: Backbone, config: Optional[AceLoRAConfig] = None):
        super().__init__()
        self.config = config = config or AceLoRAConfig()
        config.validate()
        self.clip = backbone.clip
        self.tokenizer = backbone.tokenizer
        self.processor_files = backbone.processor_files  # a transformers model's tokenizer and image processor
        self.preprocess = backbone.preprocess  # the backbone's own PIL -> normalised float transform
        self.input_spec = input_spec(backbone.preprocess)
        self.eval_pixels = pixel_transform(backbone.preprocess, "eval")  # PIL -> uint8, normalised on the device
        self.clip.requires_grad_(False)

        # plain objects, not submodules: their modules belong to self.clip
        self.vision, self.text = vision_tower(self.clip), text_tower(self.clip)
        self.architecture = architecture(self.vision, self.text)
        check_layers([self.text, self.vision], config.position)
        self.text_lora = self.text.inject_lora(config)
        self.vision_lora = self.vision.inject_lora(config)
        # Baselines (ace_lora.model.methods): a peft tuner in place of our LoRA, or every backbone weight. The
        # PeftModel wraps self.clip, so it is kept as a plain attribute, not a submodule (its parameters are ours).
        peft_model = (apply_peft(self.clip, config.peft, [self.text.peft_targets(config.position),
                                                          self.vision.peft_targets(config.position)])
                      if config.peft else None)
        object.__setattr__(self, "peft_model", peft_model)
        if get_method(config.method).trains_backbone:
            self.clip.requires_grad_(True)
            self.clip.logit_scale.requires_grad_(False)  # the learned scale (and bias) below are the ones trained
            if getattr(self.clip, "logit_bias", None) is not None:
                self.clip.logit_bias.requires_grad_(False)
        self.text.attach_hooks()
        self.vision.attach_hooks()

        if self.vision.output_dim != self.text.output_dim:
            raise UserInputError(f"the towers' joint spaces differ: image {self.vision.output_dim}, text "
                                 f"{self.text.output_dim}")
        dim = self.embed_dim = self.vision.output_dim  # the joint space
        gnn = config.apply_gnn_encoders
        self.image_hgnn = AceHgnn(dim, config) if gnn in ("both", "vision") else None
        self.text_hgnn = AceHgnn(dim, config) if gnn in ("both", "text") else None
        base_scale = self.clip.logit_scale.detach().exp().item()
        self.logit_scale = nn.Parameter(torch.tensor(base_scale))  # stored linear, as released
        # SigLIP-trained models have a logit bias: it trains with the scale (the sigmoid loss needs it)
        bias = getattr(self.clip, "logit_bias", None)
        self.logit_bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        # What the method trains, fixed here: evaluation freezes everything, export still reports this number.
        self.method_parameter_count = self.num_trainable()

    # ---- parameters ---------------------------------------------------------------------------
    def use_loss(self, loss) -> None:
        """Train with `loss` (ace_lora.model.loss): a logit bias trains only with a sigmoid loss; InfoNCE does not
        use it, and an unused trained parameter would stall DDP."""
        if self.logit_bias is not None and not loss.sigmoid:
            self.logit_bias.requires_grad_(False)
            self.method_parameter_count = self.num_trainable()

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
        """(tokens (B, N, D), CLS attention over the other tokens (B, N-1)); `images` normalised
        float (B, 3, S, S), or uint8 pixels (B, 1 or 3, S, S) that are normalised here (data/transforms.py)."""
        if images.dtype == torch.uint8:
            images = self.input_spec.normalise(images)
        return self.vision.tokens(images)

    def text_tokens(self, input_ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(tokens (B, L, D), CLS attention over the other positions (B, L-1)); token 0 plays the CLS role."""
        return self.text.tokens(input_ids)

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
        """(image embeddings (B, D), text embeddings (B, D), learned linear logit scale, learned logit bias or
        None for a model without one)."""
        return self.encode_image(images), self.encode_text(input_ids), self.logit_scale, self.logit_bias
