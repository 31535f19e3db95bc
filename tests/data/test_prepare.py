"""Each dataset_prep script on tiny raw files laid out as in /work/shared/FORMATS.md."""
import importlib.util
import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.model_selection import train_test_split

from ace_lora.data.labels import LC25000_CLASSES, NIH_LABELS
from ace_lora.data.rle import rle_encode

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def resolved(csv_folder, path):
    """Where a path written in a CSV in `csv_folder` points (relative paths start at that folder)."""
    return os.path.normpath(os.path.join(csv_folder, path))


def load_script(file_name):
    spec = importlib.util.spec_from_file_location(file_name[:-3].replace("-", "_"),
                                                  os.path.join(ROOT, "dataset_prep", file_name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_outputs(folder):
    """{relative path: bytes} of every file under `folder`."""
    files = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as handle:
                files[os.path.relpath(path, folder)] = handle.read()
    return files


def assert_deterministic(script, argv_for, tmp_path):
    """Run `script` twice into the same output folder and compare every file byte for byte."""
    outputs = []
    for _ in range(2):
        assert script.main(argv_for(str(tmp_path / "repeat"))) == 0
        outputs.append(read_outputs(tmp_path / "repeat"))
    assert outputs[0] and outputs[0] == outputs[1]


def assert_user_error(script, argv, capsys, *fragments):
    with pytest.raises(SystemExit) as exit_info:
        script.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


# RSNA -----------------------------------------------------------------------------------------------

RSNA_POSITIVES = {f"pos{i:02d}": [(10 * i, 20, 30, 40)] for i in range(6)}
RSNA_POSITIVES["pos06"] = [(10, 20, 30, 40), (100, 200, 50, 60)]
RSNA_NEGATIVES = [f"neg{i:02d}" for i in range(13)]


@pytest.fixture
def rsna_root(tmp_path):
    root = tmp_path / "rsna"
    (root / "stage_2_train_images").mkdir(parents=True)
    rows = ["patientId,x,y,width,height,Target"]
    for patient, boxes in RSNA_POSITIVES.items():
        rows += [f"{patient},{x}.0,{y}.0,{w}.0,{h}.0,1" for x, y, w, h in boxes]
    rows += [f"{patient},,,,,0" for patient in RSNA_NEGATIVES]
    rows.insert(3, rows.pop())  # patients are not grouped or sorted in the raw file
    (root / "stage_2_train_labels.csv").write_text("\n".join(rows) + "\n")
    for patient in list(RSNA_POSITIVES) + RSNA_NEGATIVES:
        (root / "stage_2_train_images" / f"{patient}.dcm").write_bytes(b"")
    return root


def test_rsna_splits_counts_and_boxes(rsna_root, tmp_path, capsys):
    script = load_script("rsna_dataset_create.py")
    out = tmp_path / "out"
    assert script.main(["--labels-csv", str(rsna_root / "stage_2_train_labels.csv"), "--output-dir", str(out)]) == 0
    train, test = pd.read_csv(out / "rsna_train.csv"), pd.read_csv(out / "rsna_test.csv")
    assert list(test.columns) == ["patientId", "Path", "Target", "boxes"]
    assert (len(train), len(test)) == (17, 3)  # 20 patients, ceil(15%) = 3 test
    everyone = pd.concat([train, test])
    assert sorted(everyone["patientId"]) == sorted(list(RSNA_POSITIVES) + RSNA_NEGATIVES)
    assert everyone["Target"].sum() == 7
    # Same test patients as the released code: sorted patients, train_test_split(0.15, random_state=0).
    expected_test = train_test_split(sorted(everyone["patientId"]), test_size=0.15, random_state=0)[1]
    assert list(test["patientId"]) == expected_test
    by_patient = everyone.set_index("patientId")
    assert json.loads(by_patient.loc["pos06", "boxes"]) == [[10, 20, 40, 60], [100, 200, 150, 260]]
    assert json.loads(by_patient.loc["neg03", "boxes"]) == []
    # Relative to the CSV's folder (where the evaluation resolves it), not to the labels CSV's folder.
    assert by_patient.loc["pos06", "Path"] == os.path.join("..", "rsna", "stage_2_train_images", "pos06.dcm")
    assert all(os.path.isfile(resolved(out, path)) for path in everyone["Path"])

    detection = {part: pd.read_csv(out / f"rsna_detection_{part}.csv") for part in ("train", "val", "test")}
    assert {part: len(frame) for part, frame in detection.items()} == {"train": 4, "val": 1, "test": 2}
    assert list(detection["val"].columns) == ["patientId", "Path", "boxes"]
    assert sorted(pd.concat(detection.values())["patientId"]) == sorted(RSNA_POSITIVES)
    assert all(os.path.isfile(resolved(out, path)) for path in pd.concat(detection.values())["Path"])
    printed = capsys.readouterr().out
    assert f"wrote {out / 'rsna_test.csv'}: 3 rows" in printed
    assert f"wrote {out / 'rsna_detection_train.csv'}: 4 rows" in printed


def test_rsna_check_images_and_absolute_paths(rsna_root, tmp_path, capsys):
    (rsna_root / "stage_2_train_images" / "neg00.dcm").unlink()
    (rsna_root / "stage_2_train_images" / "pos01.dcm").unlink()
    script = load_script("rsna_dataset_create.py")
    out = tmp_path / "out"
    assert script.main(["--labels-csv", str(rsna_root / "stage_2_train_labels.csv"), "--output-dir", str(out),
                        "--check-images", "--absolute-paths"]) == 0
    everyone = pd.concat([pd.read_csv(out / "rsna_train.csv"), pd.read_csv(out / "rsna_test.csv")])
    assert len(everyone) == 18 and everyone["Target"].sum() == 6
    assert {"neg00", "pos01"}.isdisjoint(everyone["patientId"])
    assert all(os.path.isabs(path) and os.path.isfile(path) for path in everyone["Path"])
    assert "excluded 2 patients without an image file" in capsys.readouterr().out


def test_rsna_deterministic(rsna_root, tmp_path):
    script = load_script("rsna_dataset_create.py")
    labels = str(rsna_root / "stage_2_train_labels.csv")
    assert_deterministic(script, lambda out: ["--labels-csv", labels, "--output-dir", out], tmp_path)


def test_rsna_errors(rsna_root, tmp_path, capsys):
    script = load_script("rsna_dataset_create.py")
    out = str(tmp_path / "out")
    assert_user_error(script, ["--labels-csv", str(tmp_path / "nope.csv"), "--output-dir", out], capsys,
                      "nope.csv: file not found")
    no_target = tmp_path / "no_target.csv"
    no_target.write_text("patientId,x,y,width,height\na,1,2,3,4\n")
    assert_user_error(script, ["--labels-csv", str(no_target), "--output-dir", out], capsys,
                      "no_target.csv: missing column(s) 'Target'")
    half_box = tmp_path / "half_box.csv"
    half_box.write_text("patientId,x,y,width,height,Target\na,,,,,0\nb,1,2,,4,1\n")
    assert_user_error(script, ["--labels-csv", str(half_box), "--output-dir", out], capsys,
                      "half_box.csv: row 2 (patientId b)")  # 2nd data row, as every message counts rows


# SIIM -----------------------------------------------------------------------------------------------

SIZE = 16


def region(rows, cols):
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[rows, cols] = 1
    return mask


SIIM_REGIONS = {  # ImageId -> regions (one RLE row each); [] is a negative (-1)
    "1.2.3.1": [region(slice(1, 4), slice(2, 5)), region(slice(10, 14), slice(9, 12))],
    "1.2.3.2": [region(slice(5, 9), slice(5, 6))],
    "1.2.3.3": [region(slice(0, 16), slice(15, 16))],
    **{f"1.2.3.{i}": [] for i in range(4, 11)},
}


def write_siim_csv(path, relative, stage1=False):
    lines = ["ImageId, EncodedPixels" if stage1 else "ImageId,EncodedPixels"]
    for image_id, masks in SIIM_REGIONS.items():
        rles = [rle_encode(mask, relative=relative) for mask in masks] or ["-1"]
        lines += [f"{image_id},{' ' if stage1 else ''}{rle}" for rle in rles]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_siim_class_labels(tmp_path, capsys):
    script = load_script("SIIM_generate_class_labels.py")
    csv = write_siim_csv(tmp_path / "stage_2_train.csv", relative=False)
    out = tmp_path / "out"
    assert script.main(["--rle-csv", csv, "--output-dir", str(out)]) == 0
    test = pd.read_csv(out / "siim_test.csv", dtype={"ImageId": str})
    train = pd.read_csv(out / "siim_train.csv", dtype={"ImageId": str})
    assert list(test.columns) == ["ImageId", "Label"]
    assert (len(test), len(train)) == (3, 7)  # int(30% of 10 unique images)
    labels = pd.concat([test, train]).set_index("ImageId")["Label"]
    assert labels.index.is_unique and len(labels) == 10
    assert labels.to_dict() == {image_id: int(bool(masks)) for image_id, masks in SIIM_REGIONS.items()}
    # The released code's sample: unique images in file order, sample(n=int(0.3 n), random_state=42).
    raw = pd.read_csv(csv).drop_duplicates("ImageId")
    assert list(test["ImageId"]) == list(raw.sample(n=3, random_state=42)["ImageId"])
    assert f"wrote {out / 'siim_test.csv'}: 3 rows" in capsys.readouterr().out


def test_siim_class_labels_stage1_and_determinism(tmp_path):
    script = load_script("SIIM_generate_class_labels.py")
    csv = write_siim_csv(tmp_path / "train-rle.csv", relative=True, stage1=True)
    assert_deterministic(script, lambda out: ["--rle-csv", csv, "--output-dir", out], tmp_path)
    labels = pd.concat([pd.read_csv(tmp_path / "repeat" / name, dtype={"ImageId": str})
                        for name in ("siim_test.csv", "siim_train.csv")])
    assert labels["Label"].sum() == 3 and len(labels) == 10


def make_siim_images(image_dir):
    """PNGs for images 1..5 at the top, DICOM tree for 6..9, nothing for 10."""
    for i in range(1, 6):
        (image_dir / f"1.2.3.{i}.png").parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (SIZE, SIZE)).save(image_dir / f"1.2.3.{i}.png")
    for i in range(6, 10):
        series = image_dir / "dicom-images-train" / f"study{i}" / f"series{i}"
        series.mkdir(parents=True)
        (series / f"1.2.3.{i}.dcm").write_bytes(b"")


@pytest.mark.parametrize("csv_name, relative, stage1", [("stage_2_train.csv", False, False),
                                                         ("train-rle.csv", True, True)])
def test_siim_masks_and_segmentation_splits(tmp_path, capsys, csv_name, relative, stage1):
    script = load_script("SIIM_generate_mask.py")
    csv = write_siim_csv(tmp_path / csv_name, relative=relative, stage1=stage1)
    make_siim_images(tmp_path / "images")
    out = tmp_path / "out"
    assert script.main(["--rle-csv", csv, "--image-dir", str(tmp_path / "images"), "--output-dir", str(out),
                        "--height", str(SIZE), "--width", str(SIZE)]) == 0
    printed = capsys.readouterr().out
    assert f"RLE format: {'relative' if relative else 'absolute'} (chosen from the file name {csv_name})" in printed
    assert "excluded 1 images with a mask row but no .png/.dcm file" in printed and "1.2.3.10" in printed

    splits = {part: pd.read_csv(out / f"siim_segmentation_{part}.csv", dtype={"ImageId": str})
              for part in ("train", "val", "test")}
    assert {part: len(frame) for part, frame in splits.items()} == {"train": 6, "val": 1, "test": 2}
    table = pd.concat(splits.values()).set_index("ImageId")
    assert list(splits["test"].columns) == ["ImageId", "image_path", "mask_path", "has_pneumothorax"]
    assert sorted(table.index) == sorted(f"1.2.3.{i}" for i in range(1, 10))
    assert table["has_pneumothorax"].to_dict() == {f"1.2.3.{i}": int(i <= 3) for i in range(1, 10)}
    assert resolved(out, table.loc["1.2.3.7", "image_path"]) == str(
        tmp_path / "images" / "dicom-images-train" / "study7" / "series7" / "1.2.3.7.dcm")
    assert table.loc["1.2.3.2", "image_path"] == os.path.join("..", "images", "1.2.3.2.png")
    assert table.loc["1.2.3.2", "mask_path"] == os.path.join("masks", "1.2.3.2.png")

    # The two-region image's mask holds both regions; negatives are empty; values are 0/255.
    merged = np.array(Image.open(resolved(out, table.loc["1.2.3.1", "mask_path"])))
    both = SIIM_REGIONS["1.2.3.1"][0] | SIIM_REGIONS["1.2.3.1"][1]
    np.testing.assert_array_equal(merged, both * 255)
    assert merged.sum() == (9 + 12) * 255
    assert np.array(Image.open(resolved(out, table.loc["1.2.3.5", "mask_path"]))).max() == 0
    assert len(os.listdir(out / "masks")) == 9


def test_siim_split_paths_resolve_from_the_csv_folder_when_prepared_with_relative_paths(tmp_path, monkeypatch):
    """The README's two commands, run from the data's parent folder with relative paths: the
    segmentation benchmark's reader (default root: the CSV's folder) must find every image and mask."""
    from ace_lora.data.prepare import prepare_siim_masks
    from ace_lora.evaluation.dense.definitions import IMAGE_FILE, MASK_FILE, SIIM_SEGMENTATION
    from ace_lora.evaluation.dense.splits import read_split

    (tmp_path / "SIIM").mkdir()
    write_siim_csv(tmp_path / "SIIM" / "stage_2_train.csv", relative=False)
    make_siim_images(tmp_path / "SIIM" / "images")
    monkeypatch.chdir(tmp_path)
    prepare_siim_masks("SIIM/stage_2_train.csv", "SIIM/images", "SIIM/splits", height=SIZE, width=SIZE)
    monkeypatch.chdir(tmp_path / "SIIM")  # read from somewhere else than where the CSVs were written
    table = pd.concat([read_split(SIIM_SEGMENTATION, f"splits/siim_segmentation_{part}.csv")
                       for part in ("train", "val", "test")])
    assert len(table) == 9
    assert all(os.path.isfile(path) for path in pd.concat([table[IMAGE_FILE], table[MASK_FILE]]))
    assert os.path.samefile(table.set_index("ImageId").loc["1.2.3.2", IMAGE_FILE], tmp_path / "SIIM/images/1.2.3.2.png")


def test_siim_masks_deterministic_and_limit(tmp_path):
    script = load_script("SIIM_generate_mask.py")
    csv = write_siim_csv(tmp_path / "stage_2_train.csv", relative=False)
    make_siim_images(tmp_path / "images")
    assert_deterministic(script, lambda out: ["--rle-csv", csv, "--image-dir", str(tmp_path / "images"),
                                              "--output-dir", out, "--height", "16", "--width", "16",
                                              "--limit", "8"], tmp_path)
    assert len(os.listdir(tmp_path / "repeat" / "masks")) == 8


def test_siim_masks_errors(tmp_path, capsys):
    script = load_script("SIIM_generate_mask.py")
    make_siim_images(tmp_path / "images")
    common = ["--image-dir", str(tmp_path / "images"), "--output-dir", str(tmp_path / "out"),
              "--height", str(SIZE), "--width", str(SIZE)]
    absolute_csv = write_siim_csv(tmp_path / "stage_2_train.csv", relative=False)
    assert_user_error(script, ["--rle-csv", absolute_csv, "--rle-format", "relative"] + common, capsys,
                      "stage_2_train.csv: ImageId 1.2.3.1: RLE run ends at pixel", "past the end of the image")
    unnamed = write_siim_csv(tmp_path / "masks.csv", relative=False)
    assert_user_error(script, ["--rle-csv", unnamed] + common, capsys,
                      "masks.csv: cannot tell the RLE format from the file name")
    assert_user_error(script, ["--rle-csv", absolute_csv, "--limit", "0"] + common, capsys,
                      "height, width and limit must be at least 1")
    no_column = tmp_path / "stage_2_bad.csv"
    no_column.write_text("ImageId,Pixels\n1.2.3.1,-1\n")
    assert_user_error(script, ["--rle-csv", str(no_column)] + common, capsys,
                      "stage_2_bad.csv: missing column(s) 'EncodedPixels'")


# NIH ChestX-ray14 -----------------------------------------------------------------------------------

NIH_ENTRIES = {
    "00000001_000.png": "Effusion|Mass",
    "00000002_000.png": "No Finding",
    "00000003_000.png": "Hernia",
    "00000004_000.png": "Pleural_Thickening|Atelectasis|Nodule",
    **{f"000000{i:02d}_000.png": "No Finding" for i in range(5, 16)},
}
NIH_TEST_LIST = ["00000004_000.png", "00000001_000.png", "00000099_000.png", "00000002_000.png",
                 "00000003_000.png"] + [f"000000{i:02d}_000.png" for i in range(5, 15)]


def write_nih(folder, entries=NIH_ENTRIES):
    folder.mkdir(exist_ok=True)
    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
            "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"]
    rows += [f"{name},{labels},0,{i},50,M,PA,1024,1024,0.14,0.14" for i, (name, labels) in enumerate(entries.items())]
    (folder / "Data_Entry_2017_v2020.csv").write_text("\n".join(rows) + "\n")
    (folder / "test_list.txt").write_text("\n".join(NIH_TEST_LIST) + "\n")
    return ["--data-entry-csv", str(folder / "Data_Entry_2017_v2020.csv"), "--test-list", str(folder / "test_list.txt")]


