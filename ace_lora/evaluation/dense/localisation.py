"""Training-free localisation: cosine similarity between patch tokens and a class text embedding.

The class embedding comes from the released chest X-ray prompt ensemble, computed by the zero-shot
evaluator's own `prompt_ensemble_embeddings` (`CHEST_XRAY_TEMPLATES`). Similarity maps (h, w) are upsampled
bilinearly to the S x S input; a threshold chosen on the validation split turns them into masks, or,
through connected regions (scipy.ndimage.label), into boxes scored by their mean similarity.
"""
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ace_lora.data.prompts import CHEST_XRAY_TEMPLATES, prompt_ensemble_embeddings
from ace_lora.evaluation.dense.detection import scale_boxes
from ace_lora.evaluation.metrics import dice_per_image

N_THRESHOLDS = 20
THRESHOLD_QUANTILES = np.linspace(0.5, 0.995, N_THRESHOLDS)  # of the validation similarities


@torch.no_grad()
def class_text_embedding(model, class_name: str, device: torch.device,
                         templates: Sequence[str] = CHEST_XRAY_TEMPLATES) -> torch.Tensor:
    """(D,) normalised embedding of `class_name` from the prompt ensemble."""
    return F.normalize(prompt_ensemble_embeddings(model, [class_name], templates, device)[0], dim=-1).cpu()


def similarity_maps(features: torch.Tensor, text: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, h, w) cosine similarity between each token of (N, D, h, w) grids and the (D,) embedding."""
    maps = [torch.einsum("bdhw,d->bhw", F.normalize(features[i:i + batch_size].float(), dim=1), text)
            for i in range(0, len(features), batch_size)]
    return torch.cat(maps)


def upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size, size) bilinear upsampling of (B, h, w) maps."""
    return F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def threshold_candidates(maps: torch.Tensor) -> np.ndarray:
    """Candidate thresholds: quantiles 0.5 ... 0.995 of the (validation) similarity values, unique."""
    return np.unique(np.quantile(maps.numpy().ravel(), THRESHOLD_QUANTILES))


def choose_threshold(candidates: Sequence[float], score: Callable[[float], float]) -> Tuple[float, List[dict]]:
    """The candidate with the highest score (the first on ties), and every (threshold, score) tried."""
    table = [{"threshold": float(t), "score": float(score(t))} for t in candidates]
    best = max(table, key=lambda row: (np.nan_to_num(row["score"], nan=-np.inf)))
    return best["threshold"], table


def threshold_masks(maps: torch.Tensor, threshold: float, size: int, batch_size: int = 64) -> torch.Tensor:
    """(N, size, size) bool masks: upsampled similarity > threshold."""
    return torch.cat([upsample(maps[i:i + batch_size], size) > threshold for i in range(0, len(maps), batch_size)])


def mean_dice_at(maps: torch.Tensor, masks: torch.Tensor, threshold: float) -> float:
    """Mean per-image Dice of the thresholded maps against (N, S, S) masks."""
    predicted = threshold_masks(maps, threshold, masks.shape[-1])
    return float(np.mean(dice_per_image(predicted.numpy(), masks.numpy())))


def boxes_from_map(similarity: np.ndarray, threshold: float) -> Tuple[np.ndarray, np.ndarray]:
    """Boxes (K, 4) xyxy in pixels of `similarity` (H, W), one per 8-connected region above
    `threshold`, and their scores (K,), the region's mean similarity; sorted best first."""
    regions, n = ndimage.label(similarity > threshold, structure=np.ones((3, 3)))
    if n == 0:
        return np.zeros((0, 4)), np.zeros(0)
    slices = ndimage.find_objects(regions)
    boxes = np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in slices], dtype=np.float64)
    scores = np.asarray(ndimage.mean(similarity, regions, index=np.arange(1, n + 1)), dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order]


def predict_region_boxes(maps: torch.Tensor, threshold: float, size: int, original_sizes: torch.Tensor,
                         batch_size: int = 64) -> List[Dict[str, np.ndarray]]:
    """Per image dict(boxes (K, 4) in ORIGINAL pixels, scores (K,)) from the upsampled maps."""
    predictions = []
    for start in range(0, len(maps), batch_size):
        for similarity, original in zip(upsample(maps[start:start + batch_size], size).numpy(),
                                        original_sizes[start:start + batch_size].tolist()):
            boxes, scores = boxes_from_map(similarity, threshold)
            predictions.append({"boxes": scale_boxes(boxes, (size, size), original), "scores": scores})
    return predictions
