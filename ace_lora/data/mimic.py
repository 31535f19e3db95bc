"""MIMIC-CXR training data: the training CSV built from MIMIC-CXR-JPG, and reading it back for training.

Decisions:
- One row per frontal image (ViewPosition PA or AP); every image of a study gets that study's report
  and labels. Lateral, other and empty views are excluded and counted.
- CheXpert labels are JOINED on (subject_id, study_id), never concatenated by position (the released
  code did the latter and misaligned rows). Empty -> 0; uncertain (-1) is kept by default, so that the
  training Dataset's uncertain policy (train.py --uncertain-policy) is the one place that maps it; it can
  also be mapped here to 0 ('zeros', as released) or 1 ('ones'). A study without a label row gets all
  zeros and is counted.
- Report text is FINDINGS + IMPRESSION (see `extract_report_text`); images whose report file is
  missing, or whose text is empty, are excluded and counted.
"""
import os
import re
from collections import Counter
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from ace_lora.data.labels import CHEXPERT_LABELS, UNCERTAIN_POLICIES
from ace_lora.data.paths import data_root_for, resolve_path
from ace_lora.data.tables import read_table, row_number
from ace_lora.errors import UserInputError

FRONTAL_VIEWS = ("PA", "AP")
METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv"
TRAINING_COLUMNS = ("image_path", "report", "subject_id", "study_id", "dicom_id", "split")

# A section header: at the start of a line, up to 40 letters/spaces/&/()/- then a colon ("FINDINGS:").
_SECTION_HEADER = re.compile(r"^[ \t]*([A-Za-z][A-Za-z &/()-]{0,39}?)[ \t]*:", re.MULTILINE)
_TITLE_LINE = re.compile(r"^[ \t]*(FINAL|PRELIMINARY)?[ \t]*REPORT[ \t]*$", re.MULTILINE | re.IGNORECASE)


def _collapse(text: str) -> str:
    return " ".join(text.split())


def extract_report_text(text: str) -> Tuple[str, str]:
    """(training text, source) from a MIMIC-CXR report.

    The text is FINDINGS followed by IMPRESSION (headers matched case-insensitively; a combined header
    such as "FINDINGS AND IMPRESSION:" counts as both), whitespace collapsed. `source` is
    'findings+impression', 'findings' or 'impression'. Reports with neither fall back to their last
    non-empty section, which is where a conclusion is written when there is no impression (or the whole
    text, less the "FINAL REPORT" title line, when there are no section headers): source 'last_section'.
    An empty result has source 'empty'.
    """
    text = _TITLE_LINE.sub("", text)
    headers = list(_SECTION_HEADER.finditer(text))
    sections = [("", text[:headers[0].start()] if headers else text)]  # the part before any header
    for header, following in zip(headers, headers[1:] + [None]):
        sections.append((header.group(1).upper(), text[header.end():following.start() if following else len(text)]))
    sections = [(name, body) for name, body in ((name, _collapse(body)) for name, body in sections) if body]
    findings = [body for name, body in sections if "FINDING" in name]
    impression = [body for name, body in sections if "IMPRESSION" in name and "FINDING" not in name]
    if findings or impression:
        found = [kind for kind in ("FINDING", "IMPRESSION") if any(kind in name for name, _ in sections)]
        source = "+".join({"FINDING": "findings", "IMPRESSION": "impression"}[kind] for kind in found)
        return " ".join(findings + impression), source
    return (sections[-1][1], "last_section") if sections else ("", "empty")


def _integer_ids(table: pd.DataFrame, columns: Sequence[str], source: str) -> pd.DataFrame:
    for column in columns:
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() | (values != values.round())
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise UserInputError(f"{source}: column '{column}' row {row_number(row)}: {str(table[column].iloc[row])!r} "
                                 "is not an integer id")
        table[column] = values.astype("int64")
    return table


