"""Tiny random models, built offline (demo and tests), loaded through open_clip's `local-dir:` schema.

- `write_tiny_biomedclip`: BiomedCLIP's structure (timm ViT image tower with a linear head, BERT text tower
  with an MLP projection and CLS pooling) at a size that trains on a CPU in seconds: timm's `test_vit`
  (6 blocks, width 64) and a 2-layer BERT of width 64.
- `write_tiny_openclip`: OpenAI CLIP's structure (open_clip's own VisionTransformer and causal text
  transformer, inlined in `CLIP`, its BPE tokenizer), 2 layers of width 64 in each tower.
- `write_tiny_transformers`: a transformers `CLIPModel` (PLIP's layout) or `SiglipModel` (MedSigLIP's layout)
  folder as `save_pretrained` writes it, with a word-level tokenizer over `words` (the real models' BPE and
  SentencePiece vocabularies need the network) and the model's own image processor; loaded as `hf:FOLDER`.
"""
import json
import os
import re
from typing import Iterable

import open_clip
import torch

from ace_lora.model.backbone import quiet_transformers

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_tiny_biomedclip(out_dir: str, words: Iterable[str], image_size: int = 64, context_length: int = 32,
                          embed_dim: int = 64, seed: int = 0) -> str:
    """Write a loadable open_clip folder to `out_dir`; returns the `local-dir:` model name.

    `words` become the tokenizer's vocabulary (lower-cased words split at punctuation, plus '.' and ','): the tiny
    tokenizer has no word pieces, so any word outside it is [UNK].
    """
    os.makedirs(out_dir, exist_ok=True)
    pieces = {p for w in words for p in re.findall(r"\w+|[^\w\s]", w.lower())}  # BERT basic tokenisation
    vocab = SPECIAL_TOKENS + sorted(pieces | {".", ","} - set(SPECIAL_TOKENS))
    with open(os.path.join(out_dir, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    bert = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 128, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 64,
            "type_vocab_size": 2, "vocab_size": len(vocab), "pad_token_id": 0, "layer_norm_eps": 1e-12,
            "initializer_range": 0.02}
    files = {
        "config.json": bert,
        "tokenizer_config.json": {"do_lower_case": True, "model_max_length": 64, "tokenizer_class": "BertTokenizer"},
        "special_tokens_map.json": {"cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]",
                                    "sep_token": "[SEP]", "unk_token": "[UNK]"},
        "open_clip_config.json": {
            "model_cfg": {
                "embed_dim": embed_dim,
                "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                               "timm_proj": "linear", "image_size": image_size},
                "text_cfg": {"hf_model_name": os.path.abspath(out_dir),
                             "hf_tokenizer_name": os.path.abspath(out_dir), "hf_proj_type": "mlp",
                             "hf_model_pretrained": False, "hf_pooler_type": "cls_last_hidden_state_pooler",
                             "context_length": context_length},
            },
            "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                               "std": [0.26862954, 0.26130258, 0.27577711]},
        },
    }
    for name, content in files.items():
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(content, f, indent=1)
    torch.manual_seed(seed)
    # Built from the config dict (open_clip's public model class): the factory would warn that the
    # folder has no weights yet, which is the point of this function.
    model = open_clip.CustomTextCLIP(**files["open_clip_config.json"]["model_cfg"])
    torch.save(model.state_dict(), os.path.join(out_dir, "open_clip_pytorch_model.bin"))
    return f"local-dir:{out_dir}"


TINY_OPENCLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def write_tiny_openclip(out_dir: str, image_size: int = 64, seed: int = 0, **model_cfg) -> str:
    """Write a loadable open_clip folder of a tiny CLIP (`TINY_OPENCLIP`, updated by `model_cfg`, e.g.
    quick_gelu=True or another vision_cfg); returns the `local-dir:` model name."""
    cfg = json.loads(json.dumps(TINY_OPENCLIP))
    for key, value in model_cfg.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    return _write_open_clip_folder(out_dir, cfg, image_size, seed, open_clip.CLIP)


def _write_open_clip_folder(out_dir: str, cfg: dict, image_size: int, seed: int, model_class) -> str:
    os.makedirs(out_dir, exist_ok=True)
    cfg["vision_cfg"]["image_size"] = image_size
    config = {"model_cfg": cfg, "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                                   "std": [0.26862954, 0.26130258, 0.27577711]}}
    with open(os.path.join(out_dir, "open_clip_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1)
    torch.manual_seed(seed)
    model = model_class(**{k: v for k, v in cfg.items() if k != "custom_text"})
    torch.save(model.state_dict(), os.path.join(out_dir, "open_clip_pytorch_model.bin"))
    return f"local-dir:{out_dir}"


TINY_SIGLIP = {  # SigLIP's structure: a timm ViT with an attention-pool (MAP) head, a bidirectional text
    # transformer pooled at its last position with a biased projection, a logit bias (open_clip's tokenizer
    # instead of SigLIP's, which needs the network)
    "embed_dim": 64, "custom_text": True, "init_logit_bias": -10.0,
    "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "map",
                   "timm_proj": "none", "image_size": 64},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2,
                 "no_causal_mask": True, "proj_bias": True, "pool_type": "last"},
}


def write_tiny_siglip(out_dir: str, image_size: int = 64, seed: int = 0) -> str:
    """Write a loadable open_clip folder of a tiny SigLIP-shaped model (`TINY_SIGLIP`); returns its name."""
    return _write_open_clip_folder(out_dir, json.loads(json.dumps(TINY_SIGLIP)), image_size, seed,
                                   open_clip.CustomTextCLIP)


TRANSFORMERS_LAYOUTS = ("clip", "siglip")


def word_tokenizer(words: Iterable[str], layout: str, length: int):
    """A word-level fast tokenizer over `words` with the layout's special tokens: CLIP's <|startoftext|> ...
    <|endoftext|> (the token CLIP pools), SigLIP's ... </s> (padded to `length`, as SigLIP is)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    specials = (["<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"] if layout == "clip" else
                ["<pad>", "<unk>", "</s>"])
    pieces = sorted({p for w in words for p in re.findall(r"\w+|[^\w\s]", w.lower())} | {".", ","})
    vocab = {token: i for i, token in enumerate(specials + [p for p in pieces if p not in specials])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    if layout == "clip":
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 2), ("<|endoftext|>", 3)])
        return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|startoftext|>",
                                       eos_token="<|endoftext|>", pad_token="<pad>", unk_token="<unk>",
                                       model_max_length=length), vocab
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=length), vocab


def random_transformers_model(layout: str, words: Iterable[str], text_config: dict, vision_config: dict,
                              seed: int = 0, **settings):
    """(model, tokenizer, image processor): a random transformers CLIPModel / SiglipModel (`layout`) of these tower
    configs, a word-level tokenizer over `words` padded to the text length (`max_position_embeddings`) whose special
    tokens the config names, and the layout's image processor at the model's image size (CLIP: shortest edge, then
    centre crop; SigLIP: the square)."""
    import transformers
    if layout not in TRANSFORMERS_LAYOUTS:
        raise ValueError(f"layout must be one of {TRANSFORMERS_LAYOUTS}, not {layout!r}")
    tokenizer, vocab = word_tokenizer(words, layout, text_config["max_position_embeddings"])
    ids = {"bos_token_id": vocab.get("<|startoftext|>"), "pad_token_id": vocab["<pad>"],
           "eos_token_id": vocab["<|endoftext|>" if layout == "clip" else "</s>"]}
    config_class, model_class = ((transformers.CLIPConfig, transformers.CLIPModel) if layout == "clip" else
                                 (transformers.SiglipConfig, transformers.SiglipModel))
    config = config_class(text_config={**text_config, **ids}, vision_config=vision_config, **settings, **ids)
    torch.manual_seed(seed)
    with quiet_transformers():
        model = model_class(config)
    size = config.vision_config.image_size
    if layout == "clip":
        processor = transformers.CLIPImageProcessor(size={"shortest_edge": size},
                                                    crop_size={"height": size, "width": size})
    else:
        processor = transformers.SiglipImageProcessor(size={"height": size, "width": size})
    return model, tokenizer, processor


def write_tiny_transformers(out_dir: str, words: Iterable[str], layout: str = "siglip", image_size: int = 64,
                            context_length: int = 32, width: int = 64, seed: int = 0) -> str:
    """Write a tiny random transformers CLIPModel / SiglipModel folder (2 layers of `width` per tower, patch 16)
    with its tokenizer and image processor; returns the `hf:` model name."""
    words = list(words)
    tower = {"hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": 2, "num_attention_heads": 2}
    vocab_size = len(word_tokenizer(words, layout, context_length)[1])
    model, tokenizer, processor = random_transformers_model(
        layout, words, {**tower, "vocab_size": vocab_size, "max_position_embeddings": context_length},
        {**tower, "image_size": image_size, "patch_size": 16}, seed,
        **({"projection_dim": width} if layout == "clip" else {}))
    os.makedirs(out_dir, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return f"hf:{out_dir}"
