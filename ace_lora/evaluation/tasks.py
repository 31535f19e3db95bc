"""Zero-shot task definitions: classes, prompts, and how each data set's CSV gives images and labels.

One `ZeroShotTask` per data set in `TASKS`. The chest X-ray tasks use the released prompt ensemble;
the pathology tasks use two H&E templates of our own (the release has no pathology evaluation).
Each task reads the CSV that `dataset_prep/` writes (or, for CheXpert, the official 5x200 file):

| task     | image column                  | labels                                   | scoring          |
|----------|-------------------------------|------------------------------------------|------------------|
| chexpert | Path                          | the one of 5 class columns set to 1      | softmax          |
| rsna     | Path (DICOM)                  | Target 0/1                               | softmax (binary) |
| siim     | ImageId -> <ImageId>.png/.dcm | Label 0/1                                | softmax (binary) |
| nih      | Path                          | 14 columns 0/1 (multi-label)             | released, cosine |
| lc25000  | Path                          | label = class folder (lung_aca, ...)     | softmax          |
| mhist    | Path                          | label HP / SSA                           | softmax (binary) |
"""
import dataclasses
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
import pandas as pd

from ace_lora.data.labels import (
    CHEXPERT_5X200_CLASSES,
    LC25000_CLASSES,
    MHIST_CLASSES,
    NIH_LABELS,
    RSNA_CLASSES,
    SIIM_CLASSES,
)
from ace_lora.data.paths import index_siim_images, resolve_path
from ace_lora.data.prompts import CHEST_XRAY_TEMPLATES, PATHOLOGY_TEMPLATES, class_major_prompts
from ace_lora.data.tables import row_name, shown_value
from ace_lora.errors import UserInputError

# Scorings turn cosine similarities (B, C) into the per-class scores that are written and evaluated.
SOFTMAX = "softmax"  # softmax(scale * cosine): single-label probabilities
NIH_RELEASED = "released"  # per image (exp(c) - min) / (max - min) over its classes, as released for NIH
COSINE = "cosine"  # plain cosine similarity
LOGIT_SCALES = ("base", "learned")  # the softmax temperature: the backbone's exp(logit_scale), or the learned one


@dataclass(frozen=True)
class ZeroShotTask:
    name: str
    title: str
    class_names: Tuple[str, ...]  # score order; also the prediction column names
    prompt_names: Tuple[str, ...]  # what fills {} in each template, same order as class_names
    templates: Tuple[str, ...]
    id_column: str  # identifies the image in predictions.csv
    image_column: str  # the column `image_paths` reads
    label_columns: Tuple[str, ...]  # label columns the CSV must have
    read_labels: Callable[[pd.DataFrame, str], np.ndarray]  # (table, csv) -> (N,) class index or (N, C) 0/1
    image_paths: Callable[[pd.DataFrame, str], List[Optional[str]]]  # (table, root) -> paths, None if not found
    multilabel: bool = False
    scorings: Tuple[str, ...] = (SOFTMAX,)  # the first is the default

    @property
    def prompts(self) -> List[str]:
        return class_major_prompts(self.prompt_names, self.templates)

    @property
    def required_columns(self) -> Tuple[str, ...]:
        return tuple(dict.fromkeys((self.id_column, self.image_column, *self.label_columns)))


# --------------------------------------------------------------------------- image paths


def path_column_images(table: pd.DataFrame, data_root: str) -> List[Optional[str]]:
    """`Path` column resolved against `data_root`."""
    return [resolve_path(path, data_root) for path in table["Path"]]


def siim_image_paths(table: pd.DataFrame, data_root: str) -> List[Optional[str]]:
    """`<data_root>/<ImageId>.png` where it exists; otherwise the `.png`/`.dcm` found anywhere under
    `data_root` (the folder is walked once, only if needed); None where neither exists."""
    direct = [os.path.join(data_root, f"{image_id}.png") for image_id in table["ImageId"]]
    if all(os.path.isfile(path) for path in direct):
        return direct
    index = index_siim_images(data_root)
    return [path if os.path.isfile(path) else index.get(str(image_id))
            for path, image_id in zip(direct, table["ImageId"])]


