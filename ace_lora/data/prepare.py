"""Turn the raw downloads of the evaluation data sets into the CSV files the evaluation reads.

One `prepare_*` function per data set (the scripts in `dataset_prep/` only parse arguments and call
them). Every output goes through `write_split_csvs`, which prints what it wrote. Split fractions and
seeds follow the released ACE-LoRA preparation code so that the test sets are the paper's:
RSNA 15% test and 70/15/15 detection (random_state=0, patients sorted by patientId, not stratified),
SIIM 30% test sample (random_state=42, unique images in file order), NIH: of the data-entry rows whose
image is in test_list.txt, the first (in data-entry order) 20% of the test list's length (the release's
validation set), and the rest less those patients as a held-out test set.

Image and mask paths in the CSVs are relative to the folder the CSV is written to (`output_dir`),
whatever the working directory of the preparation run and whether the inputs were given as relative
or absolute paths: the evaluation scripts resolve relative paths against the CSV's own folder by
default, so the CSVs work wherever they are read from as long as the data and CSVs move together.
(RSNA `absolute_paths=True` writes absolute paths instead.) The SIIM zero-shot CSVs hold only
ImageId: their images are found under the evaluation's --data-root (default: the CSV's folder).
"""
import json
import os
import re
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import train_test_split

from ace_lora.data.labels import LC25000_CLASSES, MHIST_CLASSES, NIH_LABELS, NIH_NO_FINDING
from ace_lora.data.paths import RSNA_IMAGE_DIR, data_root_for, index_siim_images
from ace_lora.data.rle import merge_rles
from ace_lora.data.tables import read_table, row_name, row_number
from ace_lora.errors import UserInputError
from ace_lora.io import check_output_dir, prepare_output_dir

RSNA_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
MAX_EXAMPLES = 5


def require_ids(table: pd.DataFrame, column: str, source: str) -> None:
    """Every row names its image or patient: an empty id is an error naming the row."""
    empty = (table[column].isna() | (table[column].astype(str).str.strip() == "")).to_numpy()
    if empty.any():
        raise UserInputError(f"{source}: row {row_number(np.flatnonzero(empty)[0])}: empty {column} "
                             f"({int(empty.sum())} such row(s))")


def path_from(output_dir: str, path: str) -> str:
    """`path` relative to `output_dir`, the folder of the CSV that lists it (see the module docstring)."""
    return os.path.relpath(os.path.abspath(path), os.path.abspath(output_dir))


def report_excluded(items: Sequence[str], reason: str) -> None:
    """Print how many items were left out and why, with a few examples."""
    if len(items):
        examples = ", ".join(map(str, items[:MAX_EXAMPLES])) + (", ..." if len(items) > MAX_EXAMPLES else "")
        print(f"excluded {len(items)} {reason}: {examples}")


def write_split_csvs(splits: Mapping[str, pd.DataFrame], output_dir: str, count_by: Optional[str] = None,
                     label_columns: Sequence[str] = ()) -> List[str]:
    """Write each frame to `output_dir/<file name>` and print its row count and class counts.

    `count_by` names a class column to count values of; `label_columns` are 0/1 multi-label columns
    whose positives are counted. A selection that ended with no rows is an error, and then nothing is
    written.
    """
    prepare_output_dir(output_dir)
    empty = [file_name for file_name, frame in splits.items() if frame.empty]
    if empty:
        raise UserInputError(f"{', '.join(empty)} would have no rows: nothing written (see the selection and "
                             "exclusions above)")
    paths = []
    for file_name, frame in splits.items():
        path = os.path.join(output_dir, file_name)
        frame.to_csv(path, index=False)
        counts = []
        if count_by is not None:
            counts += [f"{count_by}={value}: {n}" for value, n in frame[count_by].value_counts().sort_index().items()]
        counts += [f"{label}: {int(frame[label].sum())}" for label in label_columns]
        print(f"wrote {path}: {len(frame)} rows" + (f" ({', '.join(counts)})" if counts else ""))
        paths.append(path)
    return paths


def split_off(frame: pd.DataFrame, test_size: float, seed: int) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(rest, held out) with sklearn's train_test_split, not stratified; too few rows is a user error."""
    try:
        return tuple(train_test_split(frame, test_size=test_size, random_state=seed))
    except ValueError as error:
        raise UserInputError(f"cannot split {len(frame)} rows: {error}") from None


