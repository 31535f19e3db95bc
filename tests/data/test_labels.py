"""The label vocabularies: the orders the data files and the released evaluation depend on."""
import os
import re

import pytest

from ace_lora.data import labels as L


def test_label_orders_are_those_of_the_data_files(shared_dir):
    formats = open(os.path.join(shared_dir, "FORMATS.md"), encoding="utf-8").read()
    mimic = re.search(r"mimic-cxr-2\.0\.0-chexpert\.csv`: `subject_id, study_id` then 14 labels: (.*?)\. Values",
                      formats, re.S)
    chexpert = re.search(r"the 14\s+CheXpert labels in the order (.*?) \(0\.0/1\.0\)", formats, re.S)
    if not mimic or not chexpert:
        pytest.skip("FORMATS.md no longer lists the label orders in the expected sentences")
    assert L.CHEXPERT_LABELS == tuple(" ".join(mimic.group(1).split()).split(", "))
    assert L.CHEXPERT_FILE_LABELS == tuple(" ".join(chexpert.group(1).split()).split(", "))


def test_vocabularies_are_consistent():
    assert sorted(L.CHEXPERT_LABELS) == sorted(L.CHEXPERT_FILE_LABELS)  # the same 14, in two orders
    assert set(L.CHEXPERT_5X200_CLASSES) <= set(L.CHEXPERT_LABELS)
    for names in (L.CHEXPERT_LABELS, L.NIH_LABELS, tuple(L.LC25000_CLASSES.values()), tuple(L.MHIST_CLASSES.values())):
        assert len(set(names)) == len(names)
    assert L.RSNA_CLASSES[0] == L.SIIM_CLASSES[0] == L.NIH_NO_FINDING == "No Finding"  # negative class first
    assert L.UNCERTAIN_POLICIES == ("zeros", "ones")
