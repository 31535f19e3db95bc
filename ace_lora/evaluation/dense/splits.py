"""The dataset_prep CSVs of the dense benchmarks, and the training subsets drawn from them.

SIIM `siim_segmentation_{train,val,test}.csv`: ImageId, image_path, mask_path, has_pneumothorax.
RSNA `rsna_detection_{train,val,test}.csv`: patientId, Path, boxes (JSON [[x1, y1, x2, y2], ...] in
pixels of the original image). Relative paths start at the data root (default: the CSV's folder).
Every listed file must exist: a benchmark on silently fewer images would not be comparable.
`check_decodable` also opens every file cheaply (headers, not pixels) so that a damaged one stops
the run before any encoding or training.
"""
import json
import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import pydicom
from PIL import Image
from tqdm import tqdm

from ace_lora.data.images import is_dicom
from ace_lora.data.paths import data_root_for, resolve_path
from ace_lora.data.tables import read_table, row_name, shown_value
from ace_lora.errors import UserInputError
from ace_lora.evaluation.dense.definitions import IMAGE_FILE, MASK_FILE, SPLITS, SplitLayout


def split_csv_paths(layout: SplitLayout, split_dir: Optional[str], explicit: Dict[str, Optional[str]],
                    splits: Sequence[str] = SPLITS) -> Dict[str, str]:
    """{split: CSV path} for `splits`: an explicit --<split>-csv wins, else <split_dir>/<prefix>_<split>.csv."""
    paths = {}
    for split in splits:
        path = explicit.get(split)
        if path is None and split_dir is not None:
            path = os.path.join(split_dir, f"{layout.prefix}_{split}.csv")
        if path is None:
            raise UserInputError(f"no {split} CSV: pass --{split}-csv or --split-dir "
                                 f"(a folder with {layout.prefix}_{split}.csv)")
        paths[split] = path
    return paths


def _missing_files(paths: List[str]) -> List[str]:
    return [path for path in paths if not os.path.isfile(path)]


def _parse_boxes(text: str, where: str) -> List[List[float]]:
    try:
        boxes = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        boxes = None
    valid = isinstance(boxes, list) and all(
        isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
        and box[2] > box[0] and box[3] > box[1] for box in boxes)
    if not valid:
        raise UserInputError(f"{where}: boxes must be a JSON list of [x1, y1, x2, y2] with x2 > x1 and y2 > y1, "
                             f"got {text!r}")
    return [[float(v) for v in box] for box in boxes]


def read_split(layout: SplitLayout, csv_path: str, data_root: Optional[str] = None) -> pd.DataFrame:
    """The CSV with resolved `image_file` (and `mask_file`) columns; detection boxes parsed to lists.

    Raises UserInputError for a missing column, an empty table, a repeated id, a bad label or box, or
    any listed file that does not exist.
    """
    text_columns = [c for c in (layout.id_column, layout.image_column, layout.mask_column) if c]
    table = read_table(csv_path, layout.columns, dtype={c: str for c in text_columns})
    if table.empty:
        raise UserInputError(f"{csv_path}: no rows")
    repeated = table[layout.id_column][table[layout.id_column].duplicated()]
    if len(repeated):
        raise UserInputError(f"{csv_path}: {layout.id_column} {repeated.iloc[0]} appears more than once")
    root = data_root_for(csv_path, data_root)
    table[IMAGE_FILE] = [resolve_path(p, root) for p in table[layout.image_column]]
    file_columns = [IMAGE_FILE]
    if layout.mask_column:
        table[MASK_FILE] = [resolve_path(p, root) for p in table[layout.mask_column]]
        file_columns.append(MASK_FILE)
    for column in file_columns:
        missing = _missing_files(table[column].tolist())
        if missing:
            raise UserInputError(f"{csv_path}: {len(missing)} of {len(table)} {column.replace('_', ' ')}s not found, "
                                 f"first: {missing[0]} (relative paths start at --data-root, default the CSV's folder)")
    if layout.label_column:
        labels = pd.to_numeric(table[layout.label_column], errors="coerce")
        bad = ~labels.isin([0, 1])
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise UserInputError(f"{csv_path}: {row_name(table, row, layout.id_column)}: {layout.label_column} "
                                 f"must be 0 or 1, got {shown_value(table[layout.label_column].iloc[row])}")
        table[layout.label_column] = labels.astype(int)
    if layout.boxes_column:
        table[layout.boxes_column] = [
            _parse_boxes(text, f"{csv_path}: {row_name(table, row, layout.id_column)}")
            for row, text in enumerate(table[layout.boxes_column])]
    return table.reset_index(drop=True)