def split_train_val_test(frame: pd.DataFrame, seed: int) -> Tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """70/15/15 split: 30% held out with `seed`, then halved into val and test with the same seed."""
    train, held_out = split_off(frame, 0.3, seed)
    return (train, *split_off(held_out, 0.5, seed))


# RSNA Pneumonia -------------------------------------------------------------------------------------

def aggregate_rsna_boxes(labels: pd.DataFrame, source: str) -> pd.DataFrame:
    """One row per patient, sorted by patientId: Target (1 if it has a box) and `boxes`, a JSON list of
    [x1, y1, x2, y2] in pixels of the 1024x1024 image ('[]' for negatives)."""
    require_ids(labels, "patientId", source)
    box = labels[["x", "y", "width", "height"]].apply(pd.to_numeric, errors="coerce")
    target = pd.to_numeric(labels["Target"], errors="coerce")
    has_box = box.notna().all(axis=1)
    bad = ~target.isin([0, 1]) | (target.eq(1) & ~has_box) | (target.eq(0) & box.notna().any(axis=1))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise UserInputError(f"{source}: {row_name(labels, row, 'patientId')}: Target must be "
                             f"1 with a full box (x, y, width, height) or 0 with an empty box")
    flat = has_box & ((box["width"] <= 0) | (box["height"] <= 0) | (box["x"] < 0) | (box["y"] < 0))
    if flat.any():
        row = int(np.flatnonzero(flat)[0])
        raise UserInputError(f"{source}: {row_name(labels, row, 'patientId')}: the box needs x, y >= 0 and width, "
                             f"height > 0, got {', '.join(f'{k} {box[k].iloc[row]:g}' for k in box.columns)}")
    boxes = {}
    for patient, x, y, w, h in zip(labels["patientId"][has_box], *box[has_box].to_numpy(float).T):
        boxes.setdefault(patient, []).append([float(x), float(y), float(x + w), float(y + h)])
    patients = pd.DataFrame({"patientId": sorted(labels["patientId"].unique())})
    patients["Target"] = [int(patient in boxes) for patient in patients["patientId"]]
    patients["boxes"] = [json.dumps(boxes.get(patient, [])) for patient in patients["patientId"]]
    return patients


def prepare_rsna(labels_csv: str, output_dir: str, data_root: Optional[str] = None,
                 image_dir: str = RSNA_IMAGE_DIR, absolute_paths: bool = False,
                 check_images: bool = False) -> List[str]:
    """Zero-shot split over all patients (rsna_train.csv 85% / rsna_test.csv 15%) and detection split
    over positive patients (rsna_detection_{train,val,test}.csv, 70/15/15), both with random_state=0.

    Images are `<data_root>/<image_dir>/<patientId>.dcm` (data_root default: the folder of the labels
    CSV); Path is written relative to `output_dir` (the CSVs' folder), or absolute if `absolute_paths`.
    The classification split is not stratified, as in the released code,
    so that the test set is the paper's; with 26,684 patients its positive rate stays close to 22.5%.
    """
    check_output_dir(output_dir)
    labels = read_table(labels_csv, RSNA_COLUMNS, dtype={"patientId": str})
    patients = aggregate_rsna_boxes(labels, labels_csv)
    data_root = data_root_for(labels_csv, data_root)
    on_disk = [os.path.join(data_root, image_dir, f"{patient}.dcm") for patient in patients["patientId"]]
    patients["Path"] = [os.path.abspath(path) if absolute_paths else path_from(output_dir, path) for path in on_disk]
    if check_images:
        exists = np.array([os.path.isfile(path) for path in on_disk], dtype=bool)
        report_excluded([path for path, found in zip(on_disk, exists) if not found], "patients without an image file")
        patients = patients[exists]
    patients = patients[["patientId", "Path", "Target", "boxes"]]
    train, test = split_off(patients, 0.15, seed=0)
    detection = split_train_val_test(patients.loc[patients["Target"] == 1, ["patientId", "Path", "boxes"]], seed=0)
    return (write_split_csvs({"rsna_train.csv": train, "rsna_test.csv": test}, output_dir, count_by="Target")
            + write_split_csvs(dict(zip(("rsna_detection_train.csv", "rsna_detection_val.csv",
                                         "rsna_detection_test.csv"), detection)), output_dir))


# SIIM-ACR Pneumothorax ------------------------------------------------------------------------------

RLE_PATTERN = re.compile(r"|-1|(\d+ \d+)( \d+ \d+)*")  # no mask (blank or -1), or (start, length) pairs


