"""The synthetic dense demo sets: split sizes, masks and boxes that mark the bright targets, determinism."""
import json
import os

import numpy as np
import pandas as pd
from PIL import Image

from ace_lora.evaluation.dense.demo_data import write_rsna_demo, write_siim_demo
from tests.data.test_prepare import read_outputs


def test_siim_demo_masks_mark_the_bright_targets(tmp_path):
    csvs = write_siim_demo(str(tmp_path), split_sizes=(6, 2, 2), size=48, seed=1)
    assert [len(pd.read_csv(csvs[s])) for s in ("train", "val", "test")] == [6, 2, 2]
    rows = pd.concat(pd.read_csv(c) for c in csvs.values())
    for row in rows.itertuples():
        image = np.asarray(Image.open(tmp_path / row.image_path), np.float32)
        mask = np.asarray(Image.open(tmp_path / row.mask_path)) > 0
        assert bool(mask.any()) == bool(row.has_pneumothorax)
        if mask.any():
            assert image[mask].mean() > image[~mask].mean() + 60  # the target is what the mask marks
    write_siim_demo(str(tmp_path / "again"), split_sizes=(6, 2, 2), size=48, seed=1)
    assert {k: v for k, v in read_outputs(tmp_path).items() if not k.startswith("again")} == \
        read_outputs(tmp_path / "again")


def test_rsna_demo_boxes_are_tight_around_the_targets(tmp_path):
    csvs = write_rsna_demo(str(tmp_path), split_sizes=(8, 2, 2), size=64, seed=2)
    rows = pd.concat(pd.read_csv(c) for c in csvs.values())
    assert len(rows) == 12 and any(json.loads(b) for b in rows["boxes"])
    for row in rows.itertuples():
        image = np.asarray(Image.open(os.path.join(tmp_path, row.Path)), np.float32)
        for x1, y1, x2, y2 in json.loads(row.boxes):
            assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
            inside = image[int(y1):int(y2), int(x1):int(x2)]
            assert inside.max() > np.median(image) + 60  # a bright target inside each box
