"""Models for evaluation from a checkpoint of either format, or the bare BiomedCLIP baseline."""
import torch

from ace_lora.io import atomic_save
from ace_lora.model.backbone import load_backbone
from ace_lora.model.checkpoint import save_released_checkpoint
from ace_lora.model.config import AceLoRAConfig
from ace_lora.model.factory import build_model, load_model_for_eval
from ace_lora.model.lora import MergeableLoRA


def test_eval_loader_rebuilds_config_from_metadata(tiny_model_name, tmp_path):
    model = build_model(tiny_model_name, AceLoRAConfig(r=2, topk=3, position="half-up"))
    for parts in model.vision_lora.values():
        for factors in parts.values():
            torch.nn.init.normal_(factors.lora_B, std=0.05)
    path = tmp_path / "weights.pt"
    save_released_checkpoint(model, str(path))
    loaded = load_model_for_eval(tiny_model_name, str(path), merge=False)
    assert loaded.config.r == 2 and loaded.config.topk == 3 and loaded.config.position == "half-up"
    images = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images), model.encode_image(images))
    assert not list(tmp_path.glob(".tmp_*"))  # atomic write left no temporary file


def test_bare_baseline_is_open_clips_own_embedding_and_eval_models_are_merged(tiny_model_name, tmp_path):
    bare = load_model_for_eval(tiny_model_name)
    assert bare.image_hgnn is None and bare.text_hgnn is None and bare.num_trainable() == 0
    clip = load_backbone(tiny_model_name).clip.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bare.encode_image(images), clip.encode_image(images, normalize=True),
                                   rtol=1e-5, atol=1e-6)
    model = build_model(tiny_model_name, AceLoRAConfig(r=2))
    state = {"trainable": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
             "model_config": model.config.to_dict()}
    path = tmp_path / "ours.pt"
    atomic_save(state, str(path))
    loaded = load_model_for_eval(tiny_model_name, str(path))
    assert loaded.config.r == 2 and not loaded.training
    assert all(m.merged for m in loaded.modules() if isinstance(m, MergeableLoRA))
    save_released_checkpoint(model, str(tmp_path / "released.pt"))
    assert load_model_for_eval(tiny_model_name, str(tmp_path / "released.pt"), merge=False).config.r == 2
