"""Zero-shot classification: the one engine behind every `zero_shot_eval/` script and training validation.

    result = evaluate(model, "chexpert", "chexpert_5x200.csv", data_root="/data/chexpert")
    result.metrics["auroc"], result.predictions  # one row per CSV row, in CSV order

Protocol (the released one): class embeddings are computed once, from a prompt ensemble
(`model.encode_prompt_ensemble`, class-major prompts); images are embedded in batches by a DataLoader
(`model.preprocess`, `model.encode_image`); the scores of the single-label tasks are
softmax(s * cosine) with s the base model's exp(logit_scale) (`logit_scale='base'`, as the released
scripts) or the learned scale (`'learned'`). NIH ChestX-ray14 is multi-label and scored per image as
(exp(c) - min) / (max - min) over its 14 cosines c (`scoring='released'`) or by the cosines themselves.

Unreadable or missing images raise a UserInputError naming the file, unless `skip_unreadable`: then
they keep their row in `predictions` with NaN scores, are left out of the metrics, and are counted and
listed in `metrics['n_unreadable']` / `metrics['unreadable']`.
"""
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ace_lora.data.eval_dataset import ImageListDataset, collate_eval_items
from ace_lora.data.image_cache import image_source
from ace_lora.data.paths import data_root_for
from ace_lora.data.prompts import prompt_ensemble_embeddings
from ace_lora.data.tables import read_table
from ace_lora.errors import UserInputError
from ace_lora.evaluation.figures import plot_confusion_matrix, plot_roc
from ace_lora.evaluation.metrics import classification_metrics, multilabel_metrics
from ace_lora.evaluation.tasks import COSINE, LOGIT_SCALES, NIH_RELEASED, SOFTMAX, TASKS, ZeroShotTask, get_task
from ace_lora.io import prepare_output_dir, strict_json
from ace_lora.runtime import autocast, resolve_device, resolve_precision

LABEL_COLUMN = "label"  # true class name in predictions.csv (multi-label: positives joined by '|')
NO_FINDING = "No Finding"  # the multi-label truth of an image without positives


@dataclass
class ZeroShotResult:
    task: str
    class_names: List[str]
    ids: List[str]  # the task's id column, per CSV row
    labels: np.ndarray  # (N,) class index, or (N, C) 0/1 for multi-label tasks
    probabilities: np.ndarray  # (N, C) scores; NaN rows for unreadable images
    readable: np.ndarray  # (N,) bool
    metrics: dict
    predictions: pd.DataFrame  # id column, `label`, one score column per class name
    settings: dict = field(default_factory=dict)  # what was resolved: scoring, temperature, prompts, ...


# --------------------------------------------------------------------------- scoring


def class_embeddings(model, task: ZeroShotTask, device: torch.device) -> torch.Tensor:
    """(C, D) float32 normalised class embeddings from the task's prompt ensemble."""
    return prompt_ensemble_embeddings(model, task.prompt_names, task.templates, device)


def temperature(model, logit_scale: str) -> float:
    """The softmax scale: the base model's exp(logit_scale), or the learned (linear) one."""
    if logit_scale not in LOGIT_SCALES:
        raise UserInputError(f"logit scale must be one of {', '.join(LOGIT_SCALES)}, not {logit_scale!r}")
    scale = model.base_logit_scale() if logit_scale == "base" else model.logit_scale
    return float(scale)


def score(cosine: torch.Tensor, scoring: str, scale: float) -> torch.Tensor:
    """Per-class scores (B, C) from cosine similarities (B, C)."""
    if scoring == SOFTMAX:
        return (scale * cosine).softmax(dim=-1)
    if scoring == NIH_RELEASED:
        e = cosine.exp()
        low, high = e.min(dim=-1, keepdim=True).values, e.max(dim=-1, keepdim=True).values
        # All classes equal (max == min): every score is 0 instead of 0/0 = NaN.
        return (e - low) / (high - low).clamp_min(torch.finfo(e.dtype).tiny)
    if scoring == COSINE:
        return cosine
    raise ValueError(f"unknown scoring {scoring!r}")


# --------------------------------------------------------------------------- the engine


def _model_device(model, device) -> torch.device:
    """`device` (moving the model there), or where the model already is when None."""
    if device is None:
        return next(model.parameters()).device
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    model.to(device)
    return device


def _missing_message(image_id: str, path: Optional[str], data_root: str) -> str:
    if path is None:  # SIIM: neither <ImageId>.png nor a .png/.dcm of that name under the root
        return f"no {image_id}.png or {image_id}.dcm under {data_root}"
    return f"{path}: image file not found"