def read_siim_rles(rle_csv: str) -> pd.DataFrame:
    """`ImageId, EncodedPixels` as stripped strings (stage 1 names the column ' EncodedPixels'); an
    EncodedPixels that is neither -1 nor integer pairs is an error naming the row."""
    rles = read_table(rle_csv, ("ImageId", "EncodedPixels"), dtype=str)
    table = pd.DataFrame({"ImageId": rles["ImageId"].str.strip(),
                          "EncodedPixels": rles["EncodedPixels"].fillna("").str.split().str.join(" ")})
    require_ids(table, "ImageId", rle_csv)
    malformed = [i for i, rle in enumerate(table["EncodedPixels"]) if not RLE_PATTERN.fullmatch(rle)]
    if malformed:
        row = malformed[0]
        raise UserInputError(f"{rle_csv}: {row_name(table, row, 'ImageId')}: EncodedPixels "
                             f"{table['EncodedPixels'].iloc[row][:40]!r} is neither -1 nor run-length pairs "
                             f"({len(malformed)} such row(s))")
    return table


def siim_image_labels(rles: pd.DataFrame) -> pd.DataFrame:
    """`ImageId, Label` per unique image in file order; Label 1 if any of its rows has a mask."""
    has_mask = ~rles["EncodedPixels"].isin(["", "-1"])
    labels = has_mask.groupby(rles["ImageId"], sort=False).any().astype(int)
    return pd.DataFrame({"ImageId": labels.index, "Label": labels.to_numpy()})


def prepare_siim_labels(rle_csv: str, output_dir: str) -> List[str]:
    """Zero-shot labels: siim_test.csv is a 30% sample of unique images (random_state=42, sample order),
    siim_train.csv the other 70% in file order."""
    check_output_dir(output_dir)
    labels = siim_image_labels(read_siim_rles(rle_csv))
    test = labels.sample(n=int(len(labels) * 0.3), random_state=42)
    train = labels.drop(index=test.index)
    return write_split_csvs({"siim_test.csv": test, "siim_train.csv": train}, output_dir, count_by="Label")


def resolve_rle_format(rle_csv: str, rle_format: str) -> bool:
    """True for relative RLE. 'auto' picks by file name: train-rle* is stage 1 (relative), stage_2* is
    stage 2 (absolute); any other name must be told explicitly."""
    if rle_format not in ("auto", "relative", "absolute"):
        raise UserInputError(f"RLE format must be auto, relative or absolute, not {rle_format!r}")
    if rle_format == "auto":
        name = os.path.basename(rle_csv).lower()
        if name.startswith("train-rle"):
            rle_format = "relative"
        elif name.startswith("stage_2"):
            rle_format = "absolute"
        else:
            raise UserInputError(f"{rle_csv}: cannot tell the RLE format from the file name; "
                                 f"choose relative (stage 1) or absolute (stage 2) explicitly")
        print(f"RLE format: {rle_format} (chosen from the file name {name})")
    return rle_format == "relative"


def prepare_siim_masks(rle_csv: str, image_dir: str, output_dir: str, mask_dir: Optional[str] = None,
                       rle_format: str = "auto", height: int = 1024, width: int = 1024,
                       limit: Optional[int] = None) -> List[str]:
    """One 0/255 mask PNG per image, the union of all its rows (empty for negatives), and segmentation
    splits siim_segmentation_{train,val,test}.csv (70/15/15, random_state=0) over the images found.

    Images listed in the CSV without a file under `image_dir` are reported and left out. image_path and
    mask_path are relative to `output_dir` (the CSVs' folder), as `read_split` resolves them by default.
    `limit` keeps the first N images (quick runs).
    """
    if min(height, width) < 1 or (limit is not None and limit < 1):
        raise UserInputError(f"height, width and limit must be at least 1 (got {height}, {width}, {limit})")
    relative = resolve_rle_format(rle_csv, rle_format)
    check_output_dir(output_dir)
    rles = read_siim_rles(rle_csv)
    per_image = rles.groupby("ImageId", sort=False)["EncodedPixels"].agg(list)
    if limit is not None:
        per_image = per_image.iloc[:limit]
    images = index_siim_images(image_dir)
    report_excluded([image for image in per_image.index if image not in images],
                    f"images with a mask row but no .png/.dcm file under {image_dir}")
    per_image = per_image[per_image.index.isin(list(images))]
    mask_dir = os.path.join(output_dir, "masks") if mask_dir is None else mask_dir
    os.makedirs(mask_dir, exist_ok=True)
    rows = []
    for image_id, image_rles in per_image.items():
        try:
            mask = merge_rles(image_rles, height, width, relative=relative)
        except UserInputError as error:
            raise UserInputError(f"{rle_csv}: ImageId {image_id}: {error}") from None
        mask_path = os.path.join(mask_dir, f"{image_id}.png")
        Image.fromarray(mask * 255).save(mask_path)
        rows.append((image_id, path_from(output_dir, images[image_id]), path_from(output_dir, mask_path),
                     int(mask.any())))
    table = pd.DataFrame(rows, columns=["ImageId", "image_path", "mask_path", "has_pneumothorax"])
    print(f"wrote {len(table)} masks ({int(table['has_pneumothorax'].sum())} with pneumothorax) to {mask_dir}")
    splits = split_train_val_test(table, seed=0)
    return write_split_csvs(dict(zip(("siim_segmentation_train.csv", "siim_segmentation_val.csv",
                                      "siim_segmentation_test.csv"), splits)), output_dir, count_by="has_pneumothorax")


