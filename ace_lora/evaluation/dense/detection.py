"""Detection head on frozen patch-token grids: torchvision FCOS on a ViTDet simple feature pyramid.

Why FCOS: it is anchor-free (one point per location), so there are no anchor sizes or aspect ratios
to retune for 224-pixel inputs and tall, wide-ranging lung opacities; it is a dense one-stage head that
sits directly on a feature pyramid; its focal loss handles the extreme foreground/background imbalance;
it has fewer moving parts than Faster R-CNN (RPN, RoI sampling, second stage); and torchvision's
implementation accepts images without boxes.

The detector never sees images: its backbone, the simple feature pyramid, reads the cached (D, h, w)
token grids, so the frozen ViT runs once per image in total, not once per epoch. Boxes are in input
pixels (S x S) inside the detector; `scale_boxes` maps them from and to the original image pixels.
"""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.image_list import ImageList

from ace_lora.errors import UserInputError
from ace_lora.evaluation.dense.features import CachedSplit, LayerNorm2d
from ace_lora.evaluation.dense.head_training import FitResult, FitSettings, fit_head
from ace_lora.evaluation.metrics import detection_metrics
from ace_lora.runtime import autocast

PYRAMID_SCALES = (4.0, 2.0, 1.0, 0.5)  # ViTDet: strides p/4, p/2, p, 2p for patch size p
VALIDATION_KEY = "map_40_75"  # early-stopping score: the benchmark's headline metric


