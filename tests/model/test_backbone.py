import json
import os
import subprocess
import sys

import pytest

from ace_lora.errors import UserInputError
from ace_lora.model.backbone import load_backbone
from ace_lora.runtime import resolve_device

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_local_folder_with_hub_text_config_is_pointed_at_the_folder(tiny_model_name, tmp_path):
    """A BiomedCLIP-style config naming a hub BERT id loads offline when the folder has config.json."""
    folder = tiny_model_name.split(":", 1)[1]
    cfg_path = os.path.join(folder, "open_clip_config.json")
    cfg = json.load(open(cfg_path))
    cfg["model_cfg"]["text_cfg"]["hf_model_name"] = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
    cfg["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
    copy = tmp_path / "hubstyle"
    copy.mkdir()
    for name in os.listdir(folder):
        if name != "open_clip_config.json":
            os.symlink(os.path.join(folder, name), copy / name)
    (copy / "open_clip_config.json").write_text(json.dumps(cfg))
    backbone = load_backbone(f"local-dir:{copy}")
    assert backbone.tokenizer(["edema"]).shape == (1, 32)
    os.remove(copy / "config.json")
    with pytest.raises(UserInputError, match="has no config.json"):
        load_backbone(f"local-dir:{copy}")


def test_missing_folder_and_device_errors(tmp_path):
    with pytest.raises(UserInputError, match="model folder not found"):
        load_backbone(f"local-dir:{tmp_path / 'absent'}")
    with pytest.raises(UserInputError, match="not an open_clip model folder"):
        load_backbone(f"local-dir:{tmp_path}")
    assert resolve_device("cpu").type == "cpu"


def test_unreachable_hub_gives_one_clear_message():
    code = ("from ace_lora.model.backbone import load_backbone\n"
            "from ace_lora.errors import UserInputError\n"
            "try:\n    load_backbone()\nexcept UserInputError as e:\n    print('MSG', e)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "MSG could not load hf-hub:microsoft/BiomedCLIP" in out.stdout
    assert "--model local-dir:PATH" in out.stdout


@pytest.mark.parametrize("model", ["hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
                                   "ViT-B-32@openai"])
def test_an_unreachable_hub_fails_before_the_download_is_tried(model, monkeypatch, tmp_path):
    """Without HF_HUB_OFFLINE the hub client retries for 30-60 s; a short probe of the hub decides first."""
    from ace_lora.model import backbone
    monkeypatch.setattr(backbone.hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(backbone, "hub_endpoint", lambda: "http://127.0.0.1:9")  # nothing listens there

    def must_not_download(*args, **kwargs):
        raise AssertionError("the download was tried")

    monkeypatch.setattr(backbone.open_clip, "create_model_and_transforms", must_not_download)
    with pytest.raises(UserInputError, match=r"^could not download .*: 127\.0\.0\.1 cannot be reached and .* is not "
                                             r"in the local cache; .* --model local-dir:PATH"):
        load_backbone(model)