def _embed_and_score(model, images, class_emb: torch.Tensor, scale: float, scoring: str,
                     device: torch.device, precision: str, batch_size: int, num_workers: int,
                     skip_unreadable: bool, progress: bool, title: str):
    """Scores (len(images), C) of an image source, NaN rows for unreadable images; {position: error}; images/s."""
    loader = DataLoader(ImageListDataset(images), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda", collate_fn=collate_eval_items)
    scores = torch.full((len(images), class_emb.shape[0]), float("nan"))
    failures: Dict[int, str] = {}
    start = time.perf_counter()
    for indices, images, unreadable in tqdm(loader, desc=f"zero-shot {title}", unit="batch", disable=not progress):
        if unreadable and not skip_unreadable:
            raise UserInputError(f"{unreadable[0][1]} (pass --skip-unreadable to count and skip such images)")
        failures.update(unreadable)
        if images is None:
            continue
        with autocast(device, precision):
            image_emb = model.encode_image(images.to(device, non_blocking=True))  # (B, D)
        scores[indices] = score(image_emb.float() @ class_emb.T, scoring, scale).cpu()  # (B, C)
    elapsed = time.perf_counter() - start
    n_read = len(images) - len(failures)
    return scores.numpy(), failures, (n_read / elapsed if elapsed > 0 else math.nan)


def _true_label_names(task: ZeroShotTask, labels: np.ndarray) -> List[str]:
    if task.multilabel:
        return ["|".join(name for name, on in zip(task.class_names, row) if on) or NO_FINDING for row in labels]
    return [task.class_names[i] for i in labels]


def evaluate(model, task: Union[str, ZeroShotTask], csv_path: str, data_root: Optional[str] = None, *,
             batch_size: int = 64, num_workers: int = 4, device=None, precision: str = "fp32",
             logit_scale: str = "base", scoring: Optional[str] = None, skip_unreadable: bool = False,
             n_bootstrap: int = 1000, seed: int = 0, progress: bool = True, image_cache: Optional[str] = None,
             image_cache_rebuild: bool = False) -> ZeroShotResult:
    """Zero-shot evaluation of `model` (an AceLoRAModel) on the data set `task` listed in `csv_path`.

    data_root: folder that relative image paths start from (default: the CSV's folder).
    device: None = where the model is; otherwise the model is moved there. precision: fp32, bf16,
    fp16 or auto (autocast on CUDA). scoring: None = the task's default (see `TASKS[task].scorings`).
    The model is put in eval mode and its training mode restored afterwards. image_cache: a cache folder of
    the `eval` transform (data/image_cache.py) to read the pixels from, built first where there is none;
    the results are those of the image files, bit for bit.
    `metrics['images_per_second']` times the image stage (loading, preprocessing, encoding, scoring).
    """
    task = get_task(task) if isinstance(task, str) else task
    scoring = scoring or task.scorings[0]
    if scoring not in task.scorings:
        raise UserInputError(f"{task.name}: scoring must be one of {', '.join(task.scorings)}, not {scoring!r}")
    if batch_size < 1 or num_workers < 0:
        raise UserInputError(f"batch size must be >= 1 and workers >= 0 (got {batch_size}, {num_workers})")
    table = read_table(csv_path, task.required_columns, dtype={task.id_column: str, task.image_column: str})
    if table.empty:
        raise UserInputError(f"{csv_path}: no rows to evaluate")
    labels = task.read_labels(table, csv_path)
    data_root = data_root_for(csv_path, data_root)
    if not os.path.isdir(data_root):
        raise UserInputError(f"data root not found: {data_root}")
    ids = table[task.id_column].astype(str).tolist()

    paths = task.image_paths(table, data_root)
    missing = {row: _missing_message(ids[row], path, data_root)
               for row, path in enumerate(paths) if path is None or not os.path.isfile(path)}
    if missing and not skip_unreadable:
        first = next(iter(missing.values()))
        raise UserInputError(f"{csv_path}: {len(missing)} image(s) not found, first: {first} "
                             f"(pass --skip-unreadable to count and skip them)")
    rows = [row for row in range(len(paths)) if row not in missing]  # dataset position -> CSV row
    images = image_source([paths[row] for row in rows], model.eval_pixels, cache=image_cache,
                          rebuild=image_cache_rebuild, csv=csv_path, num_workers=num_workers,
                          skip_unreadable=skip_unreadable, progress=progress)

    device = _model_device(model, device)
    precision = resolve_precision(precision, device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            class_emb = class_embeddings(model, task, device)  # (C, D)
            scale = temperature(model, logit_scale)
            found_scores, failures, images_per_second = _embed_and_score(
                model, images, class_emb, scale, scoring, device, precision, batch_size,
                num_workers, skip_unreadable, progress, task.title)
    finally:
        model.train(was_training)

    probabilities = np.full((len(table), len(task.class_names)), np.nan)
    probabilities[rows] = found_scores
    unreadable = {**missing, **{rows[position]: error for position, error in failures.items()}}
    readable = np.ones(len(table), dtype=bool)
    readable[list(unreadable)] = False
    if not readable.any():
        raise UserInputError(f"{csv_path}: none of the {len(table)} images could be read")

    score_fn = multilabel_metrics if task.multilabel else classification_metrics
    metrics = score_fn(labels[readable], probabilities[readable], list(task.class_names),
                       n_bootstrap=n_bootstrap, seed=seed)
    metrics.update({
        "n_rows": int(len(table)),
        "n_unreadable": len(unreadable),
        "unreadable": [{"row": row + 1, task.id_column: ids[row], "error": unreadable[row]}
                       for row in sorted(unreadable)],
        "images_per_second": images_per_second,
    })
    predictions = pd.DataFrame({task.id_column: ids, LABEL_COLUMN: _true_label_names(task, labels)})
    for c, name in enumerate(task.class_names):
        predictions[name] = probabilities[:, c]
    settings = {
        "task": task.name, "csv": os.path.abspath(csv_path), "data_root": os.path.abspath(data_root),
        "class_names": list(task.class_names), "templates": list(task.templates), "prompts": task.prompts,
        "scoring": scoring, "logit_scale": logit_scale, "temperature": scale if scoring == SOFTMAX else None,
        "device": str(device), "precision": precision, "batch_size": batch_size,
        "n_bootstrap": n_bootstrap, "seed": seed,
    }
    return ZeroShotResult(task=task.name, class_names=list(task.class_names), ids=ids, labels=labels,
                          probabilities=probabilities, readable=readable, metrics=metrics,
                          predictions=predictions, settings=settings)


# --------------------------------------------------------------------------- outputs


def write_outputs(result: ZeroShotResult, output_dir: str, config: Optional[dict] = None) -> Dict[str, str]:
    """predictions.csv, metrics.json (metrics, resolved settings, `config`), roc.png (multi-label: one
    curve per class) and, for single-label tasks, confusion_matrix.png (figures over the readable
    images). Returns {file kind: path}."""
    prepare_output_dir(output_dir)
    paths = {name: os.path.join(output_dir, file) for name, file in
             (("predictions", "predictions.csv"), ("metrics", "metrics.json"))}
    result.predictions.to_csv(paths["predictions"], index=False)
    document = {"task": result.task, "metrics": result.metrics, "settings": result.settings,
                "config": json.loads(json.dumps(config or {}, default=str))}
    with open(paths["metrics"], "w", encoding="utf-8") as f:
        json.dump(strict_json(document), f, indent=2, allow_nan=False)
    labels, probs = result.labels[result.readable], result.probabilities[result.readable]
    title = TASKS[result.task].title
    paths["roc"] = os.path.join(output_dir, "roc.png")
    plot_roc(labels, probs, result.class_names, paths["roc"], title=f"{title}: ROC")
    if not TASKS[result.task].multilabel:
        paths["confusion_matrix"] = os.path.join(output_dir, "confusion_matrix.png")
        plot_confusion_matrix(labels, probs.argmax(axis=1), result.class_names, paths["confusion_matrix"],
                              title=f"{title}: confusion matrix")
    return paths


def _with_ci(metrics: dict, key: str) -> str:
    """'0.8123  (95% CI 0.7001-0.9002)'; without the interval when there is none (--bootstrap 0)."""
    value = "n/a" if metrics[key] is None or not math.isfinite(metrics[key]) else f"{metrics[key]:.4f}"
    low, high = metrics.get(f"{key}_ci95") or (None, None)
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return value
    return f"{value}  (95% CI {low:.4f}-{high:.4f})"


def format_summary(result: ZeroShotResult) -> str:
    """A short table: per-class AUROC, accuracy and AUROC with CIs, counts and throughput."""
    metrics, title = result.metrics, TASKS[result.task].title
    lines = [f"{title}: {metrics['n']} images scored, {metrics['n_unreadable']} unreadable skipped"]
    width = max(len(name) for name in [*result.class_names, "AUROC as released"]) + 2
    per_class = metrics.get("per_class_auroc") or {}
    if per_class:
        lines.append(f"{'class':<{width}}AUROC")
        lines += [f"{name:<{width}}{'n/a' if v is None else f'{v:.4f}'}" for name, v in per_class.items()]
    if "accuracy" in metrics:
        lines.append(f"{'accuracy':<{width}}{_with_ci(metrics, 'accuracy')}")
    lines.append(f"{'AUROC':<{width}}{_with_ci(metrics, 'auroc')}")
    if "auroc_released" in metrics:
        lines.append(f"{'AUROC as released':<{width}}{metrics['auroc_released']:.4f}  (flattened one-hot table)")
    for entry in metrics["unreadable"][:5]:
        lines.append(f"unreadable row {entry['row']}: {entry['error']}")
    lines.append(f"{metrics['images_per_second']:.1f} images/s")
    return "\n".join(lines)
