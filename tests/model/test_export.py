"""Export: a merged open_clip folder plus adapters that reproduce the trained model, and its model card."""
import json
import os

import open_clip
import pytest
import torch
from safetensors.torch import load_file

import export
from ace_lora.io import atomic_save
from ace_lora.model.checkpoint import save_released_checkpoint
from ace_lora.model.factory import build_model, load_model_for_eval
from ace_lora.model.methods import METHODS
from tests.conftest import tiny_model_with_lora_updates
from tests.model.test_methods import method_config


def assert_same_embeddings(exported, original, images, ids):
    """The exported model's image and text embeddings are the original's (1e-5)."""
    torch.testing.assert_close(exported.encode_image(images), original.encode_image(images), rtol=0, atol=1e-5)
    torch.testing.assert_close(exported.encode_text(ids), original.encode_text(ids), rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def trained(tiny_model_name, tmp_path_factory):
    model = tiny_model_with_lora_updates(tiny_model_name)
    with torch.no_grad():
        model.logit_scale.fill_(42.0)
    path = tmp_path_factory.mktemp("weights") / "weights.pt"
    save_released_checkpoint(model, str(path))
    return str(path)


def test_export_round_trip_and_plain_open_clip_load(tiny_model_name, trained, tmp_path, capsys):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"metrics": {"auroc": 0.8125, "n": 20, "note": "text is left out"}}))
    out = tmp_path / "export"
    assert export.main(["--model", tiny_model_name, "--checkpoint", trained, "--output-dir", str(out),
                        "--training-data", "synthetic demo", "--metrics", str(metrics)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"open_clip_config.json", "open_clip_pytorch_model.bin", "ace_hgnn.safetensors", "ace_lora_config.json",
            "README.md", "vocab.txt"} <= names
    original = load_model_for_eval(tiny_model_name, trained)
    exported = load_model_for_eval("hf-hub:unused", str(out))  # an export folder is its own backbone
    assert exported.num_trainable() == 0 and exported.logit_scale.item() == 42.0
    assert not any("lora" in n for n, _ in exported.named_parameters())
    images = torch.randn(3, 3, 64, 64)
    ids = original.tokenize(["findings suggesting edema", "there is pneumonia", "a chest x-ray image of edema"])
    with torch.no_grad():
        assert_same_embeddings(exported, original, images, ids)
        # The merged backbone alone, through open_clip itself: the LoRA'd model's global embedding.
        clip, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
        clip.eval()
        torch.testing.assert_close(clip.encode_image(images, normalize=True),
                                   original.clip.encode_image(images, normalize=True), rtol=0, atol=1e-5)
        bare = load_model_for_eval(tiny_model_name)
        assert not torch.allclose(clip.encode_image(images), bare.clip.encode_image(images), atol=1e-4)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("ace_hgnn.safetensors", "open_clip_pytorch_model.bin", "ace_lora_config.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name  # safetensors alone once wrote 0600
    adapters = load_file(str(out / "ace_hgnn.safetensors"))
    assert set(adapters) == {"logit_scale"} | {f"{t}_{p}_adapter.{k}" for t in ("img", "text") for p in ("edge", "node")
                                               for k in ("down.weight", "down.bias", "up.weight", "up.bias")}
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: mit\nlibrary_name: open_clip\n") and "| auroc | 0.8125 |" in card
    assert "synthetic demo" in card and "note" not in card
    summary = json.loads((out / "ace_lora_config.json").read_text())
    trained = build_model(tiny_model_name, original.config).num_trainable()  # what training trains (78,593)
    assert summary["trainable_parameters"] == trained > 0 and summary["method"] == "ace_lora"


def test_export_refuses_a_non_empty_folder_and_a_bad_metrics_file(tiny_model_name, trained, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("x")
    with pytest.raises(SystemExit):
        export.main(["--model", tiny_model_name, "--checkpoint", trained, "--output-dir", str(taken)])
    assert capsys.readouterr().err.strip() == f"error: --output-dir {taken} is not empty: export into a new folder"
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit):
        export.main(["--model", tiny_model_name, "--checkpoint", trained, "--output-dir", str(tmp_path / "o"),
                     "--metrics", str(bad)])
    assert "not a readable JSON file" in capsys.readouterr().err


def trained_checkpoint(model_name, method, path, peft_file=None):
    """A training checkpoint of `method` whose trained tensors all moved away from their initial values."""
    torch.manual_seed(0)
    model = build_model(model_name, method_config(method, gnn="both" if method == "ace_lora" else "none",
                                                  peft_file=peft_file))
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.02 * torch.randn_like(p))
    atomic_save({"trainable": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
                 "model_config": model.config.to_dict()}, str(path))
    return model


EXPORTABLE = [m for m in METHODS if m != "bare"]  # bare trains nothing: training refuses it, so there is no file


@pytest.mark.parametrize("method", EXPORTABLE)
def test_every_method_exports_to_a_folder_that_loads_to_equal_embeddings(tiny_model_name, tmp_path, method):
    peft_file = None
    if method == "peft":
        peft_file = tmp_path / "lora_r2.json"
        peft_file.write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2}))
    model = trained_checkpoint(tiny_model_name, method, tmp_path / "last.pt", peft_file and str(peft_file))
    out = tmp_path / "export"
    assert export.main(["--model", tiny_model_name, "--checkpoint", str(tmp_path / "last.pt"), "--output-dir",
                        str(out)]) == 0
    summary = json.loads((out / "ace_lora_config.json").read_text())
    assert summary["method"] == method and summary["trainable_parameters"] == model.num_trainable()
    assert f"Trained numbers: {model.num_trainable():,}" in (out / "README.md").read_text()
    weights = torch.load(out / "open_clip_pytorch_model.bin", weights_only=True)
    assert not [k for k in weights if "lora_" in k or "base_layer" in k or "hada_" in k or "ia3_" in k
                or "vera_" in k], "peft's keys left in the export"
    model.eval()
    exported = load_model_for_eval("hf-hub:unused", str(out))
    images = torch.randn(2, 3, 64, 64)
    ids = model.tokenize(["findings suggesting edema", "a chest x-ray image of pneumonia"])
    with torch.no_grad():
        assert_same_embeddings(exported, model, images, ids)
        clip, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
        clip.eval()
        torch.testing.assert_close(clip.encode_image(images, normalize=True),
                                   model.encode_image(images) if method != "ace_lora" else
                                   model.clip.encode_image(images, normalize=True), rtol=0, atol=1e-5)