def test_nih_first_fraction_one_hot(tmp_path, capsys):
    script = load_script("chestx-ray_14_prep.py")
    raw = write_nih(tmp_path / "nih")
    out = tmp_path / "out"
    assert script.main(raw + ["--output-dir", str(out)]) == 0  # int(0.2 * 15) = 3 images
    table = pd.read_csv(out / "chestxray14_test.csv")
    assert list(table.columns) == ["Image Index", "Path", *NIH_LABELS]
    # As released: the first 3 test images in data-entry order, not test_list.txt's 00000004, 00000001, ...
    assert list(table["Image Index"]) == ["00000001_000.png", "00000002_000.png", "00000003_000.png"]
    assert table.loc[0, "Path"] == os.path.join("..", "nih", "images", "00000001_000.png")  # relative to out/
    effusion_mass = table.loc[0, list(NIH_LABELS)]
    assert effusion_mass[effusion_mass == 1].index.tolist() == ["Effusion", "Mass"]
    assert table.loc[1, list(NIH_LABELS)].sum() == 0 and table.loc[2, "Hernia"] == 1
    printed = capsys.readouterr().out
    assert "selected 3 images: the first 3 (0.2 of the 15 in" in printed
    assert "excluded 1 test-list images missing from" in printed and "00000099_000.png" in printed
    heldout = pd.read_csv(out / "chestxray14_heldout.csv")  # what model selection on the first file never saw
    assert list(heldout.columns) == list(table.columns) and len(heldout) == 11
    assert not set(heldout["Image Index"]) & set(table["Image Index"])

    entries = tmp_path / "nih" / "Data_Entry_2017_v2020.csv"  # 00000005 is a later image of patient 0 (00000001)
    entries.write_text(entries.read_text().replace("00000005_000.png,No Finding,0,4,",
                                                   "00000005_000.png,No Finding,0,0,"))
    assert script.main(raw + ["--output-dir", str(out)]) == 0
    heldout = pd.read_csv(out / "chestxray14_heldout.csv")
    assert len(heldout) == 10 and "00000005_000.png" not in set(heldout["Image Index"])
    assert "held out: 10 of the other 11 test images (1 share a patient with the first part)" in capsys.readouterr().out

    assert script.main(raw + ["--output-dir", str(out), "--fraction", "1.0"]) == 0
    table = pd.read_csv(out / "chestxray14_test.csv").set_index("Image Index")
    assert len(table) == 14 and not (out / "chestxray14_heldout.csv").exists()  # nothing left to hold out
    assert table.loc["00000002_000.png", list(NIH_LABELS)].sum() == 0  # No Finding
    assert table.loc["00000003_000.png", "Hernia"] == 1
    assert table[list(NIH_LABELS)].to_numpy().sum() == 1 + 2 + 3


