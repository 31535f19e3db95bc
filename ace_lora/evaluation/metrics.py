"""Evaluation metrics with percentile-bootstrap 95% confidence intervals.

Classification (accuracy, AUROC), multi-label AUROC, segmentation (Dice, IoU) and detection (COCO-style
mAP). Every `*_metrics` function returns a JSON-serialisable dict of plain floats; a metric that is
undefined on the data (e.g. AUROC with one class) is `nan`, never an exception.

Metric callables passed to `bootstrap_ci` follow the same convention: they return `nan` on a resample
where the metric is undefined, and that resample is skipped.
"""
import math

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

# Below this fraction of defined resamples the interval is reported as (nan, nan).
MIN_DEFINED_RESAMPLES = 0.5
# Resamples are ranked in chunks of at most this many elements (a few tens of MB of float64).
_RESAMPLE_CHUNK_ELEMENTS = 2_000_000

# AP is computed once at every threshold in 0.40:0.05:0.95 and averaged over the subsets we report.
# Rounded so 0.5 and 0.75 are exact (the COCO evaluation looks thresholds up by equality).
DETECTION_IOU_THRESHOLDS = [round(0.40 + 0.05 * i, 2) for i in range(12)]
MAP_40_75_THRESHOLDS = [t for t in DETECTION_IOU_THRESHOLDS if t <= 0.75]
MAP_COCO_THRESHOLDS = [t for t in DETECTION_IOU_THRESHOLDS if t >= 0.50]
# faster-coco-eval reimplements pycocotools' evaluation in C++ with the same numbers (tests compare the two
# on random detections) about 4 times faster, which the bootstrap's one COCO evaluation per resample needs.
COCO_BACKEND = "faster_coco_eval"


def bootstrap_ci(metric_fn, *arrays, n_resamples=1000, seed=0, alpha=0.05):
    """Percentile bootstrap interval of `metric_fn(*arrays)`, resampling rows of all arrays together.

    Returns `(low, high)` at level `1 - alpha`. Resamples where `metric_fn` returns a non-finite value
    are skipped; if fewer than `MIN_DEFINED_RESAMPLES` of them are defined, returns `(nan, nan)`.
    """
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"bootstrap_ci: arrays have different lengths {[len(a) for a in arrays]}")
    values = [metric_fn(*(a[idx] for a in arrays)) for idx in _resample_indices(n, n_resamples, seed)]
    return _percentile_interval(values, n_resamples, alpha)


def _resample_indices(n, n_resamples, seed):
    """(n_resamples, n) row indices drawn with replacement; empty when n == 0."""
    if n == 0:
        return np.zeros((0, 0), dtype=int)
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def _percentile_interval(values, n_resamples, alpha):
    """Percentile interval of the finite `values`, or (nan, nan) if too few resamples were defined."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if n_resamples <= 0 or len(values) < MIN_DEFINED_RESAMPLES * n_resamples:
        return math.nan, math.nan
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def _ci_list(ci):
    return [ci[0], ci[1]]


def _none_if_nan(x):
    return None if math.isnan(x) else x


# --------------------------------------------------------------------------- classification


def binary_auroc(is_positive, scores):
    """AUROC of `scores` for the boolean `is_positive`; nan if only one class is present."""
    is_positive = np.asarray(is_positive, dtype=bool)
    if is_positive.all() or not is_positive.any():
        return math.nan
    return float(roc_auc_score(is_positive, scores))


def resampled_binary_auroc(is_positive, scores, indices):
    """(R,) `binary_auroc` of every resample, the rows of `indices` (R, n): the Mann-Whitney statistic on
    midranks, which is roc_auc_score's value (a tie counts one half), for all resamples at once. Calling
    roc_auc_score per resample cost 18 s for the 1000-resample interval of a 5-class AUROC on 1000 images."""
    is_positive, scores = np.asarray(is_positive, dtype=bool), np.asarray(scores, dtype=float)
    values = np.empty(len(indices))
    rows_per_chunk = max(1, _RESAMPLE_CHUNK_ELEMENTS // max(indices.shape[1], 1))
    for start in range(0, len(indices), rows_per_chunk):
        chunk = indices[start:start + rows_per_chunk]
        positive = is_positive[chunk]  # (r, n)
        ranks = rankdata(scores[chunk], axis=1)  # (r, n) midranks
        n_positive = positive.sum(axis=1)
        n_negative = positive.shape[1] - n_positive
        u = (ranks * positive).sum(axis=1) - n_positive * (n_positive + 1) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            values[start:start + rows_per_chunk] = np.where((n_positive > 0) & (n_negative > 0),
                                                            u / (n_positive * n_negative), math.nan)
    return values


def released_binary_auroc(labels, probs):
    """AUROC as the released RSNA/SIIM scripts computed it, for comparison with the paper's numbers:
    one binary AUROC over all N x 2 entries of the softmax probabilities (N, 2) against the one-hot
    labels (torchmetrics BinaryAUROC on the flattened arrays). Both columns enter, so each image counts
    twice: its p(class 1) against 1/0 and its p(class 0) = 1 - p(class 1) against 0/1."""
    labels, probs = np.asarray(labels).astype(int), np.asarray(probs, dtype=float)
    one_hot = np.eye(probs.shape[1], dtype=bool)[labels]  # (N, 2)
    return binary_auroc(one_hot.ravel(), probs.ravel())


def one_vs_rest_auroc(labels, probs, classes):
    """Per-class one-vs-rest AUROC (class c vs the rest, scored by `probs[:, c]`) for each c in `classes`."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    return np.array([binary_auroc(labels == c, probs[:, c]) for c in classes])