def attach_labels(train_df: pd.DataFrame, label_df: pd.DataFrame, uncertain_policy: Optional[str] = "zeros",
                  source: str = "label CSV") -> pd.DataFrame:
    """(train_df with the 14 CHEXPERT_LABELS columns, number of its studies without a label row).

    A LEFT join on study_id (and subject_id when both tables have it): the training table keeps its
    order and every row, and each row gets its own study's labels. Empty -> 0; -1 -> 0 ('zeros'), 1 ('ones')
    or stays -1 (None, for callers that apply the policy later); studies without labels get zeros.
    `source` names the label table in error messages.
    """
    if uncertain_policy not in UNCERTAIN_POLICIES + (None,):
        raise UserInputError(f"uncertain policy must be one of {', '.join(UNCERTAIN_POLICIES)}, "
                             f"got {uncertain_policy!r}")
    keys = ["subject_id", "study_id"] if "subject_id" in train_df and "subject_id" in label_df else ["study_id"]
    for name, table, required in (("training table", train_df, keys), (source, label_df, keys + list(CHEXPERT_LABELS))):
        missing = [column for column in required if column not in table]
        if missing:
            raise UserInputError(f"{name}: missing column(s) {', '.join(map(repr, missing))}")
    clashing = [label for label in CHEXPERT_LABELS if label in train_df]
    if clashing:
        raise UserInputError(f"training table already has label column(s) {', '.join(map(repr, clashing))}")
    labels = _integer_ids(label_df[keys + list(CHEXPERT_LABELS)].copy(), keys, source)
    duplicated = labels.duplicated(keys)
    if duplicated.any():
        first = labels.loc[duplicated, keys].iloc[0]
        study = ", ".join(f"{key} {first[key]}" for key in keys)
        raise UserInputError(f"{source}: {study} has more than one label row")
    values = labels[list(CHEXPERT_LABELS)].apply(pd.to_numeric, errors="coerce")
    bad = ~(values.isin([1, 0, -1]) | labels[list(CHEXPERT_LABELS)].isna())
    if bad.to_numpy().any():
        row, col = [int(i[0]) for i in bad.to_numpy().nonzero()]
        raise UserInputError(f"{source}: column '{CHEXPERT_LABELS[col]}' row {row_number(row)}: "
                             f"{str(labels[CHEXPERT_LABELS[col]].iloc[row])!r}, expected 1, 0, -1 or empty")
    values = values.fillna(0.0)
    if uncertain_policy is not None:
        values = values.replace(-1.0, 1.0 if uncertain_policy == "ones" else 0.0)
    labels[list(CHEXPERT_LABELS)] = values.astype("float64")

    train = _integer_ids(train_df.copy(), keys, "training table")
    joined = train.merge(labels, on=keys, how="left", indicator=True)  # keeps the left order
    unlabelled = joined.loc[joined["_merge"] == "left_only", keys].drop_duplicates()
    joined[list(CHEXPERT_LABELS)] = joined[list(CHEXPERT_LABELS)].fillna(0.0)
    joined.index = train_df.index
    return joined.drop(columns="_merge"), len(unlabelled)


def _image_path(subject_id: int, study_id: int, dicom_id: str) -> str:
    return f"files/p{str(subject_id)[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg"


def _report_path(reports_root: str, subject_id: int, study_id: int) -> str:
    return os.path.join(reports_root, "files", f"p{str(subject_id)[:2]}", f"p{subject_id}", f"s{study_id}.txt")


def _read_reports(studies: Sequence[Tuple[int, int]],
                  reports_root: str) -> Dict[Tuple[int, int], Optional[Tuple[str, str]]]:
    """{(subject, study): (text, source) or None if the file is missing}."""
    reports = {}
    for subject_id, study_id in studies:
        path = _report_path(reports_root, subject_id, study_id)
        if not os.path.isfile(path):
            reports[subject_id, study_id] = None
            continue
        try:
            with open(path, encoding="utf-8") as f:
                reports[subject_id, study_id] = extract_report_text(f.read())
        except UnicodeDecodeError as error:
            raise UserInputError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    return reports