def test_nih_deterministic(tmp_path):
    script = load_script("chestx-ray_14_prep.py")
    raw = write_nih(tmp_path / "nih")
    assert_deterministic(script, lambda out: raw + ["--output-dir", out, "--fraction", "0.5"], tmp_path)


def test_nih_errors(tmp_path, capsys):
    script = load_script("chestx-ray_14_prep.py")
    raw = write_nih(tmp_path / "nih", {**NIH_ENTRIES, "00000001_000.png": "Effusion|Lung Mass|Covid"})
    out = ["--output-dir", str(tmp_path / "out")]
    assert_user_error(script, raw + out, capsys, "unknown label(s) in 'Finding Labels': 'Covid', 'Lung Mass'")
    assert_user_error(script, raw[:2] + ["--test-list", str(tmp_path / "missing.txt")] + out, capsys,
                      "missing.txt: file not found")
    assert_user_error(script, raw + out + ["--fraction", "0"], capsys, "fraction must be in (0, 1]")


# LC25000 --------------------------------------------------------------------------------------------

def make_lc25000(root):
    for count, folder in enumerate(LC25000_CLASSES, start=1):
        class_dir = root / "lung_colon_image_set" / f"{folder.split('_')[0]}_image_sets" / folder
        class_dir.mkdir(parents=True)
        for i in range(count):
            (class_dir / f"{folder.replace('_', '')}{i + 1}.jpeg").write_bytes(b"")
    (root / "lung_colon_image_set" / "lung_image_sets" / "lung_n" / "Thumbs.db").write_bytes(b"")


