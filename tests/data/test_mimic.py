"""MIMIC-CXR training CSV: report text, label join, dataset_prep/mimic_cxr_prep.py on a tiny MIMIC tree."""
import importlib.util
import os

import numpy as np
import pandas as pd
import pytest

from ace_lora.data.labels import CHEXPERT_LABELS
from ace_lora.data.mimic import attach_labels, extract_report_text, read_training_csv
from ace_lora.data.train_dataset import label_matrix
from ace_lora.errors import UserInputError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_prep_script():
    path = os.path.join(ROOT, "dataset_prep", "mimic_cxr_prep.py")
    spec = importlib.util.spec_from_file_location("mimic_cxr_prep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prep = load_prep_script()

# Report text -----------------------------------------------------------------------------------------

FULL_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough

 FINDINGS:

 The heart is mildly enlarged.  There is mild
 pulmonary edema.

 IMPRESSION:

 Cardiomegaly with mild edema.
"""


@pytest.mark.parametrize("text, expected", [
    (FULL_REPORT, ("The heart is mildly enlarged. There is mild pulmonary edema. Cardiomegaly with mild edema.",
                   "findings+impression")),
    ("FINAL REPORT\n INDICATION: fever\n\n Impression: Right lower lobe pneumonia.\n",
     ("Right lower lobe pneumonia.", "impression")),
    ("FINDINGS: Small left apical pneumothorax.\n\nNOTIFICATION: called to Dr. ___.\n",
     ("Small left apical pneumothorax.", "findings")),
    ("IMPRESSION: Second.\nFINDINGS: First.\n", ("First. Second.", "findings+impression")),
    (" FINAL REPORT\n FINDINGS AND IMPRESSION:  Normal chest.\n", ("Normal chest.", "findings+impression")),
    ("FINAL REPORT\n INDICATION: cough\n\n CONCLUSION:\n  Stable\n  lines.\n", ("Stable lines.", "last_section")),
    ("Portable chest radiograph.\nLungs are clear.\n", ("Portable chest radiograph. Lungs are clear.", "last_section")),
    ("FINDINGS:\n\nIMPRESSION:   \n", ("", "empty")),
    ("   FINAL REPORT\n\n", ("", "empty")),
])
def test_extract_report_text(text, expected):
    assert extract_report_text(text) == expected


# Label join ------------------------------------------------------------------------------------------

def label_table(rows):
    """rows: {(subject, study): {label: value}} -> chexpert-style frame with NaN for blanks."""
    return pd.DataFrame([{"subject_id": subject, "study_id": study,
                          **{label: values.get(label, np.nan) for label in CHEXPERT_LABELS}}
                         for (subject, study), values in rows.items()])


def test_attach_labels_gives_each_image_its_own_studys_labels():
    labels = label_table({  # in an order unrelated to the training table
        (3, 300): {"Pneumonia": 1.0, "Edema": -1.0},
        (1, 100): {"Cardiomegaly": 1.0, "No Finding": 0.0},
        (2, 200): {"No Finding": 1.0},
        (9, 900): {"Fracture": 1.0},  # a study not in the training table
    })
    train = pd.DataFrame({"subject_id": [2, 3, 1, 3, 4, 1, 2], "study_id": [200, 300, 100, 300, 400, 100, 200],
                          "dicom_id": list("abcdefg")}, index=[10, 11, 12, 13, 14, 15, 16])
    out, unlabelled = attach_labels(train, labels)
    assert unlabelled == 1  # study 400
    assert out["dicom_id"].tolist() == list("abcdefg") and out.index.tolist() == [10, 11, 12, 13, 14, 15, 16]
    positives = [[label for label in CHEXPERT_LABELS if row[label] == 1.0] for _, row in out.iterrows()]
    assert positives == [["No Finding"], ["Pneumonia"], ["Cardiomegaly"], ["Pneumonia"], [], ["Cardiomegaly"],
                         ["No Finding"]]
    values = out[list(CHEXPERT_LABELS)].to_numpy()
    assert values.dtype == np.float64 and set(np.unique(values)) == {0.0, 1.0}

    ones, _ = attach_labels(train, labels, uncertain_policy="ones")
    assert ones["Edema"].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    kept, _ = attach_labels(train, labels, uncertain_policy=None)
    assert kept["Edema"].tolist() == [0.0, -1.0, 0.0, -1.0, 0.0, 0.0, 0.0]


def test_attach_labels_matches_subject_and_study():
    labels = label_table({(1, 100): {"Fracture": 1.0}, (2, 100): {"Edema": 1.0}})
    out, _ = attach_labels(pd.DataFrame({"subject_id": [2, 1], "study_id": [100, 100]}), labels)
    assert out["Edema"].tolist() == [1.0, 0.0] and out["Fracture"].tolist() == [0.0, 1.0]


def test_attach_labels_rejects_bad_label_tables():
    train = pd.DataFrame({"subject_id": [1], "study_id": [100]})
    twice = pd.concat([label_table({(1, 100): {}})] * 2)
    with pytest.raises(UserInputError, match=r"^labels.csv: subject_id 1, study_id 100 has more than one label row$"):
        attach_labels(train, twice, source="labels.csv")
    with pytest.raises(UserInputError, match=r"^labels.csv: column 'Edema' row 1: '2.0', expected 1, 0, -1 or empty$"):
        attach_labels(train, label_table({(1, 100): {"Edema": 2.0}}), source="labels.csv")
    with pytest.raises(UserInputError, match="uncertain policy must be one of zeros, ones"):
        attach_labels(train, label_table({(1, 100): {}}), uncertain_policy="half")


# A tiny MIMIC tree -----------------------------------------------------------------------------------

# (dicom_id, subject_id, study_id, ViewPosition, split or None, image file written)
IMAGES = [
    ("d9", 11000011, 52000002, "PA", "test", True),
    ("c1", 10000032, 50414267, "PA", "train", True),
    ("c2", 10000032, 50414267, "LATERAL", "train", True),
    ("f3", 10000032, 53189527, "AP", "train", True),
    ("a4", 10000032, 53189527, "AP", "train", True),
    ("e5", 10000032, 53189527, "LL", "train", True),
    ("b6", 10000764, 57375967, "PA", "validate", True),
    ("b7", 10000764, 57375967, "", "validate", True),
    ("d8", 11000011, 51000001, "AP", "test", True),
    ("g0", 12000022, 59000003, "AP", "train", True),
    ("g1", 12000022, 58000004, "PA", None, True),
    ("g2", 12000022, 58000004, "AP", "train", False),
]
REPORTS = {  # study -> text; 51000001 has no report file
    50414267: FULL_REPORT,
    53189527: "FINAL REPORT\n INDICATION: fever\n\n Impression: Right lower lobe pneumonia.\n",
    57375967: "Portable chest radiograph.\nLungs are clear.\n",
    52000002: "FINDINGS: Small left apical pneumothorax.\n\nNOTIFICATION: called to Dr. ___.\n",
    59000003: "   FINAL REPORT\n\n",
    58000004: "FINDINGS: Clear.\n",
}
LABEL_ROWS = {  # 52000002 has no label row; blanks are empty cells in the CSV
    (10000764, 57375967): {"No Finding": 1.0},
    (12000022, 59000003): {"Edema": 1.0},
    (10000032, 50414267): {"Cardiomegaly": 1.0, "Edema": -1.0, "No Finding": 0.0},
    (10000032, 53189527): {"Pneumonia": 1.0, "Consolidation": -1.0},
    (11000011, 51000001): {"Fracture": 1.0},
}


def make_mimic(root):
    """MIMIC-CXR-JPG tree with the three CSVs and the reports in the same folder."""
    rows = []
    for dicom_id, subject, study, view, _split, has_file in IMAGES:
        rows.append({"dicom_id": dicom_id, "subject_id": subject, "study_id": study,
                     "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "ViewPosition": view,
                     "Rows": 3056, "Columns": 2544, "StudyDate": 21800506, "StudyTime": 213014.531,
                     "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                     "ViewCodeSequence_CodeMeaning": "postero-anterior",
                     "PatientOrientationCodeSequence_CodeMeaning": "Erect"})
        folder = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}"
        folder.mkdir(parents=True, exist_ok=True)
        if has_file:
            (folder / f"{dicom_id}.jpg").write_bytes(b"jpeg bytes are not read by the prep")
    pd.DataFrame(rows).to_csv(root / "mimic-cxr-2.0.0-metadata.csv", index=False)
    split = pd.DataFrame([{"dicom_id": d, "study_id": st, "subject_id": su, "split": sp}
                          for d, su, st, _, sp, _ in reversed(IMAGES) if sp])
    split.to_csv(root / "mimic-cxr-2.0.0-split.csv", index=False)
    label_table(LABEL_ROWS).to_csv(root / "mimic-cxr-2.0.0-chexpert.csv", index=False)
    for study, text in REPORTS.items():
        subject = next(su for _, su, st, *_ in IMAGES if st == study)
        (root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}.txt").write_text(text)
    return root


UNCERTAIN = {"c1": ["Edema"], "a4": ["Consolidation"], "f3": ["Consolidation"]}  # -1 in LABEL_ROWS
EXPECTED_ROWS = [  # (dicom_id, subject, study, split, report, positive labels); uncertain ones in UNCERTAIN
    ("c1", 10000032, 50414267, "train",
     "The heart is mildly enlarged. There is mild pulmonary edema. Cardiomegaly with mild edema.", ["Cardiomegaly"]),
    ("a4", 10000032, 53189527, "train", "Right lower lobe pneumonia.", ["Pneumonia"]),
    ("f3", 10000032, 53189527, "train", "Right lower lobe pneumonia.", ["Pneumonia"]),
    ("b6", 10000764, 57375967, "validate", "Portable chest radiograph. Lungs are clear.", ["No Finding"]),
    ("d9", 11000011, 52000002, "test", "Small left apical pneumothorax.", []),
]


def test_prep_script_writes_the_expected_rows(tmp_path, capsys):
    root = make_mimic(tmp_path / "mimic")
    out = tmp_path / "out" / "train.csv"
    assert prep.main(["--mimic-root", str(root), "--output", str(out)]) == 0
    table = pd.read_csv(out, dtype={"dicom_id": str})
    assert table.columns.tolist() == ["image_path", "report", "subject_id", "study_id", "dicom_id", "split",
                                      *CHEXPERT_LABELS]
    assert table["dicom_id"].tolist() == [row[0] for row in EXPECTED_ROWS]
    for (_, got), (dicom_id, subject, study, split, report, positives) in zip(table.iterrows(), EXPECTED_ROWS):
        assert got["image_path"] == f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom_id}.jpg"
        assert (got["subject_id"], got["study_id"], got["split"], got["report"]) == (subject, study, split, report)
        assert [label for label in CHEXPERT_LABELS if got[label] == 1.0] == positives
        # by default uncertain labels are written as -1, for train.py's --uncertain-policy to map
        assert [label for label in CHEXPERT_LABELS if got[label] == -1.0] == UNCERTAIN.get(dicom_id, [])
        assert all(got[label] == 0.0 for label in CHEXPERT_LABELS
                   if label not in positives + UNCERTAIN.get(dicom_id, []))
        assert os.path.isfile(root / got["image_path"])

    printed = capsys.readouterr().out
    for line in ["images in metadata: 12",
                 "excluded non-frontal views: 3 ((empty) 1, LATERAL 1, LL 1)",
                 "excluded frontal images without a split: 1",
                 "excluded frontal images without an image file: 1",
                 "excluded images whose report is missing: 1 (1 studies)",
                 "excluded images whose report is empty: 1 (1 studies)",
                 "report text by source (studies): findings 1, findings+impression 1, impression 1, last_section 1",
                 "studies without CheXpert labels (labels set to 0): 1",
                 f"wrote {out}: 5 rows (test 1, train 3, validate 1)"]:
        assert line in printed.splitlines(), printed

    first = out.read_bytes()
    assert prep.main(["--mimic-root", str(root), "--output", str(out)]) == 0
    assert out.read_bytes() == first


def test_prep_script_uncertain_ones_and_split_selection(tmp_path, capsys):
    root = make_mimic(tmp_path / "mimic")
    out = tmp_path / "train_only.csv"
    argv = ["--mimic-root", str(root), "--output", str(out), "--uncertain-policy", "ones", "--splits", "train"]
    assert prep.main(argv) == 0
    table = pd.read_csv(out, dtype={"dicom_id": str})
    assert table["dicom_id"].tolist() == ["c1", "a4", "f3"] and set(table["split"]) == {"train"}
    assert table["Edema"].tolist() == [1.0, 0.0, 0.0]           # -1 in study 50414267
    assert table["Consolidation"].tolist() == [0.0, 1.0, 1.0]   # -1 in study 53189527, both images
    assert f"wrote {out}: 3 rows (train 3)" in capsys.readouterr().out
    assert prep.main(argv[:-4] + ["--uncertain-policy", "zeros", "--splits", "train"]) == 0
    table = pd.read_csv(out, dtype={"dicom_id": str})
    assert table["Edema"].tolist() == [0.0, 0.0, 0.0] and table["Consolidation"].tolist() == [0.0, 0.0, 0.0]


def test_prep_script_reports_root_explicit_and_gzipped_csvs(tmp_path):
    root = make_mimic(tmp_path / "mimic")
    reports = tmp_path / "mimic-cxr-reports"
    for path in root.rglob("*.txt"):
        target = reports / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
    (root / "mimic-cxr-2.0.0-chexpert.csv").rename(tmp_path / "labels.csv")
    split = root / "mimic-cxr-2.0.0-split.csv"
    pd.read_csv(split).to_csv(str(split) + ".gz", index=False)  # as PhysioNet ships it
    split.unlink()
    out = tmp_path / "train.csv"
    assert prep.main(["--mimic-root", str(root), "--reports-root", str(reports), "--chexpert",
                      str(tmp_path / "labels.csv"), "--output", str(out)]) == 0
    assert pd.read_csv(out, dtype={"dicom_id": str})["dicom_id"].tolist() == [row[0] for row in EXPECTED_ROWS]


def assert_user_error(argv, capsys, message):
    with pytest.raises(SystemExit) as exit_info:
        prep.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n", err


def test_prep_script_errors(tmp_path, capsys):
    root = make_mimic(tmp_path / "mimic")
    out = str(tmp_path / "x.csv")
    metadata = root / "mimic-cxr-2.0.0-metadata.csv"
    pd.read_csv(metadata).drop(columns="ViewPosition").to_csv(metadata, index=False)
    assert_user_error(["--mimic-root", str(root), "--output", out], capsys,
                      f"{metadata}: missing column(s) 'ViewPosition' (found: dicom_id, subject_id, study_id, "
                      "PerformedProcedureStepDescription, Rows, Columns, StudyDate, StudyTime, "
                      "ProcedureCodeSequence_CodeMeaning, ViewCodeSequence_CodeMeaning, "
                      "PatientOrientationCodeSequence_CodeMeaning)")
    missing = tmp_path / "nowhere.csv"
    assert_user_error(["--mimic-root", str(root), "--metadata", str(missing), "--output", out], capsys,
                      f"{missing}: file not found")
    assert_user_error(["--mimic-root", str(tmp_path / "no_root"), "--output", out], capsys,
                      f"MIMIC-CXR-JPG folder not found: {tmp_path / 'no_root'}")
    assert not os.path.exists(out)


def test_prep_script_rejects_bad_ids_and_reports_an_empty_result(tmp_path, capsys):
    root = make_mimic(tmp_path / "mimic")
    metadata = root / "mimic-cxr-2.0.0-metadata.csv"
    table = pd.read_csv(metadata).astype({"study_id": object})
    table.loc[3, "study_id"] = "s53189527"
    table.to_csv(metadata, index=False)
    out = str(tmp_path / "x.csv")
    assert_user_error(["--mimic-root", str(root), "--output", out], capsys,
                      f"{metadata}: column 'study_id' row 4: 's53189527' is not an integer id")

    root = make_mimic(tmp_path / "no_images")
    for image in root.rglob("*.jpg"):
        image.unlink()
    with pytest.raises(SystemExit) as exit_info:
        prep.main(["--mimic-root", str(root), "--output", out])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "excluded frontal images without an image file: 8" in captured.out.splitlines()
    assert captured.err == ("error: no rows left to write for split(s) train, validate, test "
                            "(see the exclusions above)\n")
    assert not os.path.exists(out)


# Reading the training CSV back -----------------------------------------------------------------------

def test_read_training_csv_resolves_paths_and_reads_the_prep_output(tmp_path):
    root = make_mimic(tmp_path / "mimic")
    out = root / "mimic_cxr_train.csv"
    assert prep.main(["--mimic-root", str(root), "--output", str(out)]) == 0
    table = read_training_csv(out)  # data root defaults to the CSV's folder
    assert table["image_path"].tolist() == [
        os.path.join(root, f"files/p{str(s)[:2]}/p{s}/s{st}/{d}.jpg") for d, s, st, *_ in EXPECTED_ROWS]
    assert all(os.path.isfile(p) for p in table["image_path"])
    elsewhere = read_training_csv(out, data_root=str(tmp_path))
    assert elsewhere["image_path"].iloc[0] == os.path.join(tmp_path, "files/p10/p10000032/s50414267/c1.jpg")
    # the prep output keeps -1, so training's --uncertain-policy is what decides (one place)
    edema = CHEXPERT_LABELS.index("Edema")
    assert label_matrix(table, "ones")[0, edema] == 1.0 and label_matrix(table, "zeros")[0, edema] == 0.0


def test_read_training_csv_with_a_label_csv(tmp_path, capsys):
    pd.DataFrame({"image_path": ["a.jpg", "/abs/b.jpg", "c.jpg"], "report": ["x", "y", "z"],
                  "subject_id": [10000032, 10000764, 11000011], "study_id": [53189527, 57375967, 52000002]}
                 ).to_csv(tmp_path / "pairs.csv", index=False)
    label_table(LABEL_ROWS).to_csv(tmp_path / "labels.csv", index=False)
    table = read_training_csv(tmp_path / "pairs.csv", label_csv=tmp_path / "labels.csv")
    assert table["image_path"].tolist() == [os.path.join(tmp_path, "a.jpg"), "/abs/b.jpg",
                                            os.path.join(tmp_path, "c.jpg")]
    assert table["Consolidation"].tolist() == [-1.0, 0.0, 0.0]  # kept for the Dataset's uncertain policy
    assert table["No Finding"].tolist() == [0.0, 1.0, 0.0]
    assert capsys.readouterr().out == (f"{tmp_path / 'labels.csv'}: no label row for 1 of the studies in "
                                       f"{tmp_path / 'pairs.csv'}; their labels are 0\n")
    read_training_csv(tmp_path / "pairs.csv", label_csv=tmp_path / "labels.csv", quiet=True)  # DDP ranks > 0
    assert capsys.readouterr().out == ""

    with pytest.raises(UserInputError, match=r"pairs.csv: missing column\(s\) 'Atelectasis', .*or give a label CSV"):
        read_training_csv(tmp_path / "pairs.csv")
    pd.DataFrame({"image_path": ["a.jpg"], "report": ["x"]}).to_csv(tmp_path / "no_ids.csv", index=False)
    with pytest.raises(UserInputError, match=r"no_ids.csv: missing column\(s\) 'study_id'"):
        read_training_csv(tmp_path / "no_ids.csv", label_csv=tmp_path / "labels.csv")
    with pytest.raises(UserInputError, match=r"^data root not found: "):
        read_training_csv(tmp_path / "pairs.csv", data_root=tmp_path / "nope", label_csv=tmp_path / "labels.csv")


def test_prep_script_refuses_an_output_that_is_a_folder_before_the_work(tmp_path, capsys):
    root = make_mimic(tmp_path / "mimic")
    folder = tmp_path / "out"
    folder.mkdir()
    assert_user_error(["--mimic-root", str(root), "--output", str(folder)], capsys,
                      f"--output {folder}: is a folder; give a file name, e.g. {folder / 'out.csv'}")
    assert "images in metadata" not in capsys.readouterr().out and not list(folder.iterdir())
    taken = tmp_path / "taken"
    taken.write_text("x")
    assert_user_error(["--mimic-root", str(root), "--output", str(taken / "train.csv")], capsys,
                      f"--output {taken / 'train.csv'}: its folder {taken}: exists and is not a folder")
