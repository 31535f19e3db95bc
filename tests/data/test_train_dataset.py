"""The training Dataset, label handling, and the resumable, seeded data order."""
import os
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset

from ace_lora.data.image_cache import DecodedImages
from ace_lora.data.labels import CHEXPERT_LABELS
from ace_lora.data.synthetic import write_demo_dataset
from ace_lora.data.train_dataset import (
    ImageReportDataset,
    TokenizingCollate,
    TrainingLoader,
    build_training_dataset,
    iterate_batches,
    label_matrix,
    steps_per_epoch,
)
from ace_lora.data.transforms import pixel_transform
from ace_lora.errors import UserInputError
from ace_lora.model.factory import build_model


def epoch_loader(dataset, collate, *, batch_size, epoch, seed, rank=0, world_size=1, skip_batches=0, num_workers=0):
    """The training loader of one epoch, as the training loop sets it."""
    return TrainingLoader(dataset, collate, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
                          num_workers=num_workers).epoch(epoch, skip_batches)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    return write_demo_dataset(str(tmp_path_factory.mktemp("data")), n_train=20, n_test_per_class=1)


@pytest.fixture(scope="module")
def tiny_model(tiny_model_name):
    return build_model(tiny_model_name)


class IndexDataset(Dataset):
    """Items are their own index; records which indices were loaded."""

    def __init__(self, n):
        self.n, self.loaded = n, []

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        self.loaded.append(index)
        return torch.tensor(index)


def order(loader):
    return [batch.tolist() for batch in loader]


def test_label_matrix_policies_and_errors():
    table = pd.DataFrame({label: [1.0, 0.0, -1.0, np.nan] for label in CHEXPERT_LABELS})
    zeros, ones = label_matrix(table, "zeros"), label_matrix(table, "ones")
    assert zeros.shape == (4, 14) and zeros.dtype == np.float32
    np.testing.assert_array_equal(zeros[:, 0], [1, 0, 0, 0])  # uncertain and empty -> 0
    np.testing.assert_array_equal(ones[:, 0], [1, 0, 1, 0])  # uncertain -> 1, empty -> 0
    table.loc[1, "Edema"] = 2
    with pytest.raises(UserInputError, match=r"^t.csv: column 'Edema' row 2: '2.0', expected 1, 0, -1 or empty$"):
        label_matrix(table, source="t.csv")


def test_unparsable_labels_name_the_row(demo_data, tiny_model, tmp_path):
    table = pd.read_csv(demo_data.train_csv)
    table["Edema"] = table["Edema"].astype(object)
    table.loc[6, "Edema"] = "yes"  # would silently become 0 if unparsable text were treated as empty
    table.loc[2, "Edema"] = " "  # blank: an empty label, fine
    csv = tmp_path / "train.csv"
    table.to_csv(csv, index=False)
    with pytest.raises(UserInputError, match=rf"^{csv}: column 'Edema' row 7: 'yes', expected 1, 0, -1 or empty$"):
        build_training_dataset(str(csv), tiny_model.preprocess, data_root=demo_data.data_root)
    table.loc[:5, "split"] = "validate"  # row numbers stay those of the CSV file after the split filter
    table.to_csv(csv, index=False)
    with pytest.raises(UserInputError, match=r"column 'Edema' row 7: 'yes'"):
        build_training_dataset(str(csv), tiny_model.preprocess, data_root=demo_data.data_root)


def test_empty_reports_are_refused_up_front(demo_data, tiny_model, tmp_path):
    table = pd.read_csv(demo_data.train_csv)
    table.loc[[3, 9], "report"] = [np.nan, "   "]
    csv = tmp_path / "train.csv"
    table.to_csv(csv, index=False)
    with pytest.raises(UserInputError, match=rf"^{csv}: 2 of 20 training rows have an empty report "
                                             r"\(row\(s\) 4, 10\)$"):
        build_training_dataset(str(csv), tiny_model.preprocess, data_root=demo_data.data_root)


def test_dataset_items_and_tokenizing_collate(demo_data, tiny_model):
    dataset = build_training_dataset(demo_data.train_csv, tiny_model.preprocess)
    assert len(dataset) == 20
    image, report, labels = dataset[3]
    # the demo's X-rays are greyscale: one uint8 channel, normalised (and repeated) on the model's device
    assert image.shape == (1, 64, 64) and image.dtype == torch.uint8
    assert isinstance(report, str) and labels.shape == (14,)
    table = pd.read_csv(demo_data.train_csv)
    assert report == table["report"][3]
    np.testing.assert_array_equal(labels.numpy(), table[list(CHEXPERT_LABELS)].to_numpy()[3])
    # the collate function runs in workers: it must survive pickling and tokenize identically
    collate = pickle.loads(pickle.dumps(TokenizingCollate(tiny_model.tokenizer)))
    images, ids, batch_labels = collate([dataset[0], dataset[1]])
    assert images.shape == (2, 1, 64, 64) and images.dtype == torch.uint8 and batch_labels.shape == (2, 14)
    assert torch.equal(ids, tiny_model.tokenize([dataset[0][1], dataset[1][1]]))


def test_split_column_selects_rows(demo_data, tiny_model, tmp_path):
    table = pd.read_csv(demo_data.train_csv)
    table.loc[:4, "split"] = "validate"
    csv = tmp_path / "train.csv"
    table.to_csv(csv, index=False)
    dataset = build_training_dataset(str(csv), tiny_model.preprocess, data_root=demo_data.data_root)
    assert len(dataset) == 15
    assert len(build_training_dataset(str(csv), tiny_model.preprocess, demo_data.data_root, split="validate")) == 5
    with pytest.raises(UserInputError, match=r"no rows with split == 'test' \(splits present: train, validate\)"):
        build_training_dataset(str(csv), tiny_model.preprocess, demo_data.data_root, split="test")


