import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torchmetrics.detection import MeanAveragePrecision

from ace_lora.evaluation.metrics import (
    bootstrap_ci,
    classification_metrics,
    detection_metrics,
    dice_per_image,
    iou_per_image,
    multilabel_metrics,
    resampled_binary_auroc,
    segmentation_metrics,
)

# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_matches_normal_theory_for_a_mean():
    x = np.random.default_rng(1).normal(size=2000)
    low, high = bootstrap_ci(np.mean, x, n_resamples=1000, seed=0)
    assert low < x.mean() < high
    assert high - low == pytest.approx(2 * 1.96 / math.sqrt(2000), rel=0.15)


def test_bootstrap_ci_is_deterministic_and_narrower_with_more_samples():
    rng = np.random.default_rng(2)
    small, large = rng.normal(size=50), rng.normal(size=5000)
    assert bootstrap_ci(np.mean, small, seed=3) == bootstrap_ci(np.mean, small, seed=3)
    assert bootstrap_ci(np.mean, small, seed=3) != bootstrap_ci(np.mean, small, seed=4)
    small_low, small_high = bootstrap_ci(np.mean, small)
    large_low, large_high = bootstrap_ci(np.mean, large)
    assert large_high - large_low < (small_high - small_low) / 5


def test_bootstrap_ci_resamples_rows_of_all_arrays_together():
    x = np.arange(30.0)
    # x - y is 0 on every row, so any resample that keeps rows aligned gives exactly 0.
    assert bootstrap_ci(lambda a, b: float(np.mean(a - b)), x, x.copy()) == (0.0, 0.0)


def test_bootstrap_ci_skips_undefined_resamples():
    x = np.arange(10)
    # Undefined (nan) when the resample misses the 9; about 65% of resamples contain it.
    low, high = bootstrap_ci(lambda a: float(a.max()) if a.max() == 9 else math.nan, x)
    assert (low, high) == (9.0, 9.0)


def test_bootstrap_ci_is_nan_when_most_resamples_are_undefined():
    x = np.arange(10)
    # Defined only when the resample misses the 9: about 35% of resamples.
    low, high = bootstrap_ci(lambda a: float(a.max()) if a.max() < 9 else math.nan, x)
    assert math.isnan(low) and math.isnan(high)


# --------------------------------------------------------------------------- classification


def test_binary_classification_hand_case():
    labels = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    # Positive/negative pairs ranked correctly: (0.35>0.1), (0.8>0.1), (0.8>0.4); not (0.35<0.4) -> 3/4.
    # Argmax predictions 0, 0, 0, 1 -> 3 of 4 correct.
    result = classification_metrics(labels, np.stack([1 - p1, p1], axis=1), ["neg", "pos"],
                                    n_bootstrap=200)
    assert result["auroc"] == pytest.approx(0.75)
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["n"] == 4
    assert result["class_counts"] == {"neg": 2, "pos": 2}
    assert "per_class_auroc" not in result
    low, high = result["auroc_ci95"]
    assert 0.0 <= low <= 0.75 <= high <= 1.0
    # The released scripts' AUROC: both columns of the (N, 2) table against one-hot labels, flattened.
    # Positives 0.9, 0.6, 0.35, 0.8 vs negatives 0.1, 0.4, 0.65, 0.2: 4 + 3 + 2 + 4 = 13 of 16 pairs.
    assert result["auroc_released"] == pytest.approx(13 / 16)


def test_released_binary_auroc_is_torchmetrics_on_the_flattened_one_hot_table():
    from torchmetrics.classification import BinaryAUROC

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=200)
    p1 = np.clip(0.3 * labels + rng.random(200) * 0.7, 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)
    one_hot = torch.nn.functional.one_hot(torch.as_tensor(labels), 2)
    expected = BinaryAUROC()(torch.as_tensor(probs).flatten(), one_hot.flatten())
    result = classification_metrics(labels, probs, ["neg", "pos"], n_bootstrap=0)
    assert result["auroc_released"] == pytest.approx(float(expected), abs=1e-6)
    assert result["auroc_released"] == pytest.approx(roc_auc_score(one_hot.numpy().ravel(), probs.ravel()))