def test_lc25000(tmp_path, capsys):
    script = load_script("lc25000_prep.py")
    make_lc25000(tmp_path / "lc")
    out = tmp_path / "out"
    assert script.main(["--data-root", str(tmp_path / "lc"), "--output-dir", str(out)]) == 0
    table = pd.read_csv(out / "lc25000.csv")
    assert list(table.columns) == ["Path", "label"]
    assert table["label"].value_counts().to_dict() == {"lung_aca": 1, "lung_scc": 2, "lung_n": 3,
                                                       "colon_aca": 4, "colon_n": 5}
    assert list(table["Path"]) == sorted(table["Path"])
    assert "../lc/lung_colon_image_set/lung_image_sets/lung_scc/lungscc2.jpeg" in set(table["Path"])
    assert all(os.path.isfile(resolved(out, path)) for path in table["Path"])
    printed = capsys.readouterr().out
    assert "excluded 1 files that are not .jpeg images" in printed
    assert "label=colon_n: 5" in printed
    assert_deterministic(script, lambda o: ["--data-root", str(tmp_path / "lc"), "--output-dir", o], tmp_path)


def test_lc25000_missing_folder(tmp_path, capsys):
    script = load_script("lc25000_prep.py")
    make_lc25000(tmp_path / "lc")
    for name in os.listdir(tmp_path / "lc/lung_colon_image_set/colon_image_sets/colon_n"):
        os.remove(tmp_path / "lc/lung_colon_image_set/colon_image_sets/colon_n" / name)
    os.rmdir(tmp_path / "lc/lung_colon_image_set/colon_image_sets/colon_n")
    assert_user_error(script, ["--data-root", str(tmp_path / "lc"), "--output-dir", str(tmp_path / "out")], capsys,
                      "colon_image_sets/colon_n: LC25000 class folder not found")