def _multiclass_auroc(labels, probs, classes):
    """Macro one-vs-rest AUROC over `classes`; nan if any of them is absent or has no negatives.

    Equal to sklearn's `roc_auc_score(..., multi_class='ovr', average='macro')` when all classes are
    present, without requiring the rows of `probs` to sum to one.
    """
    per_class = one_vs_rest_auroc(labels, probs, classes)
    return float(per_class.mean()) if np.isfinite(per_class).all() else math.nan


def classification_metrics(labels, probs, class_names, n_bootstrap=1000, seed=0):
    """Accuracy and AUROC of single-label predictions, with bootstrap 95% CIs.

    labels: (N,) int class indices; probs: (N, C) class probabilities.
    Binary (C == 2): AUROC of p(class 1), and `auroc_released`, the released scripts' AUROC over the
    flattened one-hot table (`released_binary_auroc`; no CI). C > 2: macro one-vs-rest AUROC over the classes present in
    `labels` (all of them, normally); `per_class_auroc` gives each class's value (None if absent).
    """
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=float)
    n_classes = probs.shape[1]
    if len(class_names) != n_classes:
        raise ValueError(f"{len(class_names)} class names for {n_classes} probability columns")

    def accuracy(y, p):
        return float((p.argmax(axis=1) == y).mean())

    # Each AUROC and its resampled values: class 1's when binary, else the macro one-vs-rest mean over the
    # classes present (nan on a resample that lacks one of them).
    auroc_classes = [1] if n_classes == 2 else np.unique(labels)
    resamples = _resample_indices(len(labels), n_bootstrap, seed)
    resampled_auroc = np.mean([resampled_binary_auroc(labels == c, probs[:, c], resamples) for c in auroc_classes],
                              axis=0)
    result = {
        "n": int(len(labels)),
        "class_counts": {name: int((labels == c).sum()) for c, name in enumerate(class_names)},
        "accuracy": accuracy(labels, probs),
        "accuracy_ci95": _ci_list(bootstrap_ci(accuracy, labels, probs, n_resamples=n_bootstrap, seed=seed)),
        "auroc": (binary_auroc(labels == 1, probs[:, 1]) if n_classes == 2
                  else _multiclass_auroc(labels, probs, auroc_classes)),
        "auroc_ci95": _ci_list(_percentile_interval(resampled_auroc, n_bootstrap, alpha=0.05)),
    }
    if n_classes == 2:
        result["auroc_released"] = released_binary_auroc(labels, probs)
    else:
        per_class = one_vs_rest_auroc(labels, probs, range(n_classes))
        result["per_class_auroc"] = {
            name: _none_if_nan(float(v)) for name, v in zip(class_names, per_class)}
    return result