def test_multiclass_auroc_is_sklearn_macro_ovr():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=300)
    logits = rng.normal(size=(300, 4)) + 1.5 * np.eye(4)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    names = ["a", "b", "c", "d"]
    result = classification_metrics(labels, probs, names, n_bootstrap=200, seed=5)

    assert result["auroc"] == pytest.approx(
        roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    for c, name in enumerate(names):
        assert result["per_class_auroc"][name] == pytest.approx(roc_auc_score(labels == c, probs[:, c]))
    assert result["accuracy"] == pytest.approx(np.mean(probs.argmax(axis=1) == labels))
    for key in ("accuracy", "auroc"):
        low, high = result[f"{key}_ci95"]
        assert low < result[key] < high
    assert result == classification_metrics(labels, probs, names, n_bootstrap=200, seed=5)


def test_resampled_auroc_is_roc_auc_score_on_each_resample_ties_and_one_class_resamples_included():
    rng = np.random.default_rng(1)
    is_positive = rng.random(12) < 0.25
    scores = rng.integers(0, 4, size=12) / 4  # many ties
    indices = rng.integers(0, 12, size=(300, 12))
    values = resampled_binary_auroc(is_positive, scores, indices)
    one_class = [len(set(is_positive[idx])) == 1 for idx in indices]
    assert 0 < sum(one_class) < 300
    for idx, value, undefined in zip(indices, values, one_class):
        assert math.isnan(value) if undefined else value == pytest.approx(
            roc_auc_score(is_positive[idx], scores[idx]), abs=1e-12)


def _per_resample_interval(metric, n, n_bootstrap, seed):
    """The interval as computed before the AUROCs were vectorised: sklearn on every resample."""
    values = [metric(idx) for idx in np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))]
    values = np.array([v for v in values if np.isfinite(v)])
    return list(np.percentile(values, [2.5, 97.5]))


def test_auroc_intervals_are_those_of_sklearn_on_every_resample():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, size=40)
    logits = rng.normal(size=(40, 3)) + np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

    def ovr(idx):
        y, p = labels[idx], probs[idx]
        if len(set(y)) < 3:
            return math.nan
        return roc_auc_score(y, p, multi_class="ovr", average="macro")
    result = classification_metrics(labels, probs, ["a", "b", "c"], n_bootstrap=300, seed=4)
    assert result["auroc_ci95"] == pytest.approx(_per_resample_interval(ovr, 40, 300, 4), abs=1e-12)

    binary = (labels == 1).astype(int)
    result = classification_metrics(binary, probs[:, :2], ["no", "yes"], n_bootstrap=300, seed=4)
    expected = _per_resample_interval(
        lambda idx: roc_auc_score(binary[idx], probs[idx, 1]) if len(set(binary[idx])) == 2 else math.nan, 40, 300, 4)
    assert result["auroc_ci95"] == pytest.approx(expected, abs=1e-12)

    targets = rng.random((40, 3)) < [0.5, 0.1, 0.0]  # the third class has no positive: left out

    def macro(idx):
        t = targets[idx]
        if not all(0 < t[:, c].sum() < len(idx) for c in (0, 1)):
            return math.nan
        return np.mean([roc_auc_score(t[:, c], probs[idx, c]) for c in (0, 1)])
    result = multilabel_metrics(targets, probs, ["a", "b", "c"], n_bootstrap=300, seed=4)
    assert result["auroc_ci95"] == pytest.approx(_per_resample_interval(macro, 40, 300, 4), abs=1e-12)


def test_multiclass_absent_class_is_none_and_left_out_of_the_macro():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.6, 0.3, 0.1], [0.3, 0.2, 0.5], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1]])
    result = classification_metrics(labels, probs, ["a", "b", "c"], n_bootstrap=50)
    # Class a: positives score 0.6, 0.3 vs negatives 0.2, 0.5 -> 3 of 4 pairs. Class b: 0.7, 0.4 vs
    # 0.3, 0.2 -> 4 of 4.
    assert result["per_class_auroc"] == {"a": 0.75, "b": 1.0, "c": None}
    assert result["auroc"] == pytest.approx(0.875)
    assert result["class_counts"] == {"a": 2, "b": 2, "c": 0}