def _conv_ln(in_channels: int, out_channels: int) -> nn.Sequential:
    """ViTDet's output convs: 1x1 conv + LN + 3x3 conv + LN."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                         nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), LayerNorm2d(out_channels))


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid from one stride-p token grid (B, D, h, w).

    x4: two 2x2 stride-2 transposed convs (LN + GELU between); x2: one; x1: identity; x1/2: 2x2 max
    pool; each level then goes through `_conv_ln` to `out_channels`. Returns OrderedDict p2..p5 as
    torchvision detectors expect, with the `out_channels` attribute they read.
    """

    def __init__(self, in_channels: int, out_channels: int = 256):
        super().__init__()
        self.out_channels = out_channels
        self.input_norm = LayerNorm2d(in_channels)
        half, quarter = max(1, in_channels // 2), max(1, in_channels // 4)
        self.rescale = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(in_channels, half, 2, stride=2), LayerNorm2d(half), nn.GELU(),
                          nn.ConvTranspose2d(half, quarter, 2, stride=2)),
            nn.ConvTranspose2d(in_channels, half, 2, stride=2),
            nn.Identity(),
            nn.MaxPool2d(2),
        ])
        self.outputs = nn.ModuleList([_conv_ln(c, out_channels) for c in (quarter, half, in_channels, in_channels)])

    def forward(self, grid: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        grid = self.input_norm(grid)
        return OrderedDict((f"p{level}", output(rescale(grid)))  # (B, C, h * scale, w * scale)
                           for level, rescale, output in zip(range(2, 6), self.rescale, self.outputs))


class TokenGridFCOS(FCOS):
    """torchvision FCOS (one class) whose backbone is a SimpleFeaturePyramid over cached token grids.

    forward(grids (B, D, h, w), targets=None): in training, targets are dicts with `boxes` (K, 4) xyxy
    in input pixels and `labels` (K,) zeros, and the FCOS losses are returned; in eval, detections
    (boxes in input pixels, scores, labels) per image. The parent's image transform is not used: the
    inputs are already encoded, and box scaling to original pixels is `scale_boxes`.
    """

    def __init__(self, in_channels: int, grid_size: int, image_size: int, channels: int = 256, head_convs: int = 4,
                 score_thresh: float = 0.05, nms_thresh: float = 0.6, detections_per_img: int = 100):
        if image_size % grid_size or (image_size // grid_size) % 4:
            raise UserInputError(f"the detector needs a patch size divisible by 4 "
                                 f"(input {image_size}, grid {grid_size})")
        if channels % 32:
            raise UserInputError(f"detector channels must be a multiple of 32 (FCOS GroupNorm), got {channels}")
        patch = image_size // grid_size
        strides = tuple(int(patch / scale) for scale in PYRAMID_SCALES)  # anchor size = stride, as FCOS
        anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
        super().__init__(SimpleFeaturePyramid(in_channels, channels), num_classes=1, min_size=image_size,
                         max_size=image_size, anchor_generator=anchors,
                         head=FCOSHead(channels, num_anchors=1, num_classes=1, num_convs=head_convs),
                         score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img)
        self.image_size = image_size

    def forward(self, grids: torch.Tensor, targets: Optional[List[Dict[str, torch.Tensor]]] = None):
        features = list(self.backbone(grids).values())
        head_outputs = self.head(features)
        size = self.image_size
        # Anchors only read the canvas's shape and sizes: an expanded zero tensor, no memory.
        canvas = ImageList(grids.new_zeros(1, 1, 1, 1).expand(len(grids), 1, size, size), [(size, size)] * len(grids))
        anchors = self.anchor_generator(canvas, features)
        num_anchors_per_level = [f.shape[-2] * f.shape[-1] for f in features]
        if self.training:
            return self.compute_loss(targets, head_outputs, anchors, num_anchors_per_level)
        split_outputs = {k: list(v.split(num_anchors_per_level, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(a.split(num_anchors_per_level)) for a in anchors]
        return self.postprocess_detections(split_outputs, split_anchors, canvas.image_sizes)


def scale_boxes(boxes: np.ndarray, from_size: Sequence[float], to_size: Sequence[float]) -> np.ndarray:
    """(K, 4) xyxy boxes from an image of (width, height) `from_size` to one of `to_size`."""
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * np.array([sx, sy, sx, sy])


def input_boxes(boxes: Sequence[Sequence[float]], original_size: Sequence[int],
                image_size: int) -> Tuple[np.ndarray, int]:
    """Training targets: boxes scaled to the S x S input and clipped to it; (boxes (K, 4), number dropped
    because nothing of them was inside the image)."""
    scaled = np.clip(scale_boxes(boxes, original_size, (image_size, image_size)), 0, image_size)
    keep = (scaled[:, 2] > scaled[:, 0]) & (scaled[:, 3] > scaled[:, 1])
    return scaled[keep], int((~keep).sum())


@torch.no_grad()
def predict_boxes(detector: TokenGridFCOS, split: CachedSplit, device: torch.device, precision: str = "fp32",
                  batch_size: int = 64) -> List[Dict[str, np.ndarray]]:
    """Per image dict(boxes (K, 4) xyxy in ORIGINAL pixels, scores (K,)), best score first."""
    detector.eval()
    size = (detector.image_size, detector.image_size)
    predictions = []
    for start in range(0, len(split), batch_size):
        with autocast(device, precision):
            detections = detector(split.features[start:start + batch_size].to(device).float())
        for detection, original in zip(detections, split.sizes[start:start + batch_size].tolist()):
            predictions.append({"boxes": scale_boxes(detection["boxes"].float().cpu().numpy(), size, original),
                                "scores": detection["scores"].float().cpu().numpy()})
    return predictions


def box_targets(boxes: Sequence[Sequence[Sequence[float]]]) -> List[Dict[str, np.ndarray]]:
    """detection_metrics targets from per-image box lists (original pixels)."""
    return [{"boxes": np.asarray(b, dtype=np.float64).reshape(-1, 4)} for b in boxes]


def train_detector(detector: TokenGridFCOS, train: CachedSplit, train_boxes: List[np.ndarray], val: CachedSplit,
                   val_boxes: Sequence[Sequence[Sequence[float]]], settings: FitSettings) -> FitResult:
    """Fit on cached training grids with targets `train_boxes` (input pixels); early stopping on the
    validation mAP@[.40:.75] (boxes in original pixels)."""
    device = settings.device
    targets = [{"boxes": torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.zeros(len(b), dtype=torch.long)} for b in train_boxes]
    val_targets = box_targets(val_boxes)

    def batch_loss(head: nn.Module, indices: torch.Tensor) -> torch.Tensor:
        grid = train.features[indices].to(device).float()  # (B, D, h, w)
        batch = [{k: v.to(device) for k, v in targets[i].items()} for i in indices.tolist()]
        return sum(head(grid, batch).values())

    def validate(head: nn.Module) -> float:
        predictions = predict_boxes(head, val, device, settings.precision, settings.batch_size)
        return detection_metrics(predictions, val_targets, n_bootstrap=0)[VALIDATION_KEY]

    return fit_head(detector, len(train), batch_loss, validate, settings)
