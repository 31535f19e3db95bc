"""An image source (data/image_cache.py: files decoded, or the image cache) as a Dataset for batched
evaluation, with unreadable images flagged, not raised. Items and batches are uint8 pixels, normalised
by the model on its device.

Errors raised inside DataLoader workers come back as multi-line tracebacks; instead each item carries
the error message of an unreadable file, and the caller decides (raise one clean error, or count it).
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from ace_lora.data.transforms import stack_pixels
from ace_lora.errors import UserInputError

# (row index, image tensor or None, error message or None)
EvalItem = Tuple[int, Optional[torch.Tensor], Optional[str]]


class ImageListDataset(Dataset):
    """Item i: (i, images[i] (uint8 (C, S, S)), None), or (i, None, message) if it cannot be read."""

    def __init__(self, images: Sequence):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> EvalItem:
        try:
            return index, self.images[index], None
        except UserInputError as error:  # load_image's one-line message names the file
            return index, None, str(error)


def collate_eval_items(items: List[EvalItem]):
    """(indices (B,), uint8 images (B', C, S, S) of the readable items or None, [(index, message)] unreadable)."""
    readable = [(index, image) for index, image, _ in items if image is not None]
    unreadable = [(index, message) for index, image, message in items if image is None]
    indices = torch.tensor([index for index, _ in readable], dtype=torch.long)
    images = stack_pixels([image for _, image in readable]) if readable else None
    return indices, images, unreadable