def test_multilabel_skips_classes_without_both_labels():
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.5], [0.2, 0.1, 0.3], [0.4, 0.3, 0.2]])
    result = multilabel_metrics(targets, scores, ["x", "y", "z"], n_bootstrap=100)
    # x: positives 0.9, 0.2 vs negatives 0.3, 0.4 -> 2 of 4. y: 0.8, 0.1 vs 0.2, 0.3 -> 2 of 4.
    assert result["per_class_auroc"] == {"x": 0.5, "y": 0.5, "z": None}
    assert result["auroc_skipped_classes"] == ["z"]
    assert result["auroc"] == pytest.approx(0.5)
    assert result["n"] == 4


# --------------------------------------------------------------------------- segmentation


def _rect(h0, h1, w0, w1, size=8):
    mask = np.zeros((size, size), dtype=bool)
    mask[h0:h1, w0:w1] = True
    return mask


EMPTY = _rect(0, 0, 0, 0)
LEFT = _rect(0, 2, 0, 4)      # 2x4 = 8 pixels
SHIFTED = _rect(0, 2, 2, 6)   # 2x4, shares 4 pixels with LEFT
FAR = _rect(5, 7, 4, 8)       # 2x4, disjoint from LEFT


def test_dice_and_iou_hand_cases():
    pred = np.stack([LEFT, LEFT, LEFT, EMPTY, EMPTY, LEFT])
    target = np.stack([LEFT, SHIFTED, FAR, EMPTY, LEFT, EMPTY])
    # perfect, half overlap (2*4/16, 4/12), disjoint, empty/empty, missed, false alarm
    np.testing.assert_allclose(dice_per_image(pred, target), [1, 0.5, 0, 1, 0, 0])
    np.testing.assert_allclose(iou_per_image(pred, target), [1, 1 / 3, 0, 1, 0, 0])


def test_dice_accepts_tensors_and_integer_masks_but_not_probabilities():
    pred = torch.from_numpy(np.stack([LEFT])).int()
    target = torch.from_numpy(np.stack([SHIFTED]))
    np.testing.assert_allclose(dice_per_image(pred, target), [0.5])
    with pytest.raises(ValueError, match="binary"):
        dice_per_image(np.stack([LEFT]) * 0.7, np.stack([LEFT]))


def test_segmentation_metrics_dice_positive_ignores_empty_targets():
    pred = np.stack([LEFT, LEFT, EMPTY, LEFT])
    target = np.stack([LEFT, SHIFTED, EMPTY, EMPTY])
    result = segmentation_metrics(pred, target, n_bootstrap=300, seed=0)
    # Per-image Dice 1, 0.5, 1, 0 and IoU 1, 1/3, 1, 0; positives are the first two.
    assert result["dice"] == pytest.approx(2.5 / 4)
    assert result["dice_positive"] == pytest.approx(0.75)
    assert result["miou"] == pytest.approx((1 + 1 / 3 + 1) / 4)
    assert (result["n"], result["n_positive"]) == (4, 2)
    for key in ("dice", "dice_positive", "miou"):
        low, high = result[f"{key}_ci95"]
        assert 0 <= low <= result[key] <= high <= 1
    # A resample's Dice over positives is a mean of 1s and 0.5s.
    assert 0.5 <= result["dice_positive_ci95"][0]
    assert result == segmentation_metrics(pred, target, n_bootstrap=300, seed=0)


# --------------------------------------------------------------------------- detection


def _pred(boxes, scores):
    return {"boxes": np.array(boxes, dtype=float).reshape(-1, 4), "scores": np.array(scores, dtype=float)}


def _target(boxes):
    return {"boxes": np.array(boxes, dtype=float).reshape(-1, 4)}


BOX = [0, 0, 10, 10]
BOX_IOU_058 = [0, 0, 10, 5.8]  # inside BOX, IoU 58/100


def _maps(result):
    return result["map_40_75"], result["map_coco"], result["map50"]


def test_detection_perfect_predictions():
    preds = [_pred([BOX], [0.9]), _pred([[20, 20, 40, 50]], [0.8])]
    targets = [_target([BOX]), _target([[20, 20, 40, 50]])]
    result = detection_metrics(preds, targets, n_bootstrap=20)
    assert _maps(result) == pytest.approx((1.0, 1.0, 1.0))
    assert result["map_40_75_ci95"] == [1.0, 1.0]
    assert (result["n"], result["n_boxes"]) == (2, 2)


