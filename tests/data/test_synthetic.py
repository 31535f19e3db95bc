"""The synthetic demo data: deterministic files, labels that match the drawn finding, shared prompt wording,
and a DICOM writer whose files the loader reads back exactly."""
import re

import numpy as np
import pandas as pd

from ace_lora.data.images import load_image
from ace_lora.data.labels import CHEXPERT_5X200_CLASSES, CHEXPERT_FILE_LABELS, CHEXPERT_LABELS
from ace_lora.data.synthetic import (
    PROMPT_FRACTION,
    SHARED_TEMPLATES,
    demo_vocabulary,
    write_demo_dataset,
    write_dicom,
)
from tests.data.test_prepare import read_outputs


def test_the_demo_data_is_deterministic_and_labelled_by_its_finding(tmp_path):
    first = write_demo_dataset(str(tmp_path / "a"), n_train=40, n_test_per_class=2, seed=3)
    write_demo_dataset(str(tmp_path / "b"), n_train=40, n_test_per_class=2, seed=3)
    assert read_outputs(tmp_path / "a") == read_outputs(tmp_path / "b")
    train = pd.read_csv(first.train_csv)
    assert len(train) == first.n_train == 40 and (train[list(CHEXPERT_LABELS)].sum(axis=1) == 1).all()
    findings = train[list(CHEXPERT_LABELS)].idxmax(axis=1)
    assert set(findings) == set(CHEXPERT_5X200_CLASSES)
    assert all(finding.lower() in report.lower() for finding, report in zip(findings, train["report"]))
    prompt_worded = [any(t.format(f=f.lower()) in r for t in SHARED_TEMPLATES[:2]) for f, r in zip(findings,
                                                                                                  train["report"])]
    assert 0.1 < np.mean(prompt_worded) < 2 * PROMPT_FRACTION  # some reports share the prompts' wording
    test = pd.read_csv(first.test_csv, index_col=0)
    assert list(test.columns[5:19]) == list(CHEXPERT_FILE_LABELS) and len(test) == first.n_test == 10
    vocabulary = set(first.vocabulary)
    assert {w for r in train["report"] for w in re.findall(r"\w+|[^\w\s]", r.lower())} <= vocabulary  # the tokenizer's
    assert set(demo_vocabulary()) <= vocabulary


def test_write_dicom_round_trips_through_the_loader(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (12, 9), dtype=np.uint8)
    path = write_dicom(tmp_path / "a.dcm", pixels)
    assert np.array_equal(np.asarray(load_image(path, keep_greyscale=True)), pixels)  # RSNA: stored values kept
    wide = (pixels.astype(np.uint16) * 16)
    windowed = write_dicom(tmp_path / "b.dcm", wide, WindowCenter=2040, WindowWidth=4080)
    assert load_image(windowed, keep_greyscale=True).size == (9, 12)
