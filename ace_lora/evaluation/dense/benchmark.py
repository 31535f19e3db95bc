"""End-to-end dense benchmark runs: the library behind zero_shot_eval/segmentation_siim.py and
zero_shot_eval/detection_rsna.py (`run(task, args)`; the command line is ace_lora.params.dense_parser,
the task definitions ace_lora/evaluation/dense/definitions.py).

Order of work, which keeps the test split untouched until the end:
 1. the output folder and the CSVs are checked up front (columns, labels, boxes, every file exists
    and opens: `check_decodable`), before the model loads; zero-shot runs need no training CSV;
 2. trained mode: the training subset (fraction, balanced set) is drawn and its ids saved; train and
    val are encoded once by the frozen encoder; the head is fitted on the cached features with early
    stopping on val and the best head saved. Zero-shot mode: val is encoded and the threshold chosen on it;
 3. only then the test split is encoded and predicted, once, by the best head or chosen threshold.
Outputs in --output-dir: metrics.json, predictions.csv, overlay figure(s), config.yaml, and
train_ids.csv / best_head.pt / training_log.csv / training_curves.png (trained) or
threshold_search.csv (zero-shot).

Where metrics are computed: segmentation at the model input resolution S x S (the ground-truth
masks resized with PIL's area-weighted bilinear filter and thresholded at 0.5; MGCA also scores at
224), detection in the original image pixels (predicted boxes scaled back from S x S).

Speeds in metrics.json: `encode_images_per_second` = frozen encoder on the training (zero-shot:
validation) split, file loading included; `train_images_per_second` = head training on cached
features (images x epochs / seconds); `inference_images_per_second` = the test split end to end
(load, encode, head, post-processing). A split read from --feature-cache has no encoding time, so
the speeds that include it are null then.
"""
import argparse
import json
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torchvision.ops import box_iou

from ace_lora.data.images import load_image
from ace_lora.data.prompts import CHEST_XRAY_TEMPLATES, class_major_prompts
from ace_lora.data.transforms import InputSpec
from ace_lora.errors import UserInputError
from ace_lora.evaluation.dense.definitions import (
    DENSE_TASKS,
    IMAGE_FILE,
    MASK_FILE,
    SPLITS,
    VALIDATION_SCORES,
    DenseTask,
)
from ace_lora.evaluation.dense.demo_data import write_rsna_demo, write_siim_demo
from ace_lora.evaluation.dense.detection import TokenGridFCOS, box_targets, input_boxes, predict_boxes, train_detector
from ace_lora.evaluation.dense.features import CachedSplit, cache_file, extract_split
from ace_lora.evaluation.dense.head_training import FitResult, FitSettings
from ace_lora.evaluation.dense.localisation import (
    choose_threshold,
    class_text_embedding,
    mean_dice_at,
    predict_region_boxes,
    similarity_maps,
    threshold_candidates,
    threshold_masks,
)
from ace_lora.evaluation.dense.segmentation import ProgressiveUpsamplingDecoder, predict_masks, train_decoder
from ace_lora.evaluation.dense.splits import (
    balanced_subset,
    check_decodable,
    fraction_subset,
    read_split,
    split_csv_paths,
)
from ace_lora.evaluation.figures import plot_box_overlays, plot_mask_overlays, plot_training_curves
from ace_lora.evaluation.metrics import detection_metrics, dice_per_image, iou_per_image, segmentation_metrics
from ace_lora.io import (
    atomic_save,
    check_output_dir,
    prepare_output_dir,
    strict_json,
    with_values,
    write_resolved_config,
)
from ace_lora.model.factory import load_model_for_eval
from ace_lora.model.tiny_model import write_tiny_biomedclip
from ace_lora.runtime import cpu_threads, runtime_device

DEMO_IMAGE_SIZE = 64  # tiny model input: a 4 x 4 patch grid
DEMO_DATA, DEMO_MODEL = "demo_data", "demo_model"
DEMO_THREADS = 1
N_FIGURE_IMAGES = 6
N_FIGURE_BOXES = 3  # predicted boxes drawn per image (best first)


# --------------------------------------------------------------------------- shared steps