# NIH ChestX-ray14 -----------------------------------------------------------------------------------

def nih_one_hot(finding_labels: pd.Series, source: str) -> pd.DataFrame:
    """0/1 columns for NIH_LABELS from '|'-separated Finding Labels; 'No Finding' is all zeros."""
    findings = finding_labels.fillna("").str.split("|").apply(lambda names: {name.strip() for name in names})
    unknown = sorted(set().union(*findings) - set(NIH_LABELS) - {NIH_NO_FINDING}) if len(findings) else []
    if unknown:
        raise UserInputError(f"{source}: unknown label(s) in 'Finding Labels': {', '.join(map(repr, unknown))}")
    return pd.DataFrame({label: findings.apply(lambda names, label=label: int(label in names)).to_numpy()
                         for label in NIH_LABELS})


def prepare_nih(data_entry_csv: str, test_list: str, output_dir: str, fraction: float = 0.2,
                image_dir: Optional[str] = None) -> List[str]:
    """chestxray14_test.csv: int(fraction * len(test_list)) test images, one-hot labelled; and
    chestxray14_heldout.csv: the rest of the test list, less the patients of the first file.

    As released, the images are the first data-entry rows (in data-entry CSV order) whose image is in
    test_list.txt, not the first lines of test_list.txt. The release validates (selects its best epoch) on
    chestxray14_test.csv, so a score on it is not a held-out score: chestxray14_heldout.csv is the part of
    the official test list that selection never saw (no image or patient in common), for reporting. Images
    are `<image_dir>/<Image Index>` (default image_dir: images/ next to the data-entry CSV, the download's
    layout); Path is relative to `output_dir`."""
    if not 0 < fraction <= 1:
        raise UserInputError(f"fraction must be in (0, 1], not {fraction}")
    check_output_dir(output_dir)
    entries = read_table(data_entry_csv, ("Image Index", "Finding Labels"), dtype=str)
    require_ids(entries, "Image Index", data_entry_csv)
    if not os.path.isfile(test_list):
        raise UserInputError(f"{test_list}: file not found")
    try:
        with open(test_list, encoding="utf-8") as handle:
            names = [line.strip() for line in handle if line.strip()]
    except UnicodeDecodeError:
        raise UserInputError(f"{test_list}: not a text file of image names (one per line)") from None
    entries = entries.drop_duplicates("Image Index")
    known = set(entries["Image Index"])
    report_excluded([name for name in names if name not in known], f"test-list images missing from {data_entry_csv}")
    count = int(len(names) * fraction)
    in_test = entries[entries["Image Index"].isin(set(names))].reset_index(drop=True)
    print(f"selected {min(count, len(in_test))} images: the first {count} ({fraction:g} of the {len(names)} in "
          f"{test_list}) in {data_entry_csv} order")
    if image_dir is None:
        image_dir = os.path.join(os.path.dirname(os.path.abspath(data_entry_csv)), "images")

    def one_hot_table(rows: pd.DataFrame) -> pd.DataFrame:
        labels = nih_one_hot(rows["Finding Labels"].reset_index(drop=True), data_entry_csv)
        paths = [path_from(output_dir, os.path.join(image_dir, name)) for name in rows["Image Index"]]
        return pd.concat([pd.DataFrame({"Image Index": rows["Image Index"].tolist(), "Path": paths}), labels], axis=1)

    table = one_hot_table(in_test.iloc[:count])
    patient = in_test["Patient ID"] if "Patient ID" in in_test else in_test["Image Index"].str.split("_").str[0]
    rest = in_test.iloc[count:]
    heldout = rest[~patient.iloc[count:].isin(set(patient.iloc[:count]))]
    print(f"{NIH_NO_FINDING}: {int((table[list(NIH_LABELS)].sum(axis=1) == 0).sum())} images; held out: "
          f"{len(heldout)} of the other {len(rest)} test images ({len(rest) - len(heldout)} share a patient with "
          "the first part)")
    splits = {"chestxray14_test.csv": table}
    if len(heldout):
        splits["chestxray14_heldout.csv"] = one_hot_table(heldout)
    elif os.path.isfile(os.path.join(output_dir, "chestxray14_heldout.csv")):  # an earlier run's, now wrong
        os.remove(os.path.join(output_dir, "chestxray14_heldout.csv"))
        print(f"removed {os.path.join(output_dir, 'chestxray14_heldout.csv')}: no test image is left to hold out")
    return write_split_csvs(splits, output_dir, label_columns=NIH_LABELS)