def test_detection_iou_058_hits_thresholds_040_to_055_only():
    result = detection_metrics([_pred([BOX_IOU_058], [0.9])], [_target([BOX])], n_bootstrap=0)
    # 0.40, 0.45, 0.50, 0.55 of the 8 thresholds 0.40..0.75; 0.50, 0.55 of the 10 COCO thresholds.
    assert _maps(result) == pytest.approx((4 / 8, 2 / 10, 1.0))
    assert math.isnan(result["map50_ci95"][0])  # no resamples asked for


def test_detection_no_predictions_scores_zero():
    result = detection_metrics([_pred([], [])], [_target([BOX])], n_bootstrap=10)
    assert _maps(result) == (0.0, 0.0, 0.0)


def test_detection_image_with_gt_and_no_predictions_counts_as_missed():
    preds = [_pred([BOX], [0.9]), _pred([], [])]
    targets = [_target([BOX]), _target([BOX])]
    # Recall stops at 1/2 with precision 1: 51 of COCO's 101 recall points (0.00..0.50).
    result = detection_metrics(preds, targets, n_bootstrap=0)
    assert _maps(result) == pytest.approx((51 / 101,) * 3)


@pytest.mark.parametrize("fp_score, expected", [(0.95, 0.5), (0.5, 1.0)])
def test_detection_prediction_on_image_without_gt_is_a_false_positive(fp_score, expected):
    preds = [_pred([BOX], [0.9]), _pred([BOX], [fp_score])]
    targets = [_target([BOX]), _target([])]
    # Ranked above the true positive, the false positive halves precision at every recall; ranked
    # below it, it comes after full recall and costs nothing.
    result = detection_metrics(preds, targets, n_bootstrap=0)
    assert _maps(result) == pytest.approx((expected,) * 3)


def test_detection_without_any_ground_truth_is_nan():
    result = detection_metrics([_pred([BOX], [0.9])], [_target([])], n_bootstrap=5)
    assert all(math.isnan(v) for v in _maps(result))
    assert all(math.isnan(v) for v in result["map_coco_ci95"])


def _random_detections(n_images, seed):
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(n_images):
        corners = rng.uniform(0, 100, size=(rng.integers(0, 3), 2))
        gt = np.concatenate([corners, corners + rng.uniform(10, 40, size=corners.shape)], axis=1)
        targets.append(_target(gt))
        noisy = gt + rng.normal(scale=4, size=gt.shape)
        corners = rng.uniform(0, 100, size=(rng.integers(0, 2), 2))
        false = np.concatenate([corners, corners + 20], axis=1)
        boxes = np.concatenate([noisy, false])
        preds.append(_pred(boxes, rng.uniform(size=len(boxes))))
    return preds, targets


def _torchmetrics_map(preds, targets, **kwargs):
    metric = MeanAveragePrecision(box_format="xyxy", backend="pycocotools", **kwargs)
    metric.update(
        [{"boxes": torch.tensor(p["boxes"], dtype=torch.float32),
          "scores": torch.tensor(p["scores"], dtype=torch.float32),
          "labels": torch.zeros(len(p["boxes"]), dtype=torch.long)} for p in preds],
        [{"boxes": torch.tensor(t["boxes"], dtype=torch.float32),
          "labels": torch.zeros(len(t["boxes"]), dtype=torch.long)} for t in targets])
    return metric.compute()


def test_detection_maps_match_torchmetrics_run_per_threshold_set():
    preds, targets = _random_detections(40, seed=0)
    result = detection_metrics(preds, targets, n_bootstrap=30, seed=0)
    coco = _torchmetrics_map(preds, targets)
    low_iou = _torchmetrics_map(preds, targets, iou_thresholds=[0.40, 0.45, 0.50, 0.55, 0.60, 0.65,
                                                                0.70, 0.75])
    assert result["map_coco"] == pytest.approx(coco["map"].item(), abs=1e-6)
    assert result["map50"] == pytest.approx(coco["map_50"].item(), abs=1e-6)
    assert result["map_40_75"] == pytest.approx(low_iou["map"].item(), abs=1e-6)
    assert 0 < result["map_coco"] < result["map_40_75"] < 1
    for key in ("map_40_75", "map_coco", "map50"):
        low, high = result[f"{key}_ci95"]
        assert low < result[key] < high
    assert result == detection_metrics(preds, targets, n_bootstrap=30, seed=0)