def prepare_dense_demo(task: DenseTask, args: argparse.Namespace) -> argparse.Namespace:
    """Write the synthetic split CSVs and the tiny model under --output-dir; the flags pointed at them."""
    root = os.path.abspath(os.path.join(args.output_dir, DEMO_DATA))
    writer = write_siim_demo if task.name == "siim_segmentation" else write_rsna_demo
    writer(root, seed=args.seed)
    words = class_major_prompts([task.class_name], CHEST_XRAY_TEMPLATES)  # what the tiny tokenizer must know
    model = write_tiny_biomedclip(os.path.join(args.output_dir, DEMO_MODEL), words, image_size=DEMO_IMAGE_SIZE,
                                  seed=args.seed)
    return with_values(args, model=model, split_dir=root, data_root=None, train_csv=None, val_csv=None, test_csv=None)


@dataclass
class DenseRun:
    """What every step of a run needs: the frozen model, its input transform, where things go."""
    task: DenseTask
    args: argparse.Namespace
    model: torch.nn.Module
    spec: InputSpec
    device: torch.device
    tables: Dict[str, pd.DataFrame]

    def encode(self, split: str, table: pd.DataFrame, with_masks: bool = False) -> CachedSplit:
        """Frozen features of `table`'s images (and masks), from --feature-cache when present."""
        images = table[IMAGE_FILE].tolist()
        masks = table[MASK_FILE].tolist() if with_masks else None
        cache_path = None
        if self.args.feature_cache:
            checkpoint = self.args.checkpoint
            identity = {"model": self.args.model, "features": self.args.features, "spec": self.spec.describe(),
                        "checkpoint": None if checkpoint is None else
                        [os.path.abspath(checkpoint), os.path.getsize(checkpoint), os.path.getmtime(checkpoint)]}
            cache_path = cache_file(self.args.feature_cache, split, identity, images, masks)
        return extract_split(self.model, split, images, self.spec, self.args.features, self.device,
                             self.args.precision, self.args.encode_batch_size, self.args.num_workers, masks,
                             cache_path, progress=self.args.progress)

    def fit_settings(self) -> FitSettings:
        a = self.args
        return FitSettings(epochs=a.epochs, lr=a.lr, weight_decay=a.weight_decay, batch_size=a.batch_size,
                           patience=a.patience, seed=a.seed, device=self.device, precision=a.precision,
                           progress=a.progress)

    def path(self, name: str) -> str:
        return os.path.join(self.args.output_dir, name)


def start_run(task_name: str, args: argparse.Namespace) -> DenseRun:
    task = DENSE_TASKS[task_name]
    check_output_dir(args.output_dir)  # a bad --output-dir fails now; the folder is made once the inputs are good
    if args.demo:
        prepare_output_dir(args.output_dir)
        args = prepare_dense_demo(task, args)
    needed = ("val", "test") if args.zero_shot else SPLITS  # zero-shot learns nothing from a training split
    csvs = split_csv_paths(task.layout, args.split_dir, {s: getattr(args, f"{s}_csv") for s in SPLITS}, needed)
    tables = {split: read_split(task.layout, csvs[split], args.data_root) for split in needed}
    for split in needed:  # a damaged test image must not surface only after the head is trained
        check_decodable(tables[split], csvs[split], progress=args.progress)
    args, device = runtime_device(args)
    torch.manual_seed(args.seed)
    model = load_model_for_eval(args.model, args.checkpoint, device=device)
    prepare_output_dir(args.output_dir)
    write_resolved_config(args, args.output_dir)
    return DenseRun(task, args, model, model.input_spec, device, tables)


def training_subset(run: DenseRun) -> pd.DataFrame:
    """The training rows used: the balanced set (if chosen), then the seeded fraction, both by image
    label (segmentation: has_pneumothorax; detection: has_boxes); ids and labels go to train_ids.csv."""
    layout, args, table = run.task.layout, run.args, run.tables["train"]
    label, columns = layout.label_column, [layout.id_column]
    if layout.boxes_column:
        n_boxes = table[layout.boxes_column].map(len)
        table = table.assign(has_boxes=(n_boxes > 0).astype(int), n_boxes=n_boxes)
        label, columns = "has_boxes", columns + ["n_boxes"]
    if args.train_set == "balanced":
        table = balanced_subset(table, label, args.seed)
    table = fraction_subset(table, args.train_fraction, args.seed, stratify_column=label)
    table[columns + [label]].to_csv(run.path("train_ids.csv"), index=False)
    print(f"training on {len(table)} of {len(run.tables['train'])} training images "
          f"(ids in {run.path('train_ids.csv')})")
    return table


