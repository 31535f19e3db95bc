"""SIIM segmentation benchmark: decoder, loss, the trained and zero-shot runs on the synthetic demo data."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ace_lora.evaluation.dense import benchmark
from ace_lora.evaluation.dense.demo_data import write_siim_demo
from ace_lora.evaluation.dense.segmentation import ProgressiveUpsamplingDecoder, focal_dice_loss
from ace_lora.model.checkpoint import save_released_checkpoint
from ace_lora.model.config import AceLoRAConfig
from ace_lora.model.factory import build_model
from ace_lora.params.dense import dense_parser, parse_dense_args
from zero_shot_eval.segmentation_siim import main as segmentation_main

TASK = "siim_segmentation"


def run_task(argv):
    """The benchmark as its script runs it: parse the flags, then run."""
    return benchmark.run(TASK, parse_dense_args(TASK, argv))


def run_recording_splits(argv):
    """run_task(argv), recording each encoded split and whether best_head.pt existed then."""
    encoded = []
    original = benchmark.extract_split
    output_dir = argv[argv.index("--output-dir") + 1]

    def recording(model, name, *args, **kwargs):
        encoded.append((name, os.path.isfile(os.path.join(output_dir, "best_head.pt"))))
        return original(model, name, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(benchmark, "extract_split", recording)
        metrics = run_task(argv)
    return metrics, encoded


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("siim_demo")
    runs = {}
    for name, extra in (("trained", []), ("untrained", ["--epochs", "0"]), ("zero_shot", ["--zero-shot"])):
        out = str(root / name)
        runs[name] = (out, *run_recording_splits(["--demo", "--output-dir", out, "--no-progress"] + extra))
    return runs


def read_metrics(out):
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------- pieces


def test_decoder_upsamples_progressively_to_the_input_size():
    decoder = ProgressiveUpsamplingDecoder(512, 14, 224, channels=256)
    convs = [m for m in decoder.layers if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [256, 128, 64, 32, 32, 1]  # 1x1, four x2 stages, 1x1 logit
    assert sum(isinstance(m, torch.nn.Upsample) for m in decoder.layers) == 4
    assert decoder(torch.randn(2, 512, 14, 14)).shape == (2, 224, 224)
    assert ProgressiveUpsamplingDecoder(64, 4, 64, channels=64)(torch.randn(3, 64, 4, 4)).shape == (3, 64, 64)


def test_focal_dice_loss_rewards_right_masks_and_empty_on_empty():
    target = torch.zeros(2, 16, 16, dtype=torch.bool)
    target[0, 4:12, 4:12] = True  # image 1 has no foreground
    right = torch.where(target, 20.0, -20.0)
    assert focal_dice_loss(right, target) < 1e-3
    wrong = -right
    assert focal_dice_loss(wrong, target) > 1.0
    empty_on_empty = focal_dice_loss(torch.full((1, 16, 16), -20.0), target[1:])
    assert empty_on_empty < 1e-3


# --------------------------------------------------------------------------- trained run


def test_trained_decoder_learns_and_untrained_does_not(demo):
    trained, untrained = demo["trained"][1], demo["untrained"][1]
    assert trained["dice"] >= 0.6 and trained["dice_positive"] >= 0.5
    assert untrained["dice"] <= 0.4 and untrained["dice_positive"] <= 0.1
    assert trained["dice"] - untrained["dice"] >= 0.3


def test_trained_run_writes_every_output(demo):
    out, metrics, _ = demo["trained"]
    for name in ("metrics.json", "predictions.csv", "mask_overlays.png", "config.yaml", "train_ids.csv",
                 "best_head.pt", "training_curves.png", "training_log.csv"):
        assert os.path.isfile(os.path.join(out, name)), name
    document = read_metrics(out)
    assert document["mode"] == "trained" and document["settings"]["features"] == "last-layer"
    for key in ("dice", "dice_positive", "miou"):
        low, high = document["metrics"][f"{key}_ci95"]
        assert 0 <= low <= document["metrics"][key] <= high <= 1
    for key in ("encode_images_per_second", "train_images_per_second", "inference_images_per_second"):
        assert document["metrics"][key] > 0
    assert document["settings"]["token_grid"] == [4, 4] and document["settings"]["input_size"] == 64
    predictions = pd.read_csv(os.path.join(out, "predictions.csv"))
    assert len(predictions) == metrics["n"] == 32
    assert predictions["dice"].mean() == pytest.approx(metrics["dice"])
    positives = predictions["has_pneumothorax"] == 1
    assert predictions.loc[positives, "dice"].mean() == pytest.approx(metrics["dice_positive"])
    # training_curves.png has a third panel with the validation score early stopping used (10 x 4 in -> 15 x 4 in).
    with Image.open(os.path.join(out, "training_curves.png")) as curves:
        assert curves.width > 3 * curves.height


def test_test_split_is_encoded_once_after_the_best_head_is_saved(demo):
    out, _, encoded = demo["trained"]
    assert encoded == [("train", False), ("val", False), ("test", True)]
    log = pd.read_csv(os.path.join(out, "training_log.csv"))
    settings = read_metrics(out)["settings"]
    assert settings["best_val_score"] == pytest.approx(log["val_score"].max())
    assert settings["best_epoch"] == int(log.loc[log["val_score"].idxmax(), "epoch"]) >= 1
    assert torch.load(os.path.join(out, "best_head.pt"), weights_only=True)["best_epoch"] == settings["best_epoch"]


def test_balanced_training_set_is_saved(demo):
    out = demo["trained"][0]
    ids = pd.read_csv(os.path.join(out, "train_ids.csv"))
    train = pd.read_csv(os.path.join(out, "demo_data", "siim_segmentation_train.csv"))
    n_positive = int(train["has_pneumothorax"].sum())
    expected_negatives = min(n_positive, len(train) - n_positive)
    assert ids["has_pneumothorax"].sum() == n_positive
    assert (ids["has_pneumothorax"] == 0).sum() == expected_negatives


def test_train_fraction_is_a_seeded_stratified_subset(tmp_path):
    argv = ["--demo", "--train-set", "full", "--train-fraction", "0.25", "--epochs", "0", "--bootstrap", "0",
            "--no-progress"]
    for name in ("a", "b"):
        run_task(argv + ["--output-dir", str(tmp_path / name)])
    first, second = (pd.read_csv(tmp_path / name / "train_ids.csv") for name in ("a", "b"))
    assert first.equals(second)
    train = pd.read_csv(tmp_path / "a" / "demo_data" / "siim_segmentation_train.csv")
    for label in (0, 1):
        assert (first["has_pneumothorax"] == label).sum() == round(0.25 * (train["has_pneumothorax"] == label).sum())
    assert read_metrics(str(tmp_path / "a"))["settings"]["n_train_used"] == len(first)


# --------------------------------------------------------------------------- zero-shot run


def test_zero_shot_runs_with_a_validation_threshold(demo):
    out, metrics, encoded = demo["zero_shot"]
    assert [name for name, _ in encoded] == ["val", "test"]
    for key in ("dice", "dice_positive", "miou"):
        assert 0 <= metrics[key] <= 1 and len(metrics[f"{key}_ci95"]) == 2
    document = read_metrics(out)
    assert document["mode"] == "zero-shot" and document["settings"]["features"] == "hgnn"
    search = pd.read_csv(os.path.join(out, "threshold_search.csv"))
    best = search.loc[search["val_dice"].idxmax(), "threshold"]
    assert document["settings"]["threshold"] == pytest.approx(best)
    assert document["settings"]["templates"] == ["a chest X-ray image of {}.", "Findings suggesting {}."]
    assert not os.path.exists(os.path.join(out, "best_head.pt"))


def _randomised_checkpoint(model_name, path, gnn):
    """A released-format checkpoint with non-zero LoRA (and adapter) weights."""
    model = build_model(model_name, AceLoRAConfig(apply_gnn_encoders=gnn))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and name != "logit_scale":
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    save_released_checkpoint(model, path)
    return path


def test_ace_lora_plain_lora_and_no_checkpoint_run_with_the_same_command(tiny_model_name, tmp_path):
    """Zero-shot, so no training CSV is needed."""
    csvs = write_siim_demo(str(tmp_path / "data"), split_sizes=(4, 8, 8), seed=2)
    os.remove(csvs["train"])
    checkpoints = {"none": None,
                   "plain": _randomised_checkpoint(tiny_model_name, str(tmp_path / "plain.pt"), "none"),
                   "ace": _randomised_checkpoint(tiny_model_name, str(tmp_path / "ace.pt"), "both")}
    thresholds = {}
    for name, checkpoint in checkpoints.items():
        out = tmp_path / name
        argv = ["--model", tiny_model_name, "--val-csv", csvs["val"], "--test-csv", csvs["test"], "--zero-shot",
                "--device", "cpu", "--num-workers", "0", "--bootstrap", "0", "--no-progress", "--output-dir", str(out)]
        run_task(argv + ([] if checkpoint is None else ["--checkpoint", checkpoint]))
        assert read_metrics(str(out))["settings"]["checkpoint"] == checkpoint
        thresholds[name] = pd.read_csv(out / "threshold_search.csv")["threshold"].to_numpy()
    assert not np.allclose(thresholds["none"][:3], thresholds["plain"][:3])  # LoRA changes the tokens
    assert not np.allclose(thresholds["plain"][:3], thresholds["ace"][:3])  # so does the hypergraph


# --------------------------------------------------------------------------- command line


def test_bad_input_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        segmentation_main(["--split-dir", str(tmp_path), "--output-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'siim_segmentation_train.csv'}: file not found"
    assert not (tmp_path / "out").exists()  # a run that fails leaves no output folder


def test_damaged_image_stops_the_run_before_the_model_loads_or_a_head_trains(tmp_path, capsys):
    csvs = write_siim_demo(str(tmp_path / "data"), split_sizes=(4, 2, 2), size=32)
    damaged = os.path.join(tmp_path / "data", pd.read_csv(csvs["test"])["image_path"].iloc[1])
    with open(damaged, "r+b") as f:  # a truncated PNG: the header is fine, the data is not
        f.truncate(60)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:  # the model cannot load: the check must come first
        segmentation_main(["--split-dir", str(tmp_path / "data"), "--model", f"local-dir:{tmp_path / 'none'}",
                           "--output-dir", str(out), "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {csvs['test']}: 1 of 4 files cannot be decoded, first: {damaged} (")
    assert "\n" not in err and not (out / "best_head.pt").exists()


def test_output_dir_that_is_a_file_is_a_one_line_error_before_anything_runs(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(SystemExit) as exit_info:
        segmentation_main(["--demo", "--output-dir", str(tmp_path / "taken")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: --output-dir {tmp_path / 'taken'}: exists and is not a folder"


def test_help_documents_every_flag():
    parser = dense_parser(TASK)
    flags = {option for action in parser._actions for option in action.option_strings}
    for flag in ("--config", "--model", "--checkpoint", "--features", "--train-fraction", "--train-set", "--epochs",
                 "--lr", "--batch-size", "--num-workers", "--device", "--precision", "--patience", "--seed",
                 "--output-dir", "--zero-shot", "--demo", "--split-dir", "--train-csv", "--val-csv", "--test-csv",
                 "--data-root", "--feature-cache", "--bootstrap"):
        assert flag in flags, flag
    assert all(action.help for action in parser._actions)