# Histopathology -------------------------------------------------------------------------------------

def prepare_lc25000(data_root: str, output_dir: str) -> List[str]:
    """lc25000.csv: `Path, label` (label = class folder) for every .jpeg under `data_root`, the folder
    that holds lung_colon_image_set/, sorted by Path; Path is relative to `output_dir`."""
    check_output_dir(output_dir)
    rows, other_files = [], []
    for folder in LC25000_CLASSES:
        class_dir = os.path.join("lung_colon_image_set", f"{folder.split('_')[0]}_image_sets", folder)
        if not os.path.isdir(os.path.join(data_root, class_dir)):
            raise UserInputError(f"{os.path.join(data_root, class_dir)}: LC25000 class folder not found")
        found = len(rows)
        for file_name in os.listdir(os.path.join(data_root, class_dir)):
            path = path_from(output_dir, os.path.join(data_root, class_dir, file_name))
            is_image = file_name.lower().endswith((".jpeg", ".jpg"))
            (rows if is_image else other_files).append((path, folder))
        if len(rows) == found:
            raise UserInputError(f"{os.path.join(data_root, class_dir)}: LC25000 class folder has no .jpeg images")
    report_excluded(sorted(path for path, _ in other_files), "files that are not .jpeg images")
    table = pd.DataFrame(sorted(rows), columns=["Path", "label"])
    return write_split_csvs({"lc25000.csv": table}, output_dir, count_by="label")


def _column_named(table: pd.DataFrame, name: str, source: str) -> str:
    """The column called `name`, or `name (...)` with a description of its values."""
    for column in table.columns:
        if column == name or column.startswith(f"{name} ("):
            return column
    raise UserInputError(f"{source}: missing column {name!r} (found: {', '.join(table.columns)})")


def prepare_mhist(annotations_csv: str, output_dir: str, image_dir: Optional[str] = None) -> List[str]:
    """mhist_test.csv and mhist_train.csv (`Path, label, partition`) by the official partition.

    Images are `<image_dir>/<Image Name>` (default image_dir: images/ next to annotations.csv, the
    download's layout); Path is relative to `output_dir`."""
    check_output_dir(output_dir)
    annotations = read_table(annotations_csv, ("Image Name",), dtype=str)
    require_ids(annotations, "Image Name", annotations_csv)
    label = annotations[_column_named(annotations, "Majority Vote Label", annotations_csv)].str.strip()
    partition = annotations[_column_named(annotations, "Partition", annotations_csv)].str.strip().str.lower()
    for values, allowed, what in ((label, MHIST_CLASSES, "label"), (partition, ("train", "test"), "partition")):
        unknown = sorted(set(values.dropna()) - set(allowed)) + (["(empty)"] if values.isna().any() else [])
        if unknown:
            raise UserInputError(f"{annotations_csv}: unknown {what} value(s) {', '.join(unknown)} "
                                 f"(expected {' or '.join(allowed)})")
    if image_dir is None:
        image_dir = os.path.join(os.path.dirname(os.path.abspath(annotations_csv)), "images")
    paths = [path_from(output_dir, os.path.join(image_dir, name)) for name in annotations["Image Name"].str.strip()]
    table = pd.DataFrame({"Path": paths, "label": label,
                          "partition": partition})
    return write_split_csvs({f"mhist_{part}.csv": table[table["partition"] == part] for part in ("test", "train")},
                            output_dir, count_by="label")