# MHIST ----------------------------------------------------------------------------------------------

MHIST_ROWS = [("MHIST_aaa.png", "SSA", 6, "train"), ("MHIST_aab.png", "HP", 0, "test"),
              ("MHIST_aac.png", "HP", 1, "train"), ("MHIST_aad.png", "SSA", 5, "test"),
              ("MHIST_aae.png", "HP", 2, "test"), ("MHIST_aaf.png", "HP", 0, "train")]


def write_mhist(path, header, rows=MHIST_ROWS):
    path.write_text(header + "\n" + "\n".join(",".join(map(str, row)) for row in rows) + "\n")
    return str(path)


@pytest.mark.parametrize("header", [
    "Image Name,Majority Vote Label,Number of Annotators who Selected SSA (Out of 7),Partition",
    "Image Name,Majority Vote Label (HP or SSA),Number of Annotators who Selected SSA (Out of 7),"
    "Partition (train or test)"])
def test_mhist(tmp_path, capsys, header):
    script = load_script("mhist_prep.py")
    csv = write_mhist(tmp_path / "annotations.csv", header)
    out = tmp_path / "out"
    assert script.main(["--annotations-csv", csv, "--output-dir", str(out)]) == 0
    test, train = pd.read_csv(out / "mhist_test.csv"), pd.read_csv(out / "mhist_train.csv")
    assert list(test.columns) == ["Path", "label", "partition"]
    assert list(test["Path"]) == ["../images/MHIST_aab.png", "../images/MHIST_aad.png", "../images/MHIST_aae.png"]
    # Written next to annotations.csv, the paths are the plain images/<name> of the download's layout.
    assert script.main(["--annotations-csv", csv, "--output-dir", str(tmp_path)]) == 0
    assert pd.read_csv(tmp_path / "mhist_test.csv")["Path"].iloc[0] == "images/MHIST_aab.png"
    assert test["label"].tolist() == ["HP", "SSA", "HP"] and set(test["partition"]) == {"test"}
    assert train["label"].value_counts().to_dict() == {"HP": 2, "SSA": 1}
    assert f"wrote {out / 'mhist_test.csv'}: 3 rows (label=HP: 2, label=SSA: 1)" in capsys.readouterr().out
    assert_deterministic(script, lambda o: ["--annotations-csv", csv, "--output-dir", o], tmp_path)


