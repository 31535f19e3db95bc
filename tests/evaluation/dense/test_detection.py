"""RSNA detection benchmark: feature pyramid, FCOS on token grids, box scaling, zero-shot regions, demo runs."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from ace_lora.errors import UserInputError
from ace_lora.evaluation.dense import benchmark
from ace_lora.evaluation.dense.definitions import DENSE_TASKS
from ace_lora.evaluation.dense.detection import SimpleFeaturePyramid, TokenGridFCOS, input_boxes, scale_boxes
from ace_lora.params.dense import parse_dense_args
from zero_shot_eval.detection_rsna import main as detection_main

TASK = "rsna_detection"


def run_task(argv):
    """The benchmark as its script runs it: parse the flags, then run."""
    return benchmark.run(TASK, parse_dense_args(TASK, argv))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsna_demo")
    runs = {}
    for name, extra in (("trained", []), ("untrained", ["--epochs", "0"]), ("zero_shot", ["--zero-shot"])):
        out = str(root / name)
        runs[name] = (out, run_task(["--demo", "--output-dir", out, "--no-progress"] + extra))
    return runs


def read_metrics(out):
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------- pyramid and detector


@pytest.mark.parametrize("grid, sizes", [(14, [56, 28, 14, 7]), (4, [16, 8, 4, 2])])
def test_simple_feature_pyramid_levels(grid, sizes):
    pyramid = SimpleFeaturePyramid(64, out_channels=32)
    levels = pyramid(torch.randn(2, 64, grid, grid))
    assert list(levels) == ["p2", "p3", "p4", "p5"]
    assert [tuple(v.shape) for v in levels.values()] == [(2, 32, s, s) for s in sizes]
    assert pyramid.out_channels == 32


def test_detector_levels_have_vitdet_strides_and_predict_inside_the_image():
    detector = TokenGridFCOS(64, 14, 224, channels=32, head_convs=1).eval()
    assert [s[0] for s in detector.anchor_generator.sizes] == [4, 8, 16, 32]
    with torch.no_grad():
        detections = detector(torch.randn(3, 64, 14, 14))
    assert len(detections) == 3
    boxes = torch.cat([d["boxes"] for d in detections])
    assert len(boxes) and boxes.min() >= 0 and boxes.max() <= 224
    with pytest.raises(UserInputError, match="multiple of 32"):
        TokenGridFCOS(64, 14, 224, channels=48)


def test_detector_trains_on_grids_with_and_without_boxes():
    detector = TokenGridFCOS(64, 4, 64, channels=32, head_convs=1).train()
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 30.0, 40.0]]), "labels": torch.zeros(1, dtype=torch.long)},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.long)}]
    losses = detector(torch.randn(2, 64, 4, 4), targets)
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())


# --------------------------------------------------------------------------- box scaling


def test_box_scaling_round_trip_and_clipping():
    boxes = np.array([[100.0, 200.0, 500.0, 900.0], [0.0, 0.0, 1024.0, 1024.0]])
    small = scale_boxes(boxes, (1024, 1024), (224, 224))
    assert small[1].tolist() == [0, 0, 224, 224]
    assert np.allclose(scale_boxes(small, (224, 224), (1024, 1024)), boxes)
    wide = scale_boxes([[30, 20, 60, 40]], (300, 200), (64, 64))  # x by 64/300, y by 64/200
    assert np.allclose(wide, [[6.4, 6.4, 12.8, 12.8]])
    clipped, dropped = input_boxes([[-10, 0, 512, 512], [1100, 0, 1200, 100]], (1024, 1024), 64)
    assert clipped.tolist() == [[0, 0, 32, 32]] and dropped == 1


# --------------------------------------------------------------------------- demo runs


@pytest.mark.slow
def test_trained_detector_learns_and_untrained_does_not(demo):
    trained, untrained = demo["trained"][1], demo["untrained"][1]
    assert trained["map50"] >= 0.3 and trained["map_40_75"] >= 0.3
    assert untrained["map50"] <= 0.05
    assert trained["map50"] - untrained["map50"] >= 0.3


@pytest.mark.slow
def test_trained_run_writes_every_output(demo):
    out, metrics = demo["trained"]
    for name in ("metrics.json", "predictions.csv", "box_overlays.png", "config.yaml", "train_ids.csv",
                 "best_head.pt", "training_curves.png", "training_log.csv"):
        assert os.path.isfile(os.path.join(out, name)), name
    document = read_metrics(out)
    for key in ("map_40_75", "map_coco", "map50"):
        low, high = document["metrics"][f"{key}_ci95"]
        assert 0 <= low <= document["metrics"][key] <= high <= 1
    for key in ("encode_images_per_second", "train_images_per_second", "inference_images_per_second"):
        assert document["metrics"][key] > 0
    predictions = pd.read_csv(os.path.join(out, "predictions.csv"))
    test = pd.read_csv(os.path.join(out, "demo_data", "rsna_detection_test.csv"))
    assert predictions["patientId"].tolist() == test["patientId"].tolist()
    assert predictions["n_true_boxes"].tolist() == [len(json.loads(b)) for b in test["boxes"]]
    boxes = np.array([b for row in predictions["predicted_boxes"] for b in json.loads(row)])
    assert boxes.min() >= 0 and boxes.max() <= 160  # original pixels (the demo images are 160 x 160)
    assert predictions.loc[predictions["n_true_boxes"] > 0, "best_iou"].mean() > 0.5
    ids = pd.read_csv(os.path.join(out, "train_ids.csv"))
    assert len(ids) == 96 and (ids["n_boxes"] == 0).any()  # images without boxes are trained on too


def test_balanced_fraction_of_the_training_set(tmp_path):
    out = tmp_path / "run"
    run_task(["--demo", "--train-set", "balanced", "--train-fraction", "0.5", "--epochs", "0",
                         "--bootstrap", "0", "--no-progress", "--output-dir", str(out)])
    ids = pd.read_csv(out / "train_ids.csv")
    train = pd.read_csv(out / "demo_data" / "rsna_detection_train.csv")
    n_positive = sum(len(json.loads(b)) > 0 for b in train["boxes"])
    n_negative = len(train) - n_positive
    assert 0 < n_negative < n_positive  # the balanced set keeps every negative
    assert (ids["has_boxes"] == 1).sum() == round(0.5 * n_positive)
    assert (ids["has_boxes"] == 0).sum() == round(0.5 * n_negative)
    assert (ids["has_boxes"] == (ids["n_boxes"] > 0)).all()


@pytest.mark.slow
def test_zero_shot_detection_runs(demo):
    out, metrics = demo["zero_shot"]
    for key in ("map_40_75", "map_coco", "map50"):
        assert 0 <= metrics[key] <= 1 and len(metrics[f"{key}_ci95"]) == 2
    document = read_metrics(out)
    assert document["mode"] == "zero-shot" and document["settings"]["class_name"] == "pneumonia"
    search = pd.read_csv(os.path.join(out, "threshold_search.csv"))
    assert len(search) >= 5 and search["val_map_40_75"].between(0, 1).all()


def test_validation_without_boxes_is_a_user_error(tmp_path, capsys):
    benchmark.prepare_dense_demo(DENSE_TASKS[TASK], parse_dense_args(TASK, ["--demo", "--output-dir", str(tmp_path)]))
    val = tmp_path / "demo_data" / "rsna_detection_val.csv"
    table = pd.read_csv(val)
    table["boxes"] = "[]"
    table.to_csv(val, index=False)
    with pytest.raises(SystemExit):
        detection_main(["--split-dir", str(tmp_path / "demo_data"), "--model", f"local-dir:{tmp_path / 'demo_model'}",
                        "--device", "cpu", "--output-dir", str(tmp_path / "out"), "--no-progress"])
    assert capsys.readouterr().err.strip() == "error: the val split has no boxes: mAP is undefined there"
