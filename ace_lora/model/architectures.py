"""The medical transformers models' real architectures with random weights, built offline (no download): for
trainable counts and benchmarks at their true size (`random_backbone`).

Where the numbers come from (the configs themselves are on the Hub, which this project's tests cannot reach):
- `medsiglip-448` (google/medsiglip-448): SigLIP so400m/14 in both towers (width 1152, MLP 4304, 16 heads, 27
  layers, patch 14: the configuration of SigLIP so400m and of Gemma 3's SigLIP image tower), 448-pixel images and
  64 text tokens (the MedSigLIP model card), SigLIP's 32,000-token vocabulary; 878.3 M numbers, the card's "about
  900 M" (two 400 M towers).
- `plip` (vinid/plip): OpenAI CLIP ViT-B/32, which PLIP fine-tuned; transformers' CLIPConfig defaults are exactly
  openai/clip-vit-base-patch32's (image width 768, 12 layers, patch 32, 224 pixels; text width 512, 8 heads, 12
  layers, 77 tokens; a 512-d joint space).
The tokenizer is a word-level one over a few report words (the real vocabularies need the network); only the
vocabulary size is the real one, so counts and speeds are exact while the words mean nothing.
"""
from typing import Optional

from ace_lora.model.backbone import Backbone, TransformersTokenizer
from ace_lora.model.tiny_model import random_transformers_model

SO400M = {"hidden_size": 1152, "intermediate_size": 4304, "num_attention_heads": 16, "num_hidden_layers": 27}
ARCHITECTURES = {  # layout, text tower, image tower (what they leave out: the config class's defaults)
    "medsiglip-448": ("siglip", {**SO400M, "max_position_embeddings": 64, "vocab_size": 32000},
                      {**SO400M, "patch_size": 14, "image_size": 448}),
    "plip": ("clip", {"max_position_embeddings": 77}, {"image_size": 224}),
}
WORDS = ("heart size is normal there is mild pulmonary edema with small bilateral pleural effusions and bibasilar "
         "atelectasis no pneumothorax impression").split()


def random_backbone(name: str, image_size: Optional[int] = None, seed: int = 0) -> Backbone:
    """The architecture `name` (ARCHITECTURES) with random weights, its image processor, and a word-level tokenizer
    padded to its text length; `image_size` replaces the image size (e.g. MedSigLIP's tower at 224 pixels)."""
    from ace_lora.data.transforms import processor_preprocess
    layout, text, vision = ARCHITECTURES[name]
    vision = {**vision, **({"image_size": image_size} if image_size else {})}
    clip, tokenizer, processor = random_transformers_model(layout, WORDS, text, vision, seed)
    return Backbone(clip=clip.eval().requires_grad_(False),
                    preprocess=processor_preprocess(processor, clip.config.vision_config.image_size),
                    tokenizer=TransformersTokenizer(tokenizer, text["max_position_embeddings"]),
                    processor_files=(tokenizer, processor))
