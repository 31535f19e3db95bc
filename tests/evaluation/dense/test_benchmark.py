"""The dense benchmark's bookkeeping: which images train, which are shown, what a run reports."""
import argparse
import types

import numpy as np
import pandas as pd

from ace_lora.evaluation.dense import benchmark
from ace_lora.evaluation.dense.definitions import DENSE_TASKS


def fake_run(tmp_path, task, table, **args):
    defaults = dict(train_set="all", train_fraction=1.0, seed=0)
    return types.SimpleNamespace(task=DENSE_TASKS[task], args=argparse.Namespace(**{**defaults, **args}),
                                 tables={"train": table}, path=lambda name: str(tmp_path / name))


def test_training_subset_is_seeded_stratified_and_listed(tmp_path):
    table = pd.DataFrame({"ImageId": [f"i{n}" for n in range(40)], "has_pneumothorax": [n % 4 == 0 for n in range(40)]})
    run = fake_run(tmp_path, "siim_segmentation", table, train_fraction=0.5, seed=3)
    first = benchmark.training_subset(run)
    assert len(first) == 20 and first["has_pneumothorax"].sum() == 5  # the positive share is kept
    listed = pd.read_csv(tmp_path / "train_ids.csv")
    assert listed["ImageId"].tolist() == first["ImageId"].tolist()
    assert benchmark.training_subset(run)["ImageId"].tolist() == first["ImageId"].tolist()  # seeded


def test_detection_subsets_count_boxes(tmp_path):
    boxes = [[[0, 0, 1, 1]] * (n % 3) for n in range(12)]
    table = pd.DataFrame({"patientId": [f"p{n}" for n in range(12)], "boxes": boxes})
    used = benchmark.training_subset(fake_run(tmp_path, "rsna_detection", table))
    assert used["n_boxes"].tolist() == [n % 3 for n in range(12)]
    assert used["has_boxes"].tolist() == [int(n % 3 > 0) for n in range(12)]


class Encoded:
    """A CachedSplit's length and encode time, as inference_rate reads them."""

    def __init__(self, n: int, encode_seconds: float):
        self.n, self.encode_seconds = n, encode_seconds

    def __len__(self) -> int:
        return self.n


def test_figures_show_positives_first_and_rates_skip_cached_features():
    order = benchmark.figure_order(np.array([False, True, False, True, True]))
    assert order.tolist()[:3] == [1, 3, 4] and set(order.tolist()[3:]) <= {0, 2}
    assert benchmark.inference_rate(Encoded(10, 2.0), 4.0) == 2.5
    assert np.isnan(benchmark.inference_rate(Encoded(10, 0.0), 4.0))  # features read from the cache: no rate