# --------------------------------------------------------------------------- labels


def binary_column(column: str, id_column: str) -> Callable[[pd.DataFrame, str], np.ndarray]:
    """Labels from a 0/1 column; any other value is an error naming the row."""
    def read(table: pd.DataFrame, csv_path: str) -> np.ndarray:
        values = pd.to_numeric(table[column], errors="coerce")
        bad = np.flatnonzero(~values.isin([0, 1]).to_numpy())
        if len(bad):
            raise UserInputError(f"{csv_path}: {row_name(table, bad[0], id_column)}: {column} must be 0 or 1, "
                                 f"not {shown_value(table[column].iloc[bad[0]])}")
        return values.to_numpy().astype(int)
    return read


def one_hot_columns(columns: Tuple[str, ...], id_column: str) -> Callable[[pd.DataFrame, str], np.ndarray]:
    """The index of the one column (of `columns`) set to 1 per row; none or several is an error."""
    def read(table: pd.DataFrame, csv_path: str) -> np.ndarray:
        values = table[list(columns)].apply(pd.to_numeric, errors="coerce")
        invalid = ~values.isin([0, 1]).to_numpy()  # (N, C): text such as 'yes', other numbers, blanks
        if invalid.any():
            row, col = np.argwhere(invalid)[0]
            raise UserInputError(f"{csv_path}: {row_name(table, row, id_column)}: {columns[col]} must be 0 or 1, "
                                 f"not {shown_value(table[columns[col]].iloc[row])}")
        is_set = values.eq(1).to_numpy()  # (N, C)
        bad = np.flatnonzero(is_set.sum(axis=1) != 1)
        if len(bad):
            row = bad[0]
            set_names = [name for name, on in zip(columns, is_set[row]) if on]
            raise UserInputError(f"{csv_path}: {row_name(table, row, id_column)} must have exactly one of "
                                 f"{', '.join(columns)} set to 1, has {len(set_names)}"
                                 f"{' (' + ', '.join(set_names) + ')' if set_names else ''}"
                                 f"; {len(bad)} such row(s) in all")
        return is_set.argmax(axis=1)
    return read


def multilabel_columns(columns: Tuple[str, ...], id_column: str) -> Callable[[pd.DataFrame, str], np.ndarray]:
    """(N, C) 0/1 targets from one 0/1 column per class."""
    def read(table: pd.DataFrame, csv_path: str) -> np.ndarray:
        values = table[list(columns)].apply(pd.to_numeric, errors="coerce")
        bad = np.flatnonzero(~values.isin([0, 1]).all(axis=1).to_numpy())
        if len(bad):
            raise UserInputError(f"{csv_path}: {row_name(table, bad[0], id_column)}: the label columns must be "
                                 f"0 or 1")
        return values.to_numpy().astype(int)
    return read


def categorical_column(column: str, values: Tuple[str, ...], id_column: str
                       ) -> Callable[[pd.DataFrame, str], np.ndarray]:
    """The position in `values` of each row's `column` value; an unknown value is an error naming the row."""
    def read(table: pd.DataFrame, csv_path: str) -> np.ndarray:
        labels = table[column].astype(str).str.strip()
        bad = np.flatnonzero(~labels.isin(values).to_numpy())
        if len(bad):
            raise UserInputError(f"{csv_path}: {row_name(table, bad[0], id_column)}: {column} "
                                 f"{shown_value(table[column].iloc[bad[0]])} is not one of {', '.join(values)}")
        return labels.map({value: i for i, value in enumerate(values)}).to_numpy().astype(int)
    return read


# --------------------------------------------------------------------------- the tasks


# What fills {} in the NIH prompts: the data set's raw label names, as the released evaluation
# ('Pleural_Thickening'), or a readable spelling ('Pleural Thickening').
NIH_PROMPT_NAMES = {"raw": NIH_LABELS, "readable": tuple(name.replace("_", " ") for name in NIH_LABELS)}


