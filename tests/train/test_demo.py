"""`python train.py --demo` through its real entry point: synthetic data, tiny model, zero-shot AUROC gain."""
import json

import pytest
import torch

import train
from ace_lora.model.factory import load_model_for_eval


@pytest.mark.slow
def test_demo_learns_the_held_out_split(tmp_path):
    out = tmp_path / "demo"
    train.main(["--demo", "--output-dir", str(out), "--no-progress"])
    metrics = json.loads((out / "demo_metrics.json").read_text())
    assert metrics["auroc_after"] >= 0.80
    assert metrics["auroc_after"] >= metrics["auroc_before"] + 0.20
    assert metrics["accuracy_after"] > metrics["accuracy_before"]
    assert metrics["seconds"] > 0 and metrics["n_test"] == 100 and metrics["n_train"] == 600  # speed: benchmarks
    for name in ("ACE-LoRA_weights_last.pt", "ACE-LoRA_weights_best.pt", "training_curves.png", "metrics.jsonl",
                 "config.yaml", "checkpoints/last.pt", "demo_data/chexpert_5x200.csv", "demo_data/train.csv"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["epoch"] == 0 and records[0]["val_auroc"] == metrics["auroc_before"]  # validated during training
    assert len(records) == 13 and records[-1]["val_auroc"] == metrics["auroc_after"]
    # the released-format file reproduces the trained weights
    model = load_model_for_eval(f"local-dir:{out}/demo_data/tiny_biomedclip", str(out / "ACE-LoRA_weights_last.pt"),
                                merge=False)
    last = torch.load(out / "checkpoints/last.pt", weights_only=True)["trainable"]
    assert all(torch.equal(dict(model.named_parameters())[n], t) for n, t in last.items())
