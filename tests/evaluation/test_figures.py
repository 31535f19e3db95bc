import numpy as np
import pytest
from PIL import Image

from ace_lora.evaluation.figures import (
    plot_box_overlays,
    plot_confusion_matrix,
    plot_mask_overlays,
    plot_roc,
    plot_training_curves,
)
from ace_lora.evaluation.metrics import classification_metrics, multilabel_metrics


def _read_png(path):
    """The PNG as an (H, W, 3) uint8 array, after checking that it is a non-blank PNG."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] > 50 and pixels.shape[1] > 50
    assert pixels.var() > 0
    return pixels


def _count(pixels, rgb, tol=40):
    """Number of pixels within `tol` of the colour `rgb` on every channel."""
    return int((np.abs(pixels.astype(int) - np.array(rgb)) <= tol).all(axis=-1).sum())


RED_ON_BLACK = (115, 0, 0)     # red at alpha 0.45 over a black image
GREEN_ON_BLACK = (0, 115, 0)


def _probs(labels, n_classes, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(labels), n_classes)) + np.eye(n_classes)[labels]
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_plot_roc_multiclass_returns_the_metrics_aurocs(tmp_path):
    labels = np.random.default_rng(0).integers(0, 4, size=200)
    probs = _probs(labels, 4, seed=1)
    names = ["atelectasis", "cardiomegaly", "edema", "effusion"]
    aurocs = plot_roc(labels, probs, names, tmp_path / "roc.png", "CheXpert 5x200")
    assert aurocs == pytest.approx(classification_metrics(labels, probs, names, n_bootstrap=0)
                                   ["per_class_auroc"])
    _read_png(tmp_path / "roc.png")


def test_plot_roc_binary_draws_one_curve_for_class_one(tmp_path):
    labels = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    aurocs = plot_roc(labels, np.stack([1 - p1, p1], axis=1), ["normal", "pneumonia"],
                      tmp_path / "sub" / "roc.png", "RSNA")
    assert aurocs == pytest.approx({"pneumonia": 0.75})
    _read_png(tmp_path / "sub" / "roc.png")


def test_plot_roc_absent_class_gets_none(tmp_path):
    labels = np.array([0, 1, 0, 1])
    aurocs = plot_roc(labels, _probs(labels, 3, seed=0), ["a", "b", "c"], tmp_path / "roc.png")
    assert aurocs["c"] is None and aurocs["a"] is not None


@pytest.mark.parametrize("n_classes", [2, 5])
def test_plot_roc_multilabel_draws_one_curve_per_class_column(tmp_path, n_classes):
    rng = np.random.default_rng(2)
    targets = (rng.random((120, n_classes)) < 0.3).astype(int)
    targets[:, -1] = 0  # a class without positives gets no curve
    scores = targets + rng.normal(size=targets.shape)
    names = [f"finding_{c}" for c in range(n_classes)]
    aurocs = plot_roc(targets, scores, names, tmp_path / "roc.png", "NIH")
    assert aurocs == pytest.approx(multilabel_metrics(targets, scores, names, n_bootstrap=0)["per_class_auroc"])
    assert list(aurocs) == names and aurocs[names[-1]] is None  # every column, even with 2 classes
    _read_png(tmp_path / "roc.png")


def test_plot_confusion_matrix_counts(tmp_path):
    labels = [0, 0, 1, 1, 2, 2, 2]
    preds = [0, 1, 1, 1, 0, 2, 2]
    matrix = plot_confusion_matrix(labels, preds, ["a", "b", "c"], tmp_path / "cm.png", "test")
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 2, 0], [1, 0, 2]])
    _read_png(tmp_path / "cm.png")


def test_plot_training_curves_draws_both_panels(tmp_path):
    records = [{"step": s, "epoch": s // 10, "loss": 2.0 / (1 + s), "lr": 1e-4 * min(1, s / 5)}
               for s in range(40)]
    records.append({"epoch": 3, "val_auroc": 0.8})  # no step: the x axis falls back to epoch
    plot_training_curves(records, tmp_path / "curves.png")
    pixels = _read_png(tmp_path / "curves.png")
    line_blue = (31, 119, 180)  # matplotlib's first colour, C0
    half = pixels.shape[1] // 2
    assert _count(pixels[:, :half], line_blue, tol=20) > 50   # loss panel
    assert _count(pixels[:, half:], line_blue, tol=20) > 50   # learning-rate panel


def test_plot_training_curves_adds_a_validation_panel(tmp_path):
    records = [{"epoch": 0, "val_score": 0.1}] + [
        {"epoch": e, "loss": 1.0 / e, "lr": 1e-3, "val_score": 0.1 * e} for e in range(1, 6)]
    plotted = plot_training_curves(records, tmp_path / "curves.png", validation_key="val_score",
                                   validation_label="validation Dice")
    assert plotted["val_score"] == [(0, 0.1)] + [(e, 0.1 * e) for e in range(1, 6)]
    assert plotted["loss"] == [(e, 1.0 / e) for e in range(1, 6)]
    pixels = _read_png(tmp_path / "curves.png")
    third = pixels[:, 2 * pixels.shape[1] // 3:]
    assert _count(third, (31, 119, 180), tol=20) > 50  # the validation curve is drawn in the third panel
    assert "val_score" not in plot_training_curves(records, tmp_path / "two.png")


def _black_images(n, size=32):
    return np.zeros((n, size, size), dtype=np.uint8)


def test_plot_mask_overlays_colours_true_green_and_pred_red(tmp_path):
    true = np.zeros((2, 32, 32), dtype=bool)
    true[:, :, 16:] = True
    pred = np.zeros_like(true)
    pred[:, 4:28, 2:14] = True
    plot_mask_overlays(_black_images(2), pred, true, tmp_path / "masks.png")
    plot_mask_overlays(_black_images(2), np.zeros_like(pred), true, tmp_path / "no_pred.png")
    with_pred, no_pred = _read_png(tmp_path / "masks.png"), _read_png(tmp_path / "no_pred.png")
    # Each panel is ~3 in at 150 dpi: the masks cover thousands of pixels; the legend far fewer.
    assert _count(with_pred, GREEN_ON_BLACK) > 5000
    assert _count(with_pred, RED_ON_BLACK) > 5000
    assert _count(no_pred, RED_ON_BLACK) < _count(with_pred, RED_ON_BLACK) / 10


def test_plot_mask_overlays_grid_holds_at_most_max_images(tmp_path):
    masks = np.zeros((10, 32, 32), dtype=bool)
    images = np.random.default_rng(0).uniform(size=(10, 32, 32, 3))  # float RGB
    plot_mask_overlays(images, masks, masks, tmp_path / "two.png", max_images=2)
    plot_mask_overlays(images, masks, masks, tmp_path / "six.png", max_images=6)
    two, six = _read_png(tmp_path / "two.png"), _read_png(tmp_path / "six.png")
    assert six.shape[0] > 1.6 * two.shape[0]  # two rows of three against one row of two
    assert six.shape[1] > 1.3 * two.shape[1]


def test_plot_box_overlays_colours_true_green_and_pred_red(tmp_path):
    true_boxes = [np.array([[2, 2, 20, 20]]), np.zeros((0, 4))]
    pred_boxes = [np.array([[10, 10, 30, 30]]), np.array([[4, 4, 12, 28]])]
    plot_box_overlays(_black_images(2), pred_boxes, true_boxes, tmp_path / "boxes.png",
                      pred_scores=[np.array([0.9]), np.array([0.4])])
    plot_box_overlays(_black_images(2), [np.zeros((0, 4))] * 2, true_boxes, tmp_path / "no_pred.png")
    with_pred, no_pred = _read_png(tmp_path / "boxes.png"), _read_png(tmp_path / "no_pred.png")
    pure_red, lime = (255, 0, 0), (0, 255, 0)
    assert _count(with_pred, lime) > 200
    assert _count(with_pred, pure_red) > 2 * _count(no_pred, pure_red) + 200


def test_figures_leave_no_open_pyplot_figures(tmp_path):
    import matplotlib.pyplot as plt

    plot_confusion_matrix([0, 1], [0, 1], ["a", "b"], tmp_path / "cm.png")
    plot_box_overlays(_black_images(1), [np.zeros((0, 4))], [np.zeros((0, 4))], tmp_path / "b.png")
    assert plt.get_fignums() == []
