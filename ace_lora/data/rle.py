"""Run-length encoding of SIIM-ACR pneumothorax masks.

Masks are flattened column-major (Fortran order: down the first column, then the next), as in the
competition. The competition used two encodings and nothing in a row says which one it is, so every
function takes an explicit ``relative`` flag:

* relative (stage 1, ``train-rle.csv``), the encoding of the competition's ``mask_functions.py``:
  0-based positions; each start is an offset from the end (exclusive) of the previous run, the first
  from pixel 0, i.e. ``pos += start; mask[pos:pos + length] = 1; pos += length``.
* absolute (stage 2, ``stage_2_train.csv``), the standard Kaggle encoding: ``start length`` pairs with
  1-based starts, i.e. ``mask[start - 1:start - 1 + length] = 1``.

``-1``, an empty string or NaN means no mask. Decoding one kind as the other usually runs past the end
of the image (absolute read as relative) or goes backwards (relative read as absolute); both raise
`UserInputError` instead of producing a wrong mask.
"""
from typing import Tuple

import numpy as np

from ace_lora.errors import UserInputError

NO_MASK = "-1"


def _parse_pairs(rle) -> np.ndarray:
    """(N, 2) int64 array of (start, length) pairs; empty for '-1', '' or NaN."""
    if rle is None or (isinstance(rle, float) and np.isnan(rle)):
        return np.zeros((0, 2), dtype=np.int64)
    text = str(rle).strip()
    if text in ("", NO_MASK):
        return np.zeros((0, 2), dtype=np.int64)
    try:
        values = np.array(text.split(), dtype=np.int64)
    except ValueError:
        raise UserInputError(f"RLE has a value that is not an integer: {text[:40]!r}") from None
    if len(values) % 2:
        raise UserInputError(f"RLE has an odd number of values ({len(values)}); expected start/length pairs")
    pairs = values.reshape(-1, 2)
    if (pairs[:, 0] < 0).any() or (pairs[:, 1] < 1).any():
        raise UserInputError("RLE has a negative start or a length below 1")
    return pairs


def _run_bounds(rle, n_pixels: int, relative: bool) -> Tuple[np.ndarray, np.ndarray]:
    """0-based [start, end) of every run, checked to lie inside an image of `n_pixels` pixels."""
    pairs = _parse_pairs(rle)
    lengths = pairs[:, 1]
    if relative:
        ends = np.cumsum(pairs[:, 0] + lengths)
        starts = ends - lengths
    else:
        if (pairs[:, 0] < 1).any():
            raise UserInputError("absolute RLE has a start of 0, but starts are 1-based (is it relative RLE?)")
        starts = pairs[:, 0] - 1
        ends = starts + lengths
        backwards = np.flatnonzero(starts[1:] < ends[:-1])
        if len(backwards):
            i = backwards[0] + 1
            raise UserInputError(
                f"absolute RLE run {i} starts at pixel {starts[i] + 1}, before the previous run ends "
                f"(pixel {ends[i - 1]}): is it relative RLE?")
    if len(ends) and ends.max() > n_pixels:
        raise UserInputError(
            f"RLE run ends at pixel {ends.max()}, past the end of the image ({n_pixels} pixels): "
            f"wrong image size, or {'relative' if relative else 'absolute'} RLE is the wrong kind")
    return starts, ends


def rle_decode(rle, height: int = 1024, width: int = 1024, *, relative: bool) -> np.ndarray:
    """Decode one RLE string to a (height, width) uint8 mask with values {0, 1}."""
    flat = np.zeros(height * width, dtype=np.uint8)
    for start, end in zip(*_run_bounds(rle, height * width, relative)):
        flat[start:end] = 1
    return flat.reshape((height, width), order="F")


def rle_encode(mask: np.ndarray, *, relative: bool) -> str:
    """Encode a 2-D mask (non-zero = foreground) as an RLE string; '-1' for an empty mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    flat = np.concatenate([[0], mask.ravel(order="F") != 0, [0]]).astype(np.int8)
    changes = np.flatnonzero(np.diff(flat))  # 0-based run starts and (exclusive) ends, interleaved
    starts, ends = changes[0::2], changes[1::2]
    if not len(starts):
        return NO_MASK
    if relative:
        offsets = starts - np.concatenate([[0], ends[:-1]])
    else:
        offsets = starts + 1
    return " ".join(map(str, np.column_stack([offsets, ends - starts]).ravel()))


def merge_rles(rles, height: int = 1024, width: int = 1024, *, relative: bool) -> np.ndarray:
    """Union of the masks of several RLE rows of one image (SIIM lists each region on its own row)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for rle in rles:
        mask |= rle_decode(rle, height, width, relative=relative)
    return mask
