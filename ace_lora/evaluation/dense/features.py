"""Frozen patch-token grids of an ACE-LoRA image encoder, cached so that each image is encoded once.

Input: a plain resize of the whole image to the model's input size S x S (bicubic, as open_clip) and the
model's own mean/std. open_clip's evaluation transform resizes the short side and centre-crops; a dense
task needs every pixel of the original to map to the input, so pixel (x, y) of a W x H original is
(x * S / W, y * S / H) here. For the square 1024 x 1024 X-rays both transforms are the same.

Features (`--features`), the patch tokens (token 0, the CLS token, dropped) as a (D, h, w) grid:
  last-layer  `model.image_tokens(x)[0][:, 1:]`: the last ViT layer's tokens through the visual head's
              projection (not normalised). Frozen-encoder dense protocols (MGCA's SETR-PUP for ViT,
              ViTDet) use the last layer's patch tokens; they keep the most spatial detail.
  hgnn        `model.embed_image_tokens(*model.image_tokens(x))[:, 1:]`: the ACE-HGNN's refined,
              L2-normalised tokens (plain normalised tokens when the model has no image hypergraph):
              the tokens ACE-LoRA aligns with text, mixed along hyperedges, so smoother.
"""
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ace_lora.data.images import load_image
from ace_lora.data.transforms import InputSpec
from ace_lora.errors import UserInputError
from ace_lora.evaluation.dense.definitions import FEATURE_KINDS
from ace_lora.io import atomic_save
from ace_lora.runtime import autocast

CACHE_FORMAT = 1  # bump when the cached content changes


def image_tensor(image: Image.Image, spec: InputSpec) -> torch.Tensor:
    """(3, S, S) normalised model input from an RGB PIL image (ace_lora.data.transforms)."""
    return spec.transform()(image)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """(size, size) bool mask: the 0/1 mask resized with PIL's (area-weighted) bilinear filter, >= 0.5."""
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.BILINEAR)
    return np.asarray(resized) >= 128


def read_mask(path: str) -> np.ndarray:
    """(H, W) bool mask from a 0/255 (any non-zero = foreground) PNG."""
    try:
        with Image.open(path) as mask:
            return np.asarray(mask.convert("L")) > 0
    except (OSError, ValueError) as error:
        raise UserInputError(f"cannot read mask {path}: {error}") from error


# (index, image (3, S, S) or None, mask (S, S) bool or None, original (width, height), error or None)
DenseItem = Tuple[int, Optional[torch.Tensor], Optional[torch.Tensor], Tuple[int, int], Optional[str]]


class DenseImageDataset(Dataset):
    """Images (and masks) at the model input size; an unreadable file is reported in the item, not raised,
    because errors raised in DataLoader workers come back as multi-line tracebacks."""

    def __init__(self, image_paths: List[str], spec: InputSpec, mask_paths: Optional[List[str]] = None):
        self.image_paths, self.mask_paths, self.spec = image_paths, mask_paths, spec

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> DenseItem:
        try:
            image = load_image(self.image_paths[index])
            mask = None
            if self.mask_paths is not None:
                full = read_mask(self.mask_paths[index])
                if full.shape[::-1] != image.size:
                    raise UserInputError(f"mask {self.mask_paths[index]} is {full.shape[1]}x{full.shape[0]}, "
                                         f"its image is {image.size[0]}x{image.size[1]}")
                mask = torch.from_numpy(resize_mask(full, self.spec.size))
            return index, image_tensor(image, self.spec), mask, image.size, None
        except UserInputError as error:
            return index, None, None, (0, 0), str(error)


def collate_dense_items(items: List[DenseItem]):
    """(indices (B,), images (B, 3, S, S), masks (B, S, S) or None, sizes (B, 2), first error or None)."""
    errors = [error for *_, error in items if error is not None]
    if errors:
        return None, None, None, None, errors[0]
    indices = torch.tensor([item[0] for item in items])
    images = torch.stack([item[1] for item in items])
    masks = None if items[0][2] is None else torch.stack([item[2] for item in items])
    sizes = torch.tensor([item[3] for item in items])
    return indices, images, masks, sizes, None