TASKS = {
    task.name: task for task in (
        ZeroShotTask(
            name="chexpert", title="CheXpert 5x200", class_names=CHEXPERT_5X200_CLASSES,
            prompt_names=CHEXPERT_5X200_CLASSES, templates=CHEST_XRAY_TEMPLATES,
            id_column="Path", image_column="Path", label_columns=CHEXPERT_5X200_CLASSES,
            read_labels=one_hot_columns(CHEXPERT_5X200_CLASSES, "Path"), image_paths=path_column_images),
        ZeroShotTask(
            name="rsna", title="RSNA Pneumonia", class_names=RSNA_CLASSES,
            prompt_names=RSNA_CLASSES, templates=CHEST_XRAY_TEMPLATES,
            id_column="Path", image_column="Path", label_columns=("Target",),
            read_labels=binary_column("Target", "Path"), image_paths=path_column_images),
        ZeroShotTask(
            name="siim", title="SIIM-ACR Pneumothorax", class_names=SIIM_CLASSES,
            prompt_names=SIIM_CLASSES, templates=CHEST_XRAY_TEMPLATES,
            id_column="ImageId", image_column="ImageId", label_columns=("Label",),
            read_labels=binary_column("Label", "ImageId"), image_paths=siim_image_paths),
        ZeroShotTask(
            name="nih", title="NIH ChestX-ray14", class_names=NIH_LABELS,
            prompt_names=NIH_PROMPT_NAMES["raw"], templates=CHEST_XRAY_TEMPLATES,
            id_column="Path", image_column="Path", label_columns=NIH_LABELS,
            read_labels=multilabel_columns(NIH_LABELS, "Path"), image_paths=path_column_images,
            multilabel=True, scorings=(NIH_RELEASED, COSINE)),
        ZeroShotTask(
            name="lc25000", title="LC25000", class_names=tuple(LC25000_CLASSES.values()),
            prompt_names=tuple(LC25000_CLASSES.values()), templates=PATHOLOGY_TEMPLATES,
            id_column="Path", image_column="Path", label_columns=("label",),
            read_labels=categorical_column("label", tuple(LC25000_CLASSES), "Path"), image_paths=path_column_images),
        ZeroShotTask(
            name="mhist", title="MHIST", class_names=tuple(MHIST_CLASSES.values()),
            prompt_names=tuple(MHIST_CLASSES.values()), templates=PATHOLOGY_TEMPLATES,
            id_column="Path", image_column="Path", label_columns=("label",),
            read_labels=categorical_column("label", tuple(MHIST_CLASSES), "Path"), image_paths=path_column_images),
    )
}


def get_task(name: str, nih_prompt_names: str = "raw") -> ZeroShotTask:
    """The task called `name`; for NIH, with the prompt spelling `nih_prompt_names` (see NIH_PROMPT_NAMES)."""
    if name not in TASKS:
        raise UserInputError(f"unknown zero-shot task {name!r}; choose from {', '.join(TASKS)}")
    if nih_prompt_names not in NIH_PROMPT_NAMES:
        raise UserInputError(f"NIH prompt names must be one of {', '.join(NIH_PROMPT_NAMES)}, not {nih_prompt_names!r}")
    if name == "nih":
        return dataclasses.replace(TASKS[name], prompt_names=NIH_PROMPT_NAMES[nih_prompt_names])
    return TASKS[name]


RETRIEVAL = "retrieval"  # image-text retrieval on a CSV of images and reports (evaluation/retrieval.py)
EVAL_TASKS = tuple(TASKS) + (RETRIEVAL,)  # what --eval-datasets accepts


def parse_eval_specs(specs: List[str]) -> List[Tuple[str, str, Optional[str]]]:
    """'TASK:CSV[:ROOT]' -> (task, csv, root or None)."""
    parsed = []
    for spec in specs:
        parts = spec.split(":", 2)
        if len(parts) < 2 or parts[0] not in EVAL_TASKS:
            raise UserInputError(f"--eval-datasets entry {spec!r} must be TASK:CSV[:ROOT] with TASK one of "
                                 f"{', '.join(EVAL_TASKS)}")
        parsed.append((parts[0], parts[1], parts[2] if len(parts) == 3 else None))
    tasks = [task for task, _, _ in parsed]
    if len(set(tasks)) != len(tasks):
        raise UserInputError("--eval-datasets lists a task twice")
    return parsed
