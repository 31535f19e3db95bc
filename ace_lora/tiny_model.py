"""Tiny random models with BiomedCLIP's architecture, built offline (demo and tests).

Same structure as BiomedCLIP (timm ViT image tower with a linear head, BERT text tower with an
MLP projection and CLS pooling, loaded through open_clip's `local-dir:` schema) at a size that
trains on a CPU in seconds: timm's `test_vit` (6 blocks, width 64) and a 2-layer BERT of width 64.
"""
import json
import os
import re
from typing import Iterable

import open_clip
import torch

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
