"""The offline tiny model: BiomedCLIP's architecture (timm ViT + BERT, CLS pooling) at a small width."""
import json

from ace_lora.model.config import AceLoRAConfig
from ace_lora.model.factory import build_model
from ace_lora.model.tiny_model import write_tiny_biomedclip


def test_tiny_model_has_the_biomedclip_layout_and_its_vocabulary(tmp_path):
    name = write_tiny_biomedclip(str(tmp_path / "tiny"), ["edema", "pneumonia"], image_size=32)
    assert name == f"local-dir:{tmp_path / 'tiny'}"
    config = json.loads((tmp_path / "tiny" / "open_clip_config.json").read_text())["model_cfg"]
    assert "vit" in config["vision_cfg"]["timm_model_name"] and config["text_cfg"]["hf_model_name"]
    model = build_model(name, AceLoRAConfig())
    vocabulary = (tmp_path / "tiny" / "vocab.txt").read_text().split()
    assert {"edema", "pneumonia", "[CLS]", "[PAD]"} <= set(vocabulary)
    ids = model.tokenize(["edema pneumonia"])
    assert ids[0, 0].item() == vocabulary.index("[CLS]") and vocabulary.index("edema") in ids[0].tolist()
    assert len(model.vision_lora) == len(model.clip.visual.trunk.blocks) and model.text_lora  # LoRA on both towers
