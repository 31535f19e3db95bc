"""Evaluation figures saved as PNG: ROC curves, confusion matrix, training curves, mask and box overlays.

Figures are built as `matplotlib.figure.Figure` objects, which render with the Agg canvas and are never
registered with pyplot: nothing needs a display, nothing stays open after saving, and importing this
module does not change the caller's matplotlib backend.
"""
import math
import os

import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix, roc_curve

from ace_lora.evaluation.metrics import binary_auroc, dice_per_image

DPI = 150
TRUE_COLOR = "lime"
PRED_COLOR = "red"


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")


def plot_roc(labels, probs, class_names, path, title="ROC"):
    """One-vs-rest ROC curve per class (binary: one curve for class 1), AUROC in the legend.

    labels: (N,) int class indices, or (N, C) 0/1 multi-label targets (one curve per class column);
    probs: (N, C). Returns {class name: AUROC}, the same values as `classification_metrics` /
    `multilabel_metrics` (None for a class without both positives and negatives, which gets no curve).
    """
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=float)
    multilabel = labels.ndim == 2
    classes = [1] if probs.shape[1] == 2 and not multilabel else range(probs.shape[1])
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    aurocs = {}
    for c in classes:
        name, is_positive = class_names[c], labels[:, c].astype(bool) if multilabel else labels == c
        auroc = binary_auroc(is_positive, probs[:, c])
        aurocs[name] = None if math.isnan(auroc) else auroc
        if aurocs[name] is not None:
            fpr, tpr, _ = roc_curve(is_positive, probs[:, c])
            ax.plot(fpr, tpr, label=f"{name} (AUROC {auroc:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate", ylabel="True positive rate",
           title=title)
    ax.legend(loc="lower right", fontsize="small" if len(aurocs) <= 6 else "x-small")
    _save(fig, path)
    return aurocs


def plot_confusion_matrix(labels, preds, class_names, path, title="Confusion matrix"):
    """Counts of true class (rows) against predicted class (columns); returns the (C, C) matrix."""
    matrix = confusion_matrix(labels, preds, labels=np.arange(len(class_names)))
    fig = Figure(figsize=(1.2 * len(class_names) + 2, 1.2 * len(class_names) + 1.5))
    ax = fig.subplots()
    ConfusionMatrixDisplay(matrix, display_labels=class_names).plot(
        ax=ax, cmap="Blues", values_format="d", xticks_rotation=45, colorbar=False)
    ax.set_title(title)
    _save(fig, path)
    return matrix


def plot_training_curves(records, path, validation_key=None, validation_label="Validation score"):
    """Loss and learning rate against step (or epoch, if records have no step), in two panels, and with
    `validation_key` a third panel of that validation score (e.g. the early-stopping score per epoch).

    records: dicts like {"step": .., "epoch": .., "loss": .., "lr": ..}; records lacking a key are left
    out of that panel (e.g. validation records without a training loss). Returns {panel key: [(x, y)]}.
    """
    x_key = "step" if all("step" in r for r in records) else "epoch"
    panels = [("loss", "Training loss"), ("lr", "Learning rate")]
    if validation_key is not None:
        panels.append((validation_key, validation_label))
    fig = Figure(figsize=(5 * len(panels), 4))
    plotted = {}
    for ax, (key, label) in zip(fig.subplots(1, len(panels)), panels):
        plotted[key] = [(r[x_key], r[key]) for r in records if key in r and x_key in r]
        if plotted[key]:
            ax.plot(*zip(*plotted[key]), marker="o" if key == validation_key else None, markersize=3)
        ax.set(xlabel=x_key, ylabel=label, title=label)
        ax.grid(alpha=0.3)
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    _save(fig, path)
    return plotted


def _display_image(image):
    """uint8 images as they are; float images min-max scaled to [0, 1]."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    image = image.astype(float)
    span = image.max() - image.min()
    return (image - image.min()) / span if span > 0 else np.zeros_like(image)


def _image_grid(n_images, max_images, panel_size=3.0, ncols=3):
    """Figure and flat list of the first min(n_images, max_images) axes, axis lines off."""
    n = min(n_images, max_images)
    ncols = min(n, ncols)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(panel_size * ncols, panel_size * nrows + 0.4))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    return fig, axes[:n]


def _show(ax, image):
    image = _display_image(image)
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None)


def save_heatmap_overlay(image, heat, path, title=""):
    """The image in grey with a similarity map (same H x W) over it in a colour map, and a colour bar."""
    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.subplots()
    ax.set_axis_off()
    ax.imshow(np.asarray(image.convert("L")), cmap="gray")
    overlay = ax.imshow(heat, cmap="jet", alpha=0.45)
    fig.colorbar(overlay, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    ax.set_title(title, fontsize=8)
    _save(fig, path)


def _legend(fig):
    fig.legend(handles=[Patch(color=TRUE_COLOR, label="ground truth"),
                        Patch(color=PRED_COLOR, label="prediction")],
               loc="lower center", ncol=2, frameon=False)


def plot_mask_overlays(images, pred_masks, true_masks, path, max_images=6):
    """Grid of images with the true mask in green and the predicted mask in red, Dice in each title.

    images: (N, H, W) or (N, H, W, 3), uint8 or float; masks: (N, H, W) binary.
    """
    n = min(len(images), max_images)
    dice = dice_per_image(np.asarray(pred_masks[:n]), np.asarray(true_masks[:n]))
    fig, axes = _image_grid(len(images), max_images)
    for i, ax in enumerate(axes):
        _show(ax, images[i])
        for mask, color in ((true_masks[i], TRUE_COLOR), (pred_masks[i], PRED_COLOR)):
            overlay = np.zeros((*np.shape(mask), 4))  # (H, W, RGBA)
            overlay[np.asarray(mask, dtype=bool)] = (*to_rgb(color), 0.45)
            ax.imshow(overlay)
        ax.set_title(f"#{i}  Dice {dice[i]:.2f}", fontsize="small")
    _legend(fig)
    _save(fig, path)


def _draw_boxes(ax, boxes, color, scores=None):
    for k, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, dtype=float).reshape(-1, 4)):
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=1.5))
        if scores is not None:
            ax.text(x0, y0, f"{scores[k]:.2f}", color="white", fontsize=7, va="bottom",
                    bbox={"facecolor": color, "edgecolor": "none", "pad": 1, "alpha": 0.8})


def plot_box_overlays(images, pred_boxes, true_boxes, path, max_images=6, pred_scores=None):
    """Grid of images with true boxes in green and predicted boxes in red (xyxy pixels).

    pred_boxes, true_boxes: per image (K, 4) arrays; pred_scores: optional per image (K,) scores,
    written above each predicted box.
    """
    fig, axes = _image_grid(len(images), max_images)
    for i, ax in enumerate(axes):
        _show(ax, images[i])
        _draw_boxes(ax, true_boxes[i], TRUE_COLOR)
        scores = None if pred_scores is None else np.asarray(pred_scores[i]).reshape(-1)
        _draw_boxes(ax, pred_boxes[i], PRED_COLOR, scores)
        ax.set_title(f"#{i}", fontsize="small")
    _legend(fig)
    _save(fig, path)