def save_head(run: DenseRun, head: torch.nn.Module, fit: FitResult) -> None:
    atomic_save({"state_dict": fit.best_state, "best_epoch": fit.best_epoch, "val_score": fit.best_score,
                 "head": type(head).__name__, "features": run.args.features, "model": run.args.model,
                 "checkpoint": run.args.checkpoint}, run.path("best_head.pt"))
    pd.DataFrame(fit.records).to_csv(run.path("training_log.csv"), index=False)
    plot_training_curves(fit.records, run.path("training_curves.png"), validation_key="val_score",
                         validation_label=f"Validation {VALIDATION_SCORES[run.task.name]} (early stopping)")


def write_metrics(run: DenseRun, metrics: dict, settings: dict) -> str:
    document = {"task": run.task.name, "mode": "zero-shot" if run.args.zero_shot else "trained",
                "metrics": metrics, "settings": settings, "config": json.loads(json.dumps(vars(run.args), default=str))}
    with open(run.path("metrics.json"), "w", encoding="utf-8") as f:
        json.dump(strict_json(document), f, indent=2, allow_nan=False)
    return run.path("metrics.json")


def base_settings(run: DenseRun, encoded: CachedSplit) -> dict:
    return {"features": run.args.features, "model": run.args.model, "checkpoint": run.args.checkpoint,
            "input_size": run.spec.size, "token_grid": list(encoded.features.shape[-2:]),
            "feature_dim": int(encoded.features.shape[1]), "mean": list(run.spec.mean), "std": list(run.spec.std),
            "n": {split: len(table) for split, table in run.tables.items()}, "device": str(run.device),
            "precision": run.args.precision}


def fit_summary(fit: FitResult, n_train: int) -> dict:
    return {"n_train_used": n_train, "best_epoch": fit.best_epoch, "best_val_score": fit.best_score,
            "epochs_run": fit.epochs_run, "train_seconds": fit.train_seconds}


def figure_order(has_target: np.ndarray) -> np.ndarray:
    """Indices of the images shown in figures: positives first (CSV order), then negatives."""
    return np.argsort(~has_target, kind="stable")[:N_FIGURE_IMAGES]


def display_images(paths: Sequence[str], size: Optional[int] = None) -> List[np.ndarray]:
    """Greyscale uint8 arrays of the images (resized to size x size when given), for figures."""
    images = [load_image(p).convert("L") for p in paths]
    return [np.asarray(image if size is None else image.resize((size, size))) for image in images]


def inference_rate(test: CachedSplit, seconds: float) -> float:
    """Test images per second end to end; nan when the test features came from the cache."""
    return len(test) / seconds if seconds > 0 and test.encode_seconds > 0 else float("nan")


# --------------------------------------------------------------------------- segmentation


