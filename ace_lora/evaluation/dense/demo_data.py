"""Synthetic demo data in the dataset_prep layouts: noisy grey images with bright elliptical targets.

SIIM-like: `siim_segmentation_{train,val,test}.csv` with 0/255 mask PNGs (one ellipse on a positive
image, none on a negative one). RSNA-like: `rsna_detection_{train,val,test}.csv` with one or two
ellipses per positive image and their tight boxes. Paths are relative to the output folder (the
CSVs' folder), as the benchmarks resolve them by default. Deterministic for a given seed.
"""
import json
import os
from typing import Dict, List, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from ace_lora.evaluation.dense.splits import SPLITS

DEMO_SPLIT_SIZES = (96, 32, 32)  # train, val, test


def _ellipse(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) bool: a randomly placed, sized and rotated ellipse."""
    cy, cx = rng.uniform(0.3, 0.7, size=2) * size
    a, b = rng.uniform(0.12, 0.22, size=2) * size
    angle = rng.uniform(0, np.pi)
    y, x = np.mgrid[:size, :size] + 0.5
    u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def _image(targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(size, size) uint8: a smooth dark gradient with noise, brighter where `targets` is set."""
    size = targets.shape[0]
    ramp = np.linspace(0, 30, size)
    gradient = ramp[None, :] * rng.uniform(-1, 1) + ramp[:, None] * rng.uniform(-1, 1)
    image = 70 + gradient + rng.normal(0, 18, (size, size)) + 110 * targets
    return np.clip(image, 0, 255).astype(np.uint8)


def _separate_ellipses(size: int, count: int, rng: np.random.Generator, attempts: int = 50) -> List[np.ndarray]:
    """`count` non-overlapping ellipses (fewer only if `attempts` draws do not find room)."""
    ellipses: List[np.ndarray] = []
    for _ in range(attempts):
        if len(ellipses) == count:
            break
        candidate = _ellipse(size, rng)
        if not any((candidate & e).any() for e in ellipses):
            ellipses.append(candidate)
    return ellipses


def _tight_box(mask: np.ndarray) -> List[float]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def _write_splits(rows: List[dict], out_dir: str, prefix: str, split_sizes: Sequence[int]) -> Dict[str, str]:
    table = pd.DataFrame(rows)
    paths, start = {}, 0
    for split, n in zip(SPLITS, split_sizes):
        paths[split] = os.path.join(out_dir, f"{prefix}_{split}.csv")
        table.iloc[start:start + n].to_csv(paths[split], index=False)
        start += n
    return paths


def write_siim_demo(out_dir: str, split_sizes: Sequence[int] = DEMO_SPLIT_SIZES, size: int = 160,
                    positive_fraction: float = 0.7, seed: int = 0) -> Dict[str, str]:
    """Images, masks and siim_segmentation_{train,val,test}.csv under `out_dir`; returns {split: CSV}."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "masks"), exist_ok=True)
    rows = []
    for i in range(sum(split_sizes)):
        image_id = f"siim_demo_{i:04d}"
        mask = _ellipse(size, rng) if rng.random() < positive_fraction else np.zeros((size, size), dtype=bool)
        image_path, mask_path = f"images/{image_id}.png", f"masks/{image_id}.png"
        Image.fromarray(_image(mask, rng)).save(os.path.join(out_dir, image_path))
        Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(out_dir, mask_path))
        rows.append({"ImageId": image_id, "image_path": image_path, "mask_path": mask_path,
                     "has_pneumothorax": int(mask.any())})
    return _write_splits(rows, out_dir, "siim_segmentation", split_sizes)


def write_rsna_demo(out_dir: str, split_sizes: Sequence[int] = DEMO_SPLIT_SIZES, size: int = 160,
                    negative_fraction: float = 0.15, seed: int = 0) -> Dict[str, str]:
    """Images and rsna_detection_{train,val,test}.csv (boxes in image pixels) under `out_dir`."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    rows = []
    for i in range(sum(split_sizes)):
        patient_id = f"rsna_demo_{i:04d}"
        count = 0 if rng.random() < negative_fraction else int(rng.integers(1, 3))
        ellipses = _separate_ellipses(size, count, rng)
        targets = np.any(ellipses, axis=0) if ellipses else np.zeros((size, size), dtype=bool)
        path = f"images/{patient_id}.png"
        Image.fromarray(_image(targets, rng)).save(os.path.join(out_dir, path))
        rows.append({"patientId": patient_id, "Path": path, "boxes": json.dumps([_tight_box(e) for e in ellipses])})
    return _write_splits(rows, out_dir, "rsna_detection", split_sizes)