def multilabel_metrics(targets, scores, class_names, n_bootstrap=1000, seed=0):
    """Macro AUROC of multi-label scores over the classes that have both positives and negatives.

    targets: (N, C) 0/1; scores: (N, C). Classes without both are listed in `auroc_skipped_classes`
    and have None in `per_class_auroc`. The bootstrap keeps that class set fixed; a resample where one
    of them loses its positives or negatives is skipped.
    """
    targets = np.asarray(targets).astype(bool)
    scores = np.asarray(scores, dtype=float)
    if len(class_names) != targets.shape[1]:
        raise ValueError(f"{len(class_names)} class names for {targets.shape[1]} target columns")
    per_class = np.array([binary_auroc(targets[:, c], scores[:, c]) for c in range(targets.shape[1])])
    valid = np.flatnonzero(np.isfinite(per_class))

    resamples = _resample_indices(len(targets), n_bootstrap, seed)
    resampled_auroc = (np.mean([resampled_binary_auroc(targets[:, c], scores[:, c], resamples) for c in valid], axis=0)
                       if len(valid) else np.full(len(resamples), math.nan))
    return {
        "n": int(len(targets)),
        "auroc": float(per_class[valid].mean()) if len(valid) else math.nan,
        "auroc_ci95": _ci_list(_percentile_interval(resampled_auroc, n_bootstrap, alpha=0.05)),
        "per_class_auroc": {name: _none_if_nan(float(v)) for name, v in zip(class_names, per_class)},
        "auroc_skipped_classes": [name for c, name in enumerate(class_names) if c not in valid],
    }


# --------------------------------------------------------------------------- segmentation


def _binary_masks(masks):
    """(N, H, W) bool numpy array from a bool or 0/1 numpy array or tensor."""
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    if masks.dtype != bool:
        if not np.isin(masks, (0, 1)).all():
            raise ValueError("masks must be binary (bool or 0/1); threshold probabilities first")
        masks = masks.astype(bool)
    return masks


def _overlap_counts(pred, target):
    """Per-image |P ∩ T|, |P| and |T| as (N,) int arrays."""
    pred, target = _binary_masks(pred), _binary_masks(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} != target shape {target.shape}")
    axes = (1, 2)
    return (pred & target).sum(axes), pred.sum(axes), target.sum(axes)


def dice_per_image(pred, target):
    """(N,) Dice 2|P∩T| / (|P| + |T|); an empty prediction on an empty mask scores 1 (MGCA convention)."""
    inter, p, t = _overlap_counts(pred, target)
    denom = p + t
    return np.where(denom == 0, 1.0, 2 * inter / np.maximum(denom, 1))


def iou_per_image(pred, target):
    """(N,) IoU |P∩T| / |P∪T|; an empty prediction on an empty mask scores 1, as in `dice_per_image`."""
    inter, p, t = _overlap_counts(pred, target)
    union = p + t - inter
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def segmentation_metrics(pred, target, n_bootstrap=1000, seed=0):
    """Mean per-image Dice and IoU of binary masks, with bootstrap 95% CIs over images.

    `dice` and `miou` average over all images (empty/empty = 1); `dice_positive` averages Dice over the
    images whose target is non-empty only (nan if there are none). `miou` is the mean foreground IoU per
    image, not a class mean including background.
    """
    dice = dice_per_image(pred, target)
    iou = iou_per_image(pred, target)
    positive = _binary_masks(target).any(axis=(1, 2))

    def mean(values):
        return float(values.mean())

    def positive_mean(values, is_positive):
        return float(values[is_positive].mean()) if is_positive.any() else math.nan

    boot = dict(n_resamples=n_bootstrap, seed=seed)
    return {
        "n": int(len(dice)),
        "n_positive": int(positive.sum()),
        "dice": mean(dice),
        "dice_ci95": _ci_list(bootstrap_ci(mean, dice, **boot)),
        "dice_positive": positive_mean(dice, positive),
        "dice_positive_ci95": _ci_list(bootstrap_ci(positive_mean, dice, positive, **boot)),
        "miou": mean(iou),
        "miou_ci95": _ci_list(bootstrap_ci(mean, iou, **boot)),
    }