def run_segmentation(run: DenseRun) -> dict:
    args, table = run.args, run.tables["test"]
    if args.zero_shot:
        val = run.encode("val", run.tables["val"], with_masks=True)
        text = class_text_embedding(run.model, run.task.class_name, run.device)
        val_maps = similarity_maps(val.features, text)
        threshold, search = choose_threshold(threshold_candidates(val_maps),
                                             lambda t: mean_dice_at(val_maps, val.masks, t))
        pd.DataFrame(search).rename(columns={"score": "val_dice"}).to_csv(run.path("threshold_search.csv"), index=False)
        start = time.perf_counter()
        test = run.encode("test", table, with_masks=True)
        test_maps = similarity_maps(test.features, text)
        masks = threshold_masks(test_maps, threshold, run.spec.size)
        peaks = test_maps.flatten(1).max(dim=1).values
        elapsed = time.perf_counter() - start
        extra = {"threshold": threshold, "class_name": run.task.class_name, "templates": list(CHEST_XRAY_TEMPLATES)}
        speeds = {"encode_images_per_second": val.images_per_second}
    else:
        train_table = training_subset(run)
        train = run.encode("train", train_table, with_masks=True)
        val = run.encode("val", run.tables["val"], with_masks=True)
        torch.manual_seed(args.seed)
        decoder = ProgressiveUpsamplingDecoder(train.features.shape[1], train.features.shape[-1], run.spec.size,
                                               channels=args.head_channels)
        fit = train_decoder(decoder, train, val, run.fit_settings(), args.focal_weight)
        save_head(run, decoder, fit)
        start = time.perf_counter()
        test = run.encode("test", table, with_masks=True)
        masks, peaks = predict_masks(decoder, test.features, run.device, args.precision, args.batch_size)
        elapsed = time.perf_counter() - start
        extra = fit_summary(fit, len(train))
        speeds = {"encode_images_per_second": train.images_per_second,
                  "train_images_per_second": fit.train_images_per_second}
    truth = test.masks.numpy()
    predicted = masks.numpy()
    metrics = segmentation_metrics(predicted, truth, n_bootstrap=args.bootstrap, seed=args.seed)
    metrics.update(speeds, inference_images_per_second=inference_rate(test, elapsed))
    pd.DataFrame({"ImageId": table["ImageId"], "has_pneumothorax": table["has_pneumothorax"],
                  "dice": dice_per_image(predicted, truth), "iou": iou_per_image(predicted, truth),
                  "predicted_pixels": predicted.sum(axis=(1, 2)), "true_pixels": truth.sum(axis=(1, 2)),
                  "peak_score": peaks.numpy()}).to_csv(run.path("predictions.csv"), index=False)
    shown = figure_order(truth.any(axis=(1, 2)))
    plot_mask_overlays(display_images(table[IMAGE_FILE].iloc[shown], run.spec.size), predicted[shown], truth[shown],
                       run.path("mask_overlays.png"))
    write_metrics(run, metrics, {**base_settings(run, test), **extra})
    return metrics


# --------------------------------------------------------------------------- detection


def _require_boxes(run: DenseRun, split: str) -> None:
    if not any(len(b) for b in run.tables[split]["boxes"]):
        raise UserInputError(f"the {split} split has no boxes: mAP is undefined there")


def _mean_best_iou(predicted: np.ndarray, true: np.ndarray) -> float:
    """Mean over the true boxes of their best IoU with any predicted box (nan without true boxes)."""
    if len(true) == 0:
        return float("nan")
    if len(predicted) == 0:
        return 0.0
    return float(box_iou(torch.as_tensor(true), torch.as_tensor(predicted)).max(dim=1).values.mean())