def _ends_with_jpeg_eoi(path: str, tail: int = 4096) -> bool:
    """A whole JPEG ends with the end-of-image marker FFD9 (padding after it is tolerated)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - tail))
        return b"\xff\xd9" in f.read()


def decode_error(path: str) -> Optional[str]:
    """None if `path` looks decodable, else a one-line reason. Cheap: DICOM header only (it must name
    Rows and Columns, as every image does), PIL's verify() for PNG/JPEG (structure and checksums; a
    truncated PNG fails there), and for JPEG the end-of-image marker, which verify() does not read."""
    try:
        if is_dicom(path):
            header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            if "Rows" not in header or "Columns" not in header:
                return "DICOM header has no Rows/Columns (not an image)"
        else:
            with Image.open(path) as image:
                image_format = image.format
                image.verify()
            if image_format == "JPEG" and not _ends_with_jpeg_eoi(path):
                return "truncated JPEG (no end-of-image marker)"
    except Exception as error:  # PIL and pydicom raise many types for damaged or foreign files
        return " ".join(f"{type(error).__name__}: {error}".split())
    return None


def check_decodable(table: pd.DataFrame, csv_path: str, progress: bool = True) -> None:
    """UserInputError (one line, with a count and the first file) if any image or mask of a
    `read_split` table cannot be opened; see `decode_error`."""
    columns = [column for column in (IMAGE_FILE, MASK_FILE) if column in table]
    paths = [path for column in columns for path in table[column]]
    errors = [(path, reason) for path in tqdm(paths, desc=f"checking {os.path.basename(csv_path)}", unit="file",
                                              disable=not progress)
              if (reason := decode_error(path)) is not None]
    if errors:
        path, reason = errors[0]
        raise UserInputError(f"{csv_path}: {len(errors)} of {len(paths)} files cannot be decoded, first: {path} "
                             f"({reason})")


def _seeded_sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """`n` rows drawn without replacement (seeded), kept in CSV order."""
    chosen = np.random.default_rng(seed).choice(len(frame), size=n, replace=False)
    return frame.iloc[np.sort(chosen)]


def balanced_subset(frame: pd.DataFrame, label_column: str, seed: int) -> pd.DataFrame:
    """All positives plus as many negatives, drawn with `seed` (the MGCA SIIM training set), CSV order.

    With fewer negatives than positives, all negatives are kept.
    """
    is_positive = frame[label_column].astype(bool).to_numpy()
    negatives = frame[~is_positive]
    negatives = _seeded_sample(negatives, min(int(is_positive.sum()), len(negatives)), seed)
    return frame[is_positive | frame.index.isin(negatives.index)]


def fraction_subset(frame: pd.DataFrame, fraction: float, seed: int,
                    stratify_column: Optional[str] = None) -> pd.DataFrame:
    """round(fraction * n) rows (at least one) drawn with `seed`, per value of `stratify_column` if given."""
    if not 0 < fraction <= 1:
        raise UserInputError(f"--train-fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return frame
    groups = [frame] if stratify_column is None else [g for _, g in frame.groupby(stratify_column, sort=True)]
    keep = [_seeded_sample(g, max(1, int(round(fraction * len(g)))), seed).index for g in groups]
    return frame[frame.index.isin(np.concatenate(keep))]