def patch_grid(num_patches: int) -> Tuple[int, int]:
    """(h, w) of a square patch grid with `num_patches` tokens (14 x 14 for BiomedCLIP at 224)."""
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"{num_patches} patch tokens do not form a square grid")
    return side, side


def token_grid(model, images: torch.Tensor, kind: str) -> torch.Tensor:
    """(B, D, h, w) patch-token grid of `images` (B, 3, S, S); see the module docstring for `kind`."""
    if kind not in FEATURE_KINDS:
        raise UserInputError(f"--features must be one of {', '.join(FEATURE_KINDS)}, not {kind!r}")
    tokens, cls_attention = model.image_tokens(images)  # (B, N, D), (B, N-1)
    if kind == "hgnn":
        tokens = model.embed_image_tokens(tokens, cls_attention)  # (B, N, D), normalised
    patches = tokens[:, 1:]  # (B, h*w, D), row-major
    h, w = patch_grid(patches.shape[1])
    return patches.transpose(1, 2).reshape(len(patches), -1, h, w)  # (B, D, h, w)


@dataclass
class CachedSplit:
    """Frozen features of one split, in CSV order; the heads train and predict from these alone."""
    name: str
    features: torch.Tensor  # (N, D, h, w) float16, CPU
    sizes: torch.Tensor  # (N, 2) original (width, height) in pixels
    masks: Optional[torch.Tensor]  # (N, S, S) bool at the input size, segmentation only
    encode_seconds: float  # wall time of loading and encoding (0 when read from the disk cache)

    def __len__(self) -> int:
        return len(self.features)

    @property
    def images_per_second(self) -> float:
        return len(self) / self.encode_seconds if self.encode_seconds > 0 else math.nan


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of (B, C, H, W) maps, at each position (as ViTDet and ConvNeXt)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def cache_file(cache_dir: str, split: str, identity: dict, image_paths: List[str],
               mask_paths: Optional[List[str]]) -> str:
    """<cache_dir>/<split>-<hash>.pt; the hash covers the model identity, feature kind, input
    transform and the exact file lists, so a changed setting never reads stale features."""
    key = json.dumps({"format": CACHE_FORMAT, "identity": identity, "images": image_paths, "masks": mask_paths},
                     sort_keys=True, default=str)
    return os.path.join(cache_dir, f"{split}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt")


@torch.no_grad()
def extract_split(model, name: str, image_paths: List[str], spec: InputSpec, kind: str, device: torch.device,
                  precision: str, batch_size: int = 64, num_workers: int = 4, mask_paths: Optional[List[str]] = None,
                  cache_path: Optional[str] = None, progress: bool = True) -> CachedSplit:
    """Encode every image once (batched DataLoader, autocast) into a CachedSplit.

    With `cache_path`, a file written by an earlier run is memory-mapped instead of re-encoding, and a
    fresh result is saved there (atomically).
    """
    if cache_path is not None and os.path.isfile(cache_path):
        state = torch.load(cache_path, map_location="cpu", mmap=True, weights_only=True)
        print(f"{name}: features read from {cache_path}")
        return CachedSplit(name, state["features"], state["sizes"], state["masks"], 0.0)
    n = len(image_paths)
    loader = DataLoader(DenseImageDataset(image_paths, spec, mask_paths), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=device.type == "cuda", collate_fn=collate_dense_items)
    features, sizes = None, torch.zeros((n, 2), dtype=torch.long)
    masks = torch.zeros((n, spec.size, spec.size), dtype=torch.bool) if mask_paths is not None else None
    start = time.perf_counter()
    for indices, images, batch_masks, batch_sizes, error in tqdm(loader, desc=f"encoding {name}", unit="batch",
                                                                  disable=not progress):
        if error is not None:
            raise UserInputError(error)
        with autocast(device, precision):
            grid = token_grid(model, images.to(device, non_blocking=True), kind)  # (B, D, h, w)
        if features is None:
            features = torch.empty((n, *grid.shape[1:]), dtype=torch.float16)
        features[indices] = grid.to("cpu", torch.float16)
        sizes[indices] = batch_sizes
        if masks is not None:
            masks[indices] = batch_masks
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    split = CachedSplit(name, features, sizes, masks, time.perf_counter() - start)
    if cache_path is not None:
        atomic_save({"features": features, "sizes": sizes, "masks": masks}, cache_path)
    return split