def test_mhist_errors(tmp_path, capsys):
    script = load_script("mhist_prep.py")
    out = ["--output-dir", str(tmp_path / "out")]
    no_partition = write_mhist(tmp_path / "a.csv", "Image Name,Majority Vote Label,Votes",
                               [row[:3] for row in MHIST_ROWS])
    assert_user_error(script, ["--annotations-csv", no_partition] + out, capsys, "a.csv: missing column 'Partition'")
    bad_label = write_mhist(tmp_path / "b.csv", "Image Name,Majority Vote Label,Votes,Partition",
                            MHIST_ROWS + [("MHIST_x.png", "TA", 3, "test")])
    assert_user_error(script, ["--annotations-csv", bad_label] + out, capsys,
                      "b.csv: unknown label value(s) TA (expected HP or SSA)")


# Refusals: one line, exit 2, nothing written ------------------------------------------------------

def unchanged_after_error(script, argv, capsys, folder, *fragments):
    """The script refuses with one line and leaves `folder` exactly as it was (or absent)."""
    before = read_outputs(folder) if os.path.isdir(folder) else None
    assert_user_error(script, argv, capsys, *fragments)
    assert (read_outputs(folder) if os.path.isdir(folder) else None) == before


def test_prep_refuses_empty_ids_invalid_boxes_and_malformed_rle(tmp_path, capsys):
    out = str(tmp_path / "out")
    rsna = load_script("rsna_dataset_create.py")
    no_id = tmp_path / "no_id.csv"
    no_id.write_text("patientId,x,y,width,height,Target\na,,,,,0\n,1,2,3,4,1\n")
    unchanged_after_error(rsna, ["--labels-csv", str(no_id), "--output-dir", out], capsys, out,
                          "no_id.csv: row 2: empty patientId (1 such row(s))")
    flat = tmp_path / "flat.csv"
    flat.write_text("patientId,x,y,width,height,Target\na,,,,,0\nb,10,20,-5,40,1\n")
    unchanged_after_error(rsna, ["--labels-csv", str(flat), "--output-dir", out], capsys, out,
                          "flat.csv: row 2 (patientId b): the box needs x, y >= 0 and width, height > 0, got x 10, "
                          "y 20, width -5, height 40")
    mhist = load_script("mhist_prep.py")
    unnamed = write_mhist(tmp_path / "annotations.csv", "Image Name,Majority Vote Label,Votes,Partition",
                          MHIST_ROWS + [("", "HP", 0, "test")])
    unchanged_after_error(mhist, ["--annotations-csv", unnamed, "--output-dir", out], capsys, out,
                          "annotations.csv: row 7: empty Image Name")
    siim = load_script("SIIM_generate_class_labels.py")
    rle = tmp_path / "stage_2_train.csv"
    rle.write_text("ImageId,EncodedPixels\n1.2.1,-1\n1.2.2,abc def\n1.2.3,5 10\n")
    unchanged_after_error(siim, ["--rle-csv", str(rle), "--output-dir", out], capsys, out,
                          "stage_2_train.csv: row 2 (ImageId 1.2.2): EncodedPixels 'abc def' is neither -1 nor "
                          "run-length pairs")
    rle.write_text("ImageId,EncodedPixels\n1.2.1,-1\n1.2.3,5 10 7\n")  # an odd count is no list of pairs
    unchanged_after_error(siim, ["--rle-csv", str(rle), "--output-dir", out], capsys, out, "row 2 (ImageId 1.2.3)")