def build_training_table(mimic_root: str, metadata_csv: str, split_csv: str, chexpert_csv: str,
                         reports_root: Optional[str] = None, views: Sequence[str] = FRONTAL_VIEWS,
                         uncertain_policy: Optional[str] = None) -> Tuple[pd.DataFrame, dict]:
    """(training table, stats): one row per frontal image with its report text, split and labels.

    Columns: TRAINING_COLUMNS then CHEXPERT_LABELS; `image_path` is relative to `mimic_root` (the
    MIMIC-CXR-JPG folder holding files/); rows sorted by subject_id, study_id, dicom_id. Uncertain labels
    stay -1 unless `uncertain_policy` is 'zeros' or 'ones' (see `attach_labels`). Reports are
    read from `reports_root` (default `mimic_root`) as files/pXX/pSUBJECT/sSTUDY.txt. `stats` counts
    what was excluded and why: images (metadata rows), excluded_views ({view: images}), frontal,
    no_split, missing_image, missing_report and empty_report ({'studies', 'images'}), report_sources
    ({source: studies kept}), studies_without_labels, rows, rows_per_split.
    """
    if not os.path.isdir(mimic_root):
        raise UserInputError(f"MIMIC-CXR-JPG folder not found: {mimic_root}")
    reports_root = mimic_root if reports_root is None else reports_root
    if not os.path.isdir(reports_root):
        raise UserInputError(f"reports folder not found: {reports_root}")
    ids = ["subject_id", "study_id"]
    metadata = read_table(metadata_csv, ["dicom_id"] + ids + ["ViewPosition"], dtype={"dicom_id": str})
    metadata = _integer_ids(metadata, ids, metadata_csv)
    split = read_table(split_csv, ["dicom_id", "split"], dtype={"dicom_id": str, "split": str})
    repeated = split.loc[split["dicom_id"].duplicated(), "dicom_id"]
    if len(repeated):
        raise UserInputError(f"{split_csv}: dicom_id {repeated.iloc[0]} appears more than once")
    labels = read_table(chexpert_csv, ids + list(CHEXPERT_LABELS))
    stats = {"images": len(metadata)}

    view = metadata["ViewPosition"].fillna("").astype(str).str.strip().str.upper()
    frontal = view.isin([v.upper() for v in views])
    excluded = view[~frontal].value_counts().sort_index()
    stats["excluded_views"] = {name or "(empty)": int(n) for name, n in excluded.items()}
    table = metadata.loc[frontal, ["dicom_id"] + ids].merge(split[["dicom_id", "split"]], on="dicom_id", how="left")
    stats["frontal"] = len(table)
    stats["no_split"] = int(table["split"].isna().sum())
    table = table[table["split"].notna()].copy()

    table["image_path"] = [_image_path(*ids) for ids in zip(table["subject_id"], table["study_id"], table["dicom_id"])]
    on_disk = table["image_path"].map(lambda path: os.path.isfile(os.path.join(mimic_root, path)))
    stats["missing_image"] = int((~on_disk).sum())
    table = table[on_disk]

    study_of_row = list(zip(table["subject_id"], table["study_id"]))
    reports = _read_reports(sorted(set(study_of_row)), reports_root)
    missing = np.array([reports[study] is None for study in study_of_row], dtype=bool)
    empty = np.array([reports[study] is not None and not reports[study][0] for study in study_of_row], dtype=bool)
    stats["missing_report"] = {"studies": sum(r is None for r in reports.values()), "images": int(missing.sum())}
    stats["empty_report"] = {"studies": sum(r is not None and not r[0] for r in reports.values()),
                             "images": int(empty.sum())}
    kept = {study: report for study, report in reports.items() if report is not None and report[0]}
    stats["report_sources"] = dict(sorted(Counter(source for _, source in kept.values()).items()))
    table = table[~missing & ~empty].copy()
    table["report"] = [kept[study][0] for study in zip(table["subject_id"], table["study_id"])]

    table, stats["studies_without_labels"] = attach_labels(table, labels, uncertain_policy, source=chexpert_csv)
    table = table.sort_values(["subject_id", "study_id", "dicom_id"], kind="stable").reset_index(drop=True)
    table = table[list(TRAINING_COLUMNS) + list(CHEXPERT_LABELS)]
    stats["rows"] = len(table)
    stats["rows_per_split"] = {name: int(n) for name, n in table["split"].value_counts().sort_index().items()}
    return table, stats


def read_training_csv(path: str, data_root: Optional[str] = None, label_csv: Optional[str] = None,
                      quiet: bool = False) -> pd.DataFrame:
    """The training CSV with `image_path` resolved: relative paths are joined to `data_root` (default:
    the CSV's folder), absolute ones are kept.

    Required columns: image_path, report and the 14 CHEXPERT_LABELS (`split` is optional). Without
    label columns, give `label_csv` (MIMIC's chexpert CSV): it is joined on study_id (and subject_id)
    with `attach_labels`, keeping -1 so that the training Dataset applies the uncertain policy.
    `quiet` silences the count of unlabelled studies (DDP: only rank 0 prints it).
    """
    table = read_table(path, ["image_path", "report"] + (["study_id"] if label_csv else []))
    if label_csv is not None:
        if any(label in table for label in CHEXPERT_LABELS):
            raise UserInputError(f"{path} already has label columns: give no label CSV, or drop them")
        labels = read_table(label_csv, ["study_id"] + list(CHEXPERT_LABELS))
        table, unlabelled = attach_labels(table, labels, uncertain_policy=None, source=label_csv)
        if unlabelled and not quiet:
            print(f"{label_csv}: no label row for {unlabelled} of the studies in {path}; their labels are 0")
    missing = [label for label in CHEXPERT_LABELS if label not in table]
    if missing:
        raise UserInputError(f"{path}: missing column(s) {', '.join(map(repr, missing))} (or give a label CSV)")
    data_root = data_root_for(path, data_root)
    if not os.path.isdir(data_root):
        raise UserInputError(f"data root not found: {data_root}")
    empty = table["image_path"].isna() | (table["image_path"].astype(str).str.strip() == "")
    if empty.any():
        raise UserInputError(f"{path}: column 'image_path' is empty in {int(empty.sum())} rows "
                             f"(first: row {row_number(empty.to_numpy().nonzero()[0][0])})")
    table["image_path"] = [resolve_path(p, data_root) for p in table["image_path"].astype(str)]
    return table