# --------------------------------------------------------------------------- detection


def _detection_inputs(preds, targets):
    """torchmetrics inputs: float boxes (K, 4) xyxy, scores, and a single class label 0."""
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} prediction entries for {len(targets)} images")
    tm_preds, tm_targets = [], []
    for p, t in zip(preds, targets):
        boxes = torch.as_tensor(p["boxes"], dtype=torch.float32).reshape(-1, 4)  # (K, 4)
        scores = torch.as_tensor(p["scores"], dtype=torch.float32).reshape(-1)  # (K,)
        tm_preds.append({"boxes": boxes, "scores": scores,
                         "labels": torch.zeros(len(boxes), dtype=torch.long)})
        boxes = torch.as_tensor(t["boxes"], dtype=torch.float32).reshape(-1, 4)  # (M, 4)
        tm_targets.append({"boxes": boxes, "labels": torch.zeros(len(boxes), dtype=torch.long)})
    return tm_preds, tm_targets


def _ap_per_threshold(tm_preds, tm_targets):
    """{iou_threshold: AP} over `DETECTION_IOU_THRESHOLDS`; all nan if there is no ground-truth box.

    AP is COCO's 101-point interpolated precision, area 'all', at most 100 detections per image.
    """
    # Here, not at the top: importing torchmetrics loads all its domains (text, image, ...), about 4 s of
    # every evaluation and training process, and only detection needs it.
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_thresholds=DETECTION_IOU_THRESHOLDS,
                                  extended_summary=True, backend=COCO_BACKEND)
    metric.update(tm_preds, tm_targets)
    precision = metric.compute()["precision"][:, :, 0, 0, -1]  # (T, R): class 0, area all, 100 dets
    ap = precision.mean(dim=1).tolist()  # -1 throughout when there is no ground truth
    return {t: (v if v >= 0 else math.nan) for t, v in zip(DETECTION_IOU_THRESHOLDS, ap)}


def _map_summary(ap):
    return {
        "map_40_75": float(np.mean([ap[t] for t in MAP_40_75_THRESHOLDS])),
        "map_coco": float(np.mean([ap[t] for t in MAP_COCO_THRESHOLDS])),
        "map50": ap[0.5],
    }


def detection_metrics(preds, targets, n_bootstrap=200, seed=0):
    """Single-class COCO-style mAP of box predictions, with bootstrap 95% CIs over images.

    preds: per image dict(boxes (K, 4) xyxy, scores (K,)); targets: per image dict(boxes (M, 4)).
    `map_40_75` averages AP over IoU 0.40:0.05:0.75, `map_coco` over 0.50:0.05:0.95, `map50` is AP@0.5.
    A prediction matches a ground-truth box at threshold t when IoU >= t (greedy by score, per image).

    How images count (COCO / pycocotools semantics, verified in tests/evaluation/test_metrics.py): every
    prediction on an image without ground truth is a false positive, and it lowers AP only if it
    outranks true positives; every ground-truth box on an image without predictions is a false
    negative (it caps the recall). mAP is nan if there is no ground-truth box at all.
    Each bootstrap resample reruns the COCO evaluation, hence the smaller default `n_bootstrap`.
    """
    tm_preds, tm_targets = _detection_inputs(preds, targets)

    def summary(idx):
        return _map_summary(_ap_per_threshold([tm_preds[i] for i in idx], [tm_targets[i] for i in idx]))

    result = {"n": len(tm_targets), "n_boxes": int(sum(len(t["boxes"]) for t in tm_targets))}
    result.update(summary(range(len(tm_targets))))
    # One COCO evaluation per resample, shared by the three keys.
    resampled = [summary(idx) for idx in _resample_indices(len(tm_targets), n_bootstrap, seed)]
    for key in ("map_40_75", "map_coco", "map50"):
        result[f"{key}_ci95"] = _ci_list(
            _percentile_interval([r[key] for r in resampled], n_bootstrap, alpha=0.05))
    return result
