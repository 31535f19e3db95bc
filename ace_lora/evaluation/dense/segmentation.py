"""Segmentation head on frozen patch-token grids: a SETR-PUP-style progressive upsampling decoder
trained with focal + Dice loss, predicting one foreground logit per input pixel."""
import math
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from ace_lora.evaluation.dense.features import CachedSplit, LayerNorm2d
from ace_lora.evaluation.dense.head_training import FitResult, FitSettings, fit_head
from ace_lora.evaluation.metrics import dice_per_image
from ace_lora.runtime import autocast

FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0  # RetinaNet's focal loss constants


class ProgressiveUpsamplingDecoder(nn.Module):
    """SETR-PUP-style decoder: (B, D, h, w) token grid -> (B, S, S) logits.

    LayerNorm on the tokens, a 1x1 conv to `channels`, then ceil(log2(S / h)) stages of 3x3 conv +
    BatchNorm + ReLU + bilinear x2 upsampling (4 stages for 14 -> 224), then a 1x1 conv to one logit.
    SETR keeps 256 channels throughout; here they halve at each stage (down to channels / 8), which
    keeps the full-resolution stages cheap without changing the design (256 -> 128, 64, 32, 32).
    """

    def __init__(self, in_channels: int, grid_size: int, output_size: int, channels: int = 256):
        super().__init__()
        self.output_size = output_size
        n_stages = max(0, math.ceil(math.log2(output_size / grid_size)))
        min_channels = max(1, channels // 8)
        layers = [LayerNorm2d(in_channels), nn.Conv2d(in_channels, channels, kernel_size=1)]
        width = channels
        for _ in range(n_stages):
            out = max(min_channels, width // 2)
            layers += [nn.Conv2d(width, out, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True), nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)]
            width = out
        layers.append(nn.Conv2d(width, 1, kernel_size=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        logits = self.layers(grid)  # (B, 1, h * 2^stages, w * 2^stages)
        if logits.shape[-1] != self.output_size:
            logits = F.interpolate(logits, size=(self.output_size, self.output_size), mode="bilinear",
                                   align_corners=False)
        return logits[:, 0]  # (B, S, S)


def focal_dice_loss(logits: torch.Tensor, target: torch.Tensor, focal_weight: float = 10.0) -> torch.Tensor:
    """focal_weight * mean focal loss + mean over images of (1 - soft Dice).

    logits, target: (B, S, S). Soft Dice is per image with +1 smoothing, so an empty target asks for an
    empty prediction (scoring 1), as the metric does. The focal weight follows MGCA's mixed loss (10).
    """
    logits, target = logits.float(), target.float()
    focal = sigmoid_focal_loss(logits, target, alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA, reduction="mean")
    probs = logits.sigmoid()
    inter = (probs * target).sum(dim=(1, 2))  # (B,)
    dice = (2 * inter + 1) / (probs.sum(dim=(1, 2)) + target.sum(dim=(1, 2)) + 1)  # (B,)
    return focal_weight * focal + (1 - dice).mean()


@torch.no_grad()
def predict_masks(decoder: nn.Module, features: torch.Tensor, device: torch.device, precision: str = "fp32",
                  batch_size: int = 64) -> Tuple[torch.Tensor, torch.Tensor]:
    """(masks (N, S, S) bool at probability >= 0.5, max probability per image (N,)), on the CPU."""
    decoder.eval()
    masks, peaks = [], []
    for start in range(0, len(features), batch_size):
        with autocast(device, precision):
            logits = decoder(features[start:start + batch_size].to(device).float()).float()  # (B, S, S)
        masks.append((logits >= 0).cpu())
        peaks.append(logits.flatten(1).max(dim=1).values.sigmoid().cpu())
    return torch.cat(masks), torch.cat(peaks)


def mean_dice(masks: torch.Tensor, targets: torch.Tensor) -> float:
    return float(np.mean(dice_per_image(masks.numpy(), targets.numpy())))


def train_decoder(decoder: nn.Module, train: CachedSplit, val: CachedSplit, settings: FitSettings,
                  focal_weight: float = 10.0) -> FitResult:
    """Fit on the cached training features; early stopping on the validation Dice at threshold 0.5."""
    device = settings.device

    def batch_loss(head: nn.Module, indices: torch.Tensor) -> torch.Tensor:
        grid = train.features[indices].to(device).float()  # (B, D, h, w)
        return focal_dice_loss(head(grid), train.masks[indices].to(device), focal_weight)

    def validate(head: nn.Module) -> float:
        masks, _ = predict_masks(head, val.features, device, settings.precision, settings.batch_size)
        return mean_dice(masks, val.masks)

    return fit_head(decoder, len(train), batch_loss, validate, settings)
