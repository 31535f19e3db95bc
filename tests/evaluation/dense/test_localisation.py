"""Zero-shot localisation: similarity maps to thresholds, masks and scored region boxes."""
import numpy as np
import pytest
import torch

from ace_lora.evaluation.dense.localisation import (
    boxes_from_map,
    choose_threshold,
    mean_dice_at,
    predict_region_boxes,
    similarity_maps,
    threshold_masks,
)


def test_boxes_from_map_are_connected_regions_scored_by_mean_similarity():
    similarity = np.zeros((20, 30))
    similarity[2:5, 3:9] = 0.5  # region A: rows 2-4, columns 3-8
    similarity[10:18, 20:24] = 0.8  # region B
    similarity[10, 20] = 1.6  # raises B's mean
    boxes, scores = boxes_from_map(similarity, 0.3)
    assert boxes.tolist() == [[20, 10, 24, 18], [3, 2, 9, 5]]  # best first, xyxy with exclusive ends
    assert scores == pytest.approx([(0.8 * 31 + 1.6) / 32, 0.5])
    assert boxes_from_map(similarity, 2.0)[0].shape == (0, 4)


def test_region_boxes_are_scaled_to_the_original_image():
    maps = torch.zeros(1, 4, 4)
    maps[0, :2, :2] = 1.0
    [prediction] = predict_region_boxes(maps, 0.5, 64, torch.tensor([[1024, 512]]))
    x1, y1, x2, y2 = prediction["boxes"][0]
    assert x1 == 0 and y1 == 0 and 400 < x2 < 624 and 200 < y2 < 312  # about half of 1024 x 512


def test_choose_threshold_takes_the_best_and_skips_nan():
    scores = {0.1: 0.2, 0.2: float("nan"), 0.3: 0.7, 0.4: 0.7}
    threshold, table = choose_threshold(list(scores), scores.get)
    assert threshold == 0.3 and [row["threshold"] for row in table] == [0.1, 0.2, 0.3, 0.4]




def test_similarity_maps_are_cosines_and_dice_is_exact_on_a_perfect_threshold():
    features = torch.zeros(2, 4, 2, 2)  # (N, D, h, w)
    features[:, 0, 0, 0] = 1.0  # top-left patch points at the text
    features[:, 1, 1:, :] = 1.0  # the other patches point elsewhere
    text = torch.tensor([1.0, 0, 0, 0])
    maps = similarity_maps(features, text)
    assert maps.shape == (2, 2, 2) and maps[0, 0, 0] == pytest.approx(1.0) and maps[0, 1, 1] == pytest.approx(0.0)
    masks = threshold_masks(maps, 0.5, size=8)
    assert tuple(masks.shape) == (2, 8, 8) and masks[0, 0, 0] and not masks[0, -1, -1]
    assert mean_dice_at(maps, masks, 0.5) == pytest.approx(1.0)