def run_detection(run: DenseRun) -> dict:
    args, table = run.args, run.tables["test"]
    for split in ("val", "test"):
        _require_boxes(run, split)
    val_targets = box_targets(run.tables["val"]["boxes"])
    if args.zero_shot:
        val = run.encode("val", run.tables["val"])
        text = class_text_embedding(run.model, run.task.class_name, run.device)
        val_maps = similarity_maps(val.features, text)

        def val_map(threshold: float) -> float:
            predictions = predict_region_boxes(val_maps, threshold, run.spec.size, val.sizes)
            return detection_metrics(predictions, val_targets, n_bootstrap=0)["map_40_75"]

        threshold, search = choose_threshold(threshold_candidates(val_maps), val_map)
        pd.DataFrame(search).rename(columns={"score": "val_map_40_75"}).to_csv(run.path("threshold_search.csv"),
                                                                               index=False)
        start = time.perf_counter()
        test = run.encode("test", table)
        predictions = predict_region_boxes(similarity_maps(test.features, text), threshold, run.spec.size, test.sizes)
        elapsed = time.perf_counter() - start
        extra = {"threshold": threshold, "class_name": run.task.class_name, "templates": list(CHEST_XRAY_TEMPLATES)}
        speeds = {"encode_images_per_second": val.images_per_second}
    else:
        train_table = training_subset(run)
        train = run.encode("train", train_table)
        scaled = [input_boxes(b, size, run.spec.size) for b, size in zip(train_table["boxes"], train.sizes.tolist())]
        dropped = sum(n for _, n in scaled)
        if dropped:
            print(f"excluded {dropped} training boxes that lie outside their image")
        val = run.encode("val", run.tables["val"])
        torch.manual_seed(args.seed)
        detector = TokenGridFCOS(train.features.shape[1], train.features.shape[-1], run.spec.size,
                                 channels=args.head_channels, head_convs=args.head_convs)
        fit = train_detector(detector, train, [b for b, _ in scaled], val, run.tables["val"]["boxes"],
                             run.fit_settings())
        save_head(run, detector, fit)
        start = time.perf_counter()
        test = run.encode("test", table)
        predictions = predict_boxes(detector, test, run.device, args.precision, args.batch_size)
        elapsed = time.perf_counter() - start
        extra = {**fit_summary(fit, len(train)), "train_boxes_outside_image": dropped,
                 "score_threshold": detector.score_thresh, "nms_threshold": detector.nms_thresh}
        speeds = {"encode_images_per_second": train.images_per_second,
                  "train_images_per_second": fit.train_images_per_second}
    targets = box_targets(table["boxes"])
    metrics = detection_metrics(predictions, targets, n_bootstrap=args.bootstrap, seed=args.seed)
    metrics.update(speeds, inference_images_per_second=inference_rate(test, elapsed))
    pd.DataFrame({
        "patientId": table["patientId"], "n_true_boxes": [len(t["boxes"]) for t in targets],
        "n_predicted_boxes": [len(p["boxes"]) for p in predictions],
        "top_score": [float(p["scores"][0]) if len(p["scores"]) else float("nan") for p in predictions],
        "best_iou": [_mean_best_iou(p["boxes"], t["boxes"]) for p, t in zip(predictions, targets)],
        "predicted_boxes": [json.dumps(np.round(p["boxes"], 1).tolist()) for p in predictions],
        "predicted_scores": [json.dumps(np.round(p["scores"].astype(np.float64), 4).tolist()) for p in predictions],
    }).to_csv(run.path("predictions.csv"), index=False)
    shown = figure_order(np.array([len(t["boxes"]) > 0 for t in targets]))
    plot_box_overlays(display_images(table[IMAGE_FILE].iloc[shown]),
                      [predictions[i]["boxes"][:N_FIGURE_BOXES] for i in shown],
                      [targets[i]["boxes"] for i in shown], run.path("box_overlays.png"),
                      pred_scores=[predictions[i]["scores"][:N_FIGURE_BOXES] for i in shown])
    settings = {**base_settings(run, test), **extra, "images_without_predictions":
                int(sum(len(p["boxes"]) == 0 for p in predictions))}
    write_metrics(run, metrics, settings)
    return metrics


# --------------------------------------------------------------------------- entry point


def summary_line(task_name: str, metrics: dict) -> str:
    keys = ("dice", "dice_positive", "miou") if task_name == "siim_segmentation" else ("map_40_75", "map_coco", "map50")
    parts = []
    for key in keys:
        low, high = metrics[f"{key}_ci95"]
        parts.append(f"{key} {metrics[key]:.4f} (95% CI {low:.4f}-{high:.4f})")
    return "; ".join(parts)


def run(task_name: str, args: argparse.Namespace) -> dict:
    """Run the benchmark with `ace_lora.params.parse_dense_args`'s arguments, write the result files;
    returns the metrics.

    The demo runs with one CPU thread (ace_lora.runtime.cpu_threads).
    """
    started = time.perf_counter()
    dense_run = start_run(task_name, args)
    with cpu_threads(DEMO_THREADS if dense_run.args.demo else None):
        metrics = (run_segmentation if task_name == "siim_segmentation" else run_detection)(dense_run)
    print(f"{DENSE_TASKS[task_name].title} ({'zero-shot' if dense_run.args.zero_shot else 'trained'}, "
          f"{dense_run.args.features} features): {summary_line(task_name, metrics)}")
    print(f"results in {dense_run.args.output_dir} ({time.perf_counter() - started:.0f} s)")
    return metrics