def test_a_tuner_peft_cannot_merge_is_one_line_and_writes_nothing(tiny_model_name, tmp_path, capsys, monkeypatch):
    import peft.tuners.lora

    trained_checkpoint(tiny_model_name, "dora", tmp_path / "last.pt")

    def cannot_merge(self, *args, **kwargs):
        raise NotImplementedError("merging is not supported for this tuner")

    monkeypatch.setattr(peft.tuners.lora.LoraModel, "merge_and_unload", cannot_merge)
    out = tmp_path / "export"
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--model", tiny_model_name, "--checkpoint", str(tmp_path / "last.pt"), "--output-dir", str(out)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: cannot export --method dora: peft cannot merge its LORA tuner "
                                               "into the backbone (merging is not supported for this tuner)")
    assert list(out.iterdir()) == []


def test_a_moved_export_loads_with_ace_lora_and_with_open_clip_given_its_place(tiny_model_name, trained, tmp_path):
    """The tiny model names its text tower by a local folder, so the export records its own path: after a move,
    ace_lora's loader points the text tower at the folder itself, and plain open_clip takes it as text_cfg."""
    out = tmp_path / "export"
    assert export.main(["--model", tiny_model_name, "--checkpoint", trained, "--output-dir", str(out)]) == 0
    moved = tmp_path / "moved"
    os.rename(out, moved)
    original = load_model_for_eval(tiny_model_name, trained)
    exported = load_model_for_eval("hf-hub:unused", str(moved))
    images = torch.randn(2, 3, 64, 64)
    ids = original.tokenize(["findings suggesting edema", "there is pneumonia"])
    with torch.no_grad():
        assert_same_embeddings(exported, original, images, ids)
        text_cfg = json.loads((moved / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
        clip, _, _ = open_clip.create_model_and_transforms(
            f"local-dir:{moved}", text_cfg={**text_cfg, "hf_model_name": str(moved), "hf_tokenizer_name": str(moved)})
        torch.testing.assert_close(clip.eval().encode_text(ids, normalize=True),
                                   original.clip.encode_text(ids, normalize=True), rtol=0, atol=1e-5)