def test_missing_images_are_counted_up_front(demo_data, tiny_model, tmp_path):
    table = pd.read_csv(demo_data.train_csv)
    table.loc[[2, 7], "image_path"] = ["mimic/nope_a.jpg", "mimic/nope_b.jpg"]
    csv = tmp_path / "train.csv"
    table.to_csv(csv, index=False)
    with pytest.raises(UserInputError, match=r"2 of 20 images not found: .*nope_a\.jpg, .*nope_b\.jpg"):
        build_training_dataset(str(csv), tiny_model.preprocess, data_root=demo_data.data_root)


def test_corrupt_image_in_a_worker_gives_a_one_line_error(demo_data, tiny_model, tmp_path):
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"not a jpeg")
    images = DecodedImages([str(bad)] * 4, pixel_transform(tiny_model.preprocess, "train"))
    dataset = ImageReportDataset([str(bad)] * 4, ["x"] * 4, np.zeros((4, 14)), images)
    loader = epoch_loader(dataset, TokenizingCollate(tiny_model.tokenizer), batch_size=2, epoch=0, seed=0,
                          num_workers=1)
    with pytest.raises(UserInputError) as caught:
        next(iter(iterate_batches(loader)))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"cannot read image {bad}")


def test_order_depends_on_seed_and_epoch_only():
    dataset = IndexDataset(40)
    torch.manual_seed(0)
    first = order(epoch_loader(dataset, None, batch_size=4, epoch=0, seed=1))
    torch.manual_seed(123)  # the global RNG does not matter ...
    state = torch.get_rng_state()
    assert order(epoch_loader(dataset, None, batch_size=4, epoch=0, seed=1)) == first
    assert torch.equal(torch.get_rng_state(), state)  # ... and is not consumed by the loader
    assert order(epoch_loader(dataset, None, batch_size=4, epoch=1, seed=1)) != first  # reshuffled per epoch
    assert order(epoch_loader(dataset, None, batch_size=4, epoch=0, seed=2)) != first
    assert sorted(sum(first, [])) == list(range(40))


def test_resumed_epoch_skips_batches_without_loading_them():
    full = order(epoch_loader(IndexDataset(30), None, batch_size=4, epoch=3, seed=5))
    assert len(full) == 7  # 30 // 4, the incomplete batch dropped
    dataset = IndexDataset(30)
    resumed = order(epoch_loader(dataset, None, batch_size=4, epoch=3, seed=5, skip_batches=3))
    assert resumed == full[3:]
    assert sorted(dataset.loaded) == sorted(sum(full[3:], []))  # the 12 skipped items were never read


def test_ranks_get_disjoint_equal_shares():
    per_rank = [sum(order(epoch_loader(IndexDataset(42), None, batch_size=5, epoch=0, seed=0, rank=r,
                                       world_size=2)), []) for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == 20 == steps_per_epoch(42, 5, 2) * 5
    assert not set(per_rank[0]) & set(per_rank[1])


def test_demo_dataset_layouts(demo_data):
    from ace_lora.evaluation.tasks import TASKS

    test = pd.read_csv(demo_data.test_csv)
    assert test.columns[0].startswith("Unnamed")  # the leading unnamed index column of CheXpert 5x200
    labels = TASKS["chexpert"].read_labels(test, demo_data.test_csv)  # exactly one of the 5 classes per row
    np.testing.assert_array_equal(np.bincount(labels), [1, 1, 1, 1, 1])
    assert all(os.path.isfile(os.path.join(demo_data.data_root, p)) for p in test["Path"])
    train = pd.read_csv(demo_data.train_csv)
    assert (train[list(CHEXPERT_LABELS)].sum(axis=1) == 1).all()
    # the prompt wordings occur in the training reports
    assert train["report"].str.contains("Findings suggesting").any()
    assert train["report"].str.contains("a chest X-ray image of").any()


def test_labels_from_a_separate_chexpert_csv(demo_data, tiny_model, tmp_path, capsys):
    table = pd.read_csv(demo_data.train_csv).drop(columns=list(CHEXPERT_LABELS))
    table["study_id"] = 100 + np.arange(len(table)) // 2  # two images per study
    csv, label_csv = tmp_path / "train.csv", tmp_path / "chexpert.csv"
    table.to_csv(csv, index=False)
    labels = pd.DataFrame({"study_id": [101, 100, 103]})  # out of order; other studies have no row
    for name in CHEXPERT_LABELS:
        labels[name] = [1.0, -1.0, np.nan]
    labels.to_csv(label_csv, index=False)
    for policy, uncertain in (("zeros", 0.0), ("ones", 1.0)):
        dataset = build_training_dataset(str(csv), tiny_model.preprocess, demo_data.data_root, str(label_csv),
                                         uncertain_policy=policy)
        got = dataset.labels[:, CHEXPERT_LABELS.index("Edema")].tolist()
        assert got[:8] == [uncertain, uncertain, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]  # joined on study_id, not by row
    assert "no label row for 7 of the studies" in capsys.readouterr().out
    build_training_dataset(str(csv), tiny_model.preprocess, demo_data.data_root, str(label_csv), quiet=True)
    assert capsys.readouterr().out == ""  # DDP ranks > 0 stay silent
