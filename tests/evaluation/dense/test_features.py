"""Frozen patch-token grids, the dense input transform, the feature cache, and the dense split CSVs."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ace_lora.data.transforms import input_spec
from ace_lora.errors import UserInputError
from ace_lora.evaluation.dense import features as F
from ace_lora.evaluation.dense.definitions import IMAGE_FILE, MASK_FILE, RSNA_DETECTION, SIIM_SEGMENTATION
from ace_lora.evaluation.dense.demo_data import write_rsna_demo, write_siim_demo
from ace_lora.evaluation.dense.splits import (
    read_split,
)
from ace_lora.model.factory import load_model_for_eval


@pytest.fixture(scope="module")
def tiny_model(tiny_model_name):
    return load_model_for_eval(tiny_model_name)


# --------------------------------------------------------------------------- token grids


def test_full_size_grid_is_14x14_of_512_and_hgnn_tokens_are_unit_norm(fake_biomedclip_dir, shared_dir):
    checkpoint = os.path.join(shared_dir, "checkpoints", "ACE_LoRA.pt")
    model = load_model_for_eval(f"local-dir:{fake_biomedclip_dir}", checkpoint)
    spec = input_spec(model.preprocess)
    assert spec.size == 224
    assert spec.mean == pytest.approx(model.preprocess.transforms[-1].mean)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        last = F.token_grid(model, images, "last-layer")
        refined = F.token_grid(model, images, "hgnn")
    assert last.shape == refined.shape == (2, 512, 14, 14)
    assert torch.allclose(refined.norm(dim=1), torch.ones(2, 14, 14), atol=1e-4)
    assert not torch.allclose(torch.nn.functional.normalize(last, dim=1), refined, atol=1e-3)  # the HGNN refines


def test_grid_is_the_patch_tokens_in_row_major_order(tiny_model):
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        tokens, attention = tiny_model.image_tokens(images)
        grid = F.token_grid(tiny_model, images, "last-layer")
        refined = F.token_grid(tiny_model, images, "hgnn")
        expected_refined = tiny_model.embed_image_tokens(tokens, attention)
    assert grid.shape == (3, tokens.shape[-1], 4, 4)  # 64 / 16: derived from the 17 tokens
    for row, col in ((0, 0), (0, 3), (2, 1), (3, 3)):
        assert torch.allclose(grid[:, :, row, col], tokens[:, 1 + 4 * row + col])
        assert torch.allclose(refined[:, :, row, col], expected_refined[:, 1 + 4 * row + col])


def test_patch_grid_is_derived_from_the_token_count():
    assert F.patch_grid(196) == (14, 14)
    assert F.patch_grid(16) == (4, 4)
    with pytest.raises(ValueError, match="square"):
        F.patch_grid(50)


def test_unknown_feature_kind_is_a_user_error(tiny_model):
    with pytest.raises(UserInputError, match="--features must be one of"):
        F.token_grid(tiny_model, torch.zeros(1, 3, 64, 64), "penultimate")


# --------------------------------------------------------------------------- input transform


def test_plain_resize_keeps_the_whole_image(tiny_model):
    """A 200 x 100 image with its left quarter bright: a centre crop would cut the bright part away."""
    pixels = np.zeros((100, 200, 3), dtype=np.uint8)
    pixels[:, :50] = 255
    spec = input_spec(tiny_model.preprocess)
    tensor = F.image_tensor(Image.fromarray(pixels), spec)
    assert tensor.shape == (3, 64, 64)
    bright_columns = (tensor[0].mean(dim=0) > 0).float().mean()
    assert bright_columns == pytest.approx(0.25, abs=1 / 64)
    mean, std = spec.mean[0], spec.std[0]
    assert tensor[0, 32, 2] == pytest.approx((1 - mean) / std, abs=1e-3)  # normalised with the model's mean/std


def test_mask_resize_is_area_faithful():
    mask = np.zeros((1024, 1024), dtype=bool)
    mask[256:768, 100:612] = True  # a quarter of the image
    small = F.resize_mask(mask, 64)
    assert small.shape == (64, 64) and small.sum() == 32 * 32


def test_mask_of_another_size_than_its_image_is_reported(tmp_path, tiny_model):
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(tmp_path / "image.png")
    Image.fromarray(np.zeros((30, 40), dtype=np.uint8)).save(tmp_path / "mask.png")
    with pytest.raises(UserInputError, match=r"mask .*mask.png is 40x30, its image is 40x40"):
        F.extract_split(tiny_model, "train", [str(tmp_path / "image.png")], input_spec(tiny_model.preprocess), "hgnn",
                        torch.device("cpu"), "fp32", num_workers=0, mask_paths=[str(tmp_path / "mask.png")],
                        progress=False)


# --------------------------------------------------------------------------- extraction and cache


@pytest.fixture(scope="module")
def siim_tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("siim")
    csvs = write_siim_demo(str(root), split_sizes=(12, 4, 4), seed=3)
    return {split: read_split(SIIM_SEGMENTATION, path) for split, path in csvs.items()}


def test_extraction_matches_direct_encoding_and_keeps_csv_order(siim_tables, tiny_model):
    table = siim_tables["train"]
    spec = input_spec(tiny_model.preprocess)
    split = F.extract_split(tiny_model, "train", table[IMAGE_FILE].tolist(), spec, "last-layer", torch.device("cpu"),
                            "fp32", batch_size=5, num_workers=0, mask_paths=table[MASK_FILE].tolist(), progress=False)
    assert split.features.dtype == torch.float16 and split.features.shape == (12, 64, 4, 4)
    assert split.sizes.tolist() == [[160, 160]] * 12
    images = torch.stack([F.image_tensor(Image.open(p).convert("RGB"), spec) for p in table[IMAGE_FILE]])
    with torch.no_grad():
        direct = F.token_grid(tiny_model, images, "last-layer")
    assert torch.allclose(split.features.float(), direct, atol=2e-2, rtol=1e-2)
    positives = table["has_pneumothorax"].to_numpy().astype(bool)
    assert (split.masks.flatten(1).any(dim=1).numpy() == positives).all()


def test_feature_cache_is_reused_and_keyed_by_settings(siim_tables, tiny_model, tmp_path, monkeypatch):
    table = siim_tables["val"]
    images, spec, cpu = table[IMAGE_FILE].tolist(), input_spec(tiny_model.preprocess), torch.device("cpu")
    path = F.cache_file(str(tmp_path), "val", {"features": "hgnn"}, images, None)
    assert path != F.cache_file(str(tmp_path), "val", {"features": "last-layer"}, images, None)
    assert path != F.cache_file(str(tmp_path), "val", {"features": "hgnn"}, images[:-1], None)
    first = F.extract_split(tiny_model, "val", images, spec, "hgnn", cpu, "fp32", num_workers=0, cache_path=path,
                            progress=False)
    assert os.path.isfile(path) and first.encode_seconds > 0

    def must_not_encode(*args, **kwargs):
        raise AssertionError("the cached split was encoded again")

    monkeypatch.setattr(F, "token_grid", must_not_encode)
    second = F.extract_split(tiny_model, "val", images, spec, "hgnn", cpu, "fp32", num_workers=0, cache_path=path,
                             progress=False)
    assert torch.equal(first.features, second.features) and torch.equal(first.sizes, second.sizes)
    assert second.encode_seconds == 0


def test_demo_writers_produce_dataset_prep_layouts(tmp_path):
    siim = write_siim_demo(str(tmp_path / "siim"), split_sizes=(6, 2, 2), seed=0)
    table = pd.read_csv(siim["train"])
    assert list(table.columns) == list(SIIM_SEGMENTATION.columns)
    mask = np.asarray(Image.open(tmp_path / "siim" / table["mask_path"][0]))
    assert set(np.unique(mask)) <= {0, 255} and bool(mask.any()) == bool(table["has_pneumothorax"][0])
    rsna = pd.read_csv(write_rsna_demo(str(tmp_path / "rsna"), split_sizes=(6, 2, 2), seed=0)["test"])
    assert list(rsna.columns) == list(RSNA_DETECTION.columns) and len(rsna) == 2
    for boxes in rsna["boxes"]:
        for x1, y1, x2, y2 in json.loads(boxes):
            assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 160
