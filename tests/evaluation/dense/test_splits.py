"""The dense split CSVs: paths, parsing with row-named errors, the decode check and the seeded subsets."""

import numpy as np
import pandas as pd
import pytest

from ace_lora.errors import UserInputError
from ace_lora.evaluation.dense.definitions import IMAGE_FILE, MASK_FILE, RSNA_DETECTION, SIIM_SEGMENTATION
from ace_lora.evaluation.dense.demo_data import write_rsna_demo, write_siim_demo
from ace_lora.evaluation.dense.splits import (
    balanced_subset,
    check_decodable,
    decode_error,
    fraction_subset,
    read_split,
    split_csv_paths,
)


def test_split_paths_prefer_explicit_csvs(tmp_path):
    paths = split_csv_paths(SIIM_SEGMENTATION, str(tmp_path), {"train": None, "val": "v.csv", "test": None})
    assert paths == {"train": str(tmp_path / "siim_segmentation_train.csv"), "val": "v.csv",
                     "test": str(tmp_path / "siim_segmentation_test.csv")}
    with pytest.raises(UserInputError, match="no train CSV: pass --train-csv or --split-dir"):
        split_csv_paths(RSNA_DETECTION, None, {})


def test_read_split_resolves_paths_and_reports_missing_files(tmp_path):
    csvs = write_rsna_demo(str(tmp_path), split_sizes=(3, 2, 2), seed=1)
    table = read_split(RSNA_DETECTION, csvs["train"])
    assert table[IMAGE_FILE].tolist() == [str(tmp_path / p) for p in table["Path"]]
    assert all(isinstance(b, list) for b in table["boxes"])
    other_root = tmp_path / "elsewhere"
    other_root.mkdir()
    with pytest.raises(UserInputError, match=r"3 of 3 image files not found, first: .*elsewhere.*--data-root"):
        read_split(RSNA_DETECTION, csvs["train"], data_root=str(other_root))


@pytest.mark.parametrize("boxes, problem", [("[[10, 10, 5, 20]]", "x2 > x1"), ("not json", "JSON list"),
                                            ("[[1, 2, 3]]", "JSON list")])
def test_bad_boxes_name_the_row(tmp_path, boxes, problem):
    csvs = write_rsna_demo(str(tmp_path), split_sizes=(2, 1, 1), seed=1)
    table = pd.read_csv(csvs["train"])
    table.loc[1, "boxes"] = boxes
    table.to_csv(csvs["train"], index=False)
    with pytest.raises(UserInputError, match=rf"row 2 \(patientId rsna_demo_0001\): .*{problem.replace(' ', '.*')}"):
        read_split(RSNA_DETECTION, csvs["train"])


def test_bad_label_names_the_row_like_the_zero_shot_messages(tmp_path):
    """Rows are counted from 1 over data rows (header excluded) everywhere; values print as plain ints."""
    csvs = write_siim_demo(str(tmp_path), split_sizes=(3, 1, 1), seed=1)
    table = pd.read_csv(csvs["train"])
    table.loc[2, "has_pneumothorax"] = 2
    table.to_csv(csvs["train"], index=False)
    with pytest.raises(UserInputError) as error:
        read_split(SIIM_SEGMENTATION, csvs["train"])
    assert str(error.value).endswith(f"row 3 (ImageId {table.loc[2, 'ImageId']}): has_pneumothorax must be 0 or 1, "
                                     f"got 2")


def test_decode_check_names_damaged_images_and_masks_and_passes_good_ones(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    csvs = write_siim_demo(str(tmp_path), split_sizes=(3, 1, 1), size=32, seed=1)
    table = read_split(SIIM_SEGMENTATION, csvs["train"])
    check_decodable(table, csvs["train"], progress=False)  # PNG images and masks that open
    assert decode_error(get_testdata_file("CT_small.dcm")) is None
    header_only = tmp_path / "no_image.dcm"
    pydicom.dcmread(get_testdata_file("rtplan.dcm")).save_as(header_only)  # a DICOM that holds no image
    assert "no Rows/Columns" in decode_error(str(header_only))
    with open(table[MASK_FILE].iloc[2], "wb") as f:
        f.write(b"not a png")
    with pytest.raises(UserInputError, match=rf"1 of 6 files cannot be decoded, first: .*{table['ImageId'].iloc[2]}"
                                             r"\.png \(UnidentifiedImageError"):
        check_decodable(table, csvs["train"], progress=False)


def test_repeated_ids_and_missing_columns_are_user_errors(tmp_path):
    csvs = write_siim_demo(str(tmp_path), split_sizes=(3, 1, 1), seed=1)
    table = pd.read_csv(csvs["train"])
    pd.concat([table, table.iloc[:1]]).to_csv(tmp_path / "repeated.csv", index=False)
    with pytest.raises(UserInputError, match="ImageId siim_demo_0000 appears more than once"):
        read_split(SIIM_SEGMENTATION, str(tmp_path / "repeated.csv"))
    table.drop(columns="mask_path").to_csv(tmp_path / "no_mask.csv", index=False)
    with pytest.raises(UserInputError, match="missing column.*mask_path"):
        read_split(SIIM_SEGMENTATION, str(tmp_path / "no_mask.csv"))


def _labelled(n_positive, n_negative):
    labels = [1] * n_positive + [0] * n_negative
    order = np.random.default_rng(0).permutation(len(labels))
    return pd.DataFrame({"ImageId": [f"id{i}" for i in range(len(labels))],
                         "has_pneumothorax": np.array(labels)[order]})


def test_balanced_subset_is_all_positives_plus_as_many_seeded_negatives():
    frame = _labelled(20, 80)
    subset = balanced_subset(frame, "has_pneumothorax", seed=0)
    assert subset["has_pneumothorax"].sum() == 20 and (subset["has_pneumothorax"] == 0).sum() == 20
    assert set(frame.loc[frame["has_pneumothorax"] == 1, "ImageId"]) <= set(subset["ImageId"])
    assert subset.index.is_monotonic_increasing  # CSV order kept
    assert subset["ImageId"].tolist() == balanced_subset(frame, "has_pneumothorax", seed=0)["ImageId"].tolist()
    assert subset["ImageId"].tolist() != balanced_subset(frame, "has_pneumothorax", seed=1)["ImageId"].tolist()
    few_negatives = balanced_subset(_labelled(10, 4), "has_pneumothorax", seed=0)
    assert len(few_negatives) == 14  # every negative kept


def test_fraction_subset_is_seeded_and_stratified():
    frame = _labelled(30, 170)
    subset = fraction_subset(frame, 0.1, seed=5, stratify_column="has_pneumothorax")
    assert subset["has_pneumothorax"].sum() == 3 and (subset["has_pneumothorax"] == 0).sum() == 17
    assert subset.equals(fraction_subset(frame, 0.1, seed=5, stratify_column="has_pneumothorax"))
    assert len(fraction_subset(frame, 0.01, seed=5)) == 2
    assert len(fraction_subset(frame, 0.001, seed=5, stratify_column="has_pneumothorax")) == 2  # >= 1 per class
    assert fraction_subset(frame, 1.0, seed=5) is frame
    with pytest.raises(UserInputError, match=r"--train-fraction must be in \(0, 1\]"):
        fraction_subset(frame, 0, seed=5)


