"""A list of image files as a Dataset for batched evaluation, with unreadable files flagged, not raised.

Errors raised inside DataLoader workers come back as multi-line tracebacks; instead each item carries
the error message of an unreadable file, and the caller decides (raise one clean error, or count it).
"""
from typing import Callable, List, Optional, Tuple

import torch
from torch.utils.data import Dataset

from ace_lora.data.images import load_image
from ace_lora.errors import UserInputError

# (row index, image tensor or None, error message or None)
EvalItem = Tuple[int, Optional[torch.Tensor], Optional[str]]


class ImageListDataset(Dataset):
    """Item i: (i, transform(load_image(paths[i])), None), or (i, None, message) if it cannot be read."""

    def __init__(self, paths: List[str], transform: Callable):
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> EvalItem:
        try:
            return index, self.transform(load_image(self.paths[index], keep_greyscale=True)), None
        except UserInputError as error:  # load_image's one-line message names the file
            return index, None, str(error)


def collate_eval_items(items: List[EvalItem]):
    """(indices (B,), images (B', 3, H, W) of the readable items or None, [(index, message)] unreadable)."""
    readable = [(index, image) for index, image, _ in items if image is not None]
    unreadable = [(index, message) for index, image, message in items if image is None]
    indices = torch.tensor([index for index, _ in readable], dtype=torch.long)
    images = torch.stack([image for _, image in readable]) if readable else None
    return indices, images, unreadable