def test_prep_refuses_empty_selections(tmp_path, capsys):
    nih = load_script("chestx-ray_14_prep.py")
    raw = write_nih(tmp_path / "nih")
    out = tmp_path / "out"
    out.mkdir()
    (out / "chestxray14_test.csv").write_text("kept\n")  # an earlier file is not replaced by an empty one
    unchanged_after_error(nih, raw + ["--output-dir", str(out), "--fraction", "0.05"], capsys, str(out),
                          "chestxray14_test.csv would have no rows: nothing written")  # int(0.05 * 15) = 0
    not_a_list = tmp_path / "nih" / "Data_Entry_2017_v2020.csv"  # the wrong file: no line is an image name
    unchanged_after_error(nih, raw[:2] + ["--test-list", str(not_a_list), "--output-dir", str(out)], capsys,
                          str(out), "chestxray14_test.csv would have no rows")
    binary = tmp_path / "list.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff binary")
    unchanged_after_error(nih, raw[:2] + ["--test-list", str(binary), "--output-dir", str(out)], capsys, str(out),
                          "list.bin: not a text file of image names")
    siim = load_script("SIIM_generate_class_labels.py")
    one = tmp_path / "stage_2_train.csv"
    one.write_text("ImageId,EncodedPixels\n1.2.1,-1\n")
    unchanged_after_error(siim, ["--rle-csv", str(one), "--output-dir", str(out)], capsys, str(out),
                          "siim_test.csv would have no rows")  # int(30% of 1 image) = 0
    lc = load_script("lc25000_prep.py")
    make_lc25000(tmp_path / "lc")
    empty_class = tmp_path / "lc/lung_colon_image_set/colon_image_sets/colon_aca"
    for name in os.listdir(empty_class):
        os.remove(empty_class / name)
    unchanged_after_error(lc, ["--data-root", str(tmp_path / "lc"), "--output-dir", str(out)], capsys, str(out),
                          "colon_image_sets/colon_aca: LC25000 class folder has no .jpeg images")


def test_prep_refuses_an_output_that_cannot_be_written_before_the_work(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    nih = load_script("chestx-ray_14_prep.py")
    raw = write_nih(tmp_path / "nih")
    assert_user_error(nih, raw + ["--output-dir", str(taken)], capsys,
                      f"--output-dir {taken}: exists and is not a folder")
    assert_user_error(nih, raw + ["--output-dir", str(taken / "sub")], capsys, f"--output-dir {taken / 'sub'}: "
                      f"cannot create the folder ({taken} is not a folder)")
    assert taken.read_text() == "a file"
