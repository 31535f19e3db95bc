"""The one image loader used by training and every evaluation: JPEG, PNG and DICOM to an RGB PIL image.

DICOM pixels go through the standard display pipeline: modality LUT (RescaleSlope/Intercept or a
Modality LUT Sequence), then the VOI LUT Sequence or window (WindowCenter/Width), MONOCHROME1 is
inverted, and the result is scaled to 0..255 linearly from its own minimum and maximum. Because the
window clips, a windowed image maps the window onto 0..255. One exception keeps the released
evaluation numbers: 8-bit unsigned images with no rescale, VOI LUT or window (RSNA pneumonia) keep
their stored values, as the released scripts used `pixel_array` unchanged.
"""
import os
from typing import Optional, Union

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

from ace_lora.errors import UserInputError

DICOM_EXTENSIONS = (".dcm", ".dicom")
_DICOM_MAGIC_OFFSET = 128  # the "DICM" prefix follows a 128-byte preamble


def set_max_image_pixels(limit: Optional[int]) -> None:
    """--max-image-pixels: Pillow's decompression-bomb limit for this process and the DataLoader workers it
    forks (None: Pillow's default; 0: no limit)."""
    if limit is not None:
        if limit < 0:
            raise UserInputError(f"--max-image-pixels must be >= 0 (0: no limit), got {limit}")
        Image.MAX_IMAGE_PIXELS = limit // 2 or None  # Pillow refuses at twice this value (and warns above it)


def is_dicom(path: Union[str, os.PathLike]) -> bool:
    """True for a `.dcm`/`.dicom` name or a file with the DICOM "DICM" prefix at byte 128."""
    if os.fspath(path).lower().endswith(DICOM_EXTENSIONS):
        return True
    with open(path, "rb") as f:
        f.seek(_DICOM_MAGIC_OFFSET)
        return f.read(4) == b"DICM"


def load_image(path: Union[str, os.PathLike], keep_greyscale: bool = False,
               draft_size: Optional[int] = None) -> Image.Image:
    """Load `path` as an 8-bit RGB `PIL.Image.Image` (with `keep_greyscale`, greyscale sources as 8-bit L).

    `keep_greyscale` is the fast path of the model inputs: a greyscale image resized in mode L and then
    repeated to three channels is bit-identical to one converted to RGB first and resized as three
    channels (tests/data/test_images.py), at a third of the resize work and memory. Every transform of
    the model inputs converts to RGB after its resize (data/transforms.py; open_clip's MaybeConvertMode).

    - DICOM: see the module docstring. Multi-frame files: only the first frame is used. Colour
      (RGB, YBR_*, PALETTE COLOR) comes out as RGB.
    - PNG/JPEG: 16-bit and 32-bit greyscale (modes I;16, I, F) are scaled to 0..255 linearly from
      the image's own minimum and maximum; every other mode (L, LA, P, RGBA, CMYK...) goes through
      PIL's `convert("RGB")`, which drops alpha.

    `draft_size` (the fast decode, off by default because it changes the pixels): a JPEG is decoded in the
    DCT domain at the smallest scale (1/2, 1/4 or 1/8) that keeps both sides at least `draft_size`
    (PIL's `draft`): a 2544x3056 MIMIC-CXR image asked for 448 decodes at 636x764, much faster. Other
    formats are decoded in full.

    Raises UserInputError for a missing file or one that cannot be decoded, also for an image over
    Pillow's decompression-bomb limit (`--max-image-pixels` of the scripts, `set_max_image_pixels`).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserInputError(f"{path} is a folder, not an image file")
    if not os.path.isfile(path):
        raise UserInputError(f"image not found: {path}")
    grey = "L" if keep_greyscale else "RGB"
    if is_dicom(path):
        pixels = _read_dicom(path)
        return Image.fromarray(pixels).convert(grey if pixels.ndim == 2 else "RGB")
    try:
        with Image.open(path) as image:
            if draft_size is not None and image.format == "JPEG":
                image.draft(None, (draft_size, draft_size))
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                return Image.fromarray(_minmax_to_uint8(np.asarray(image))).convert(grey)
            return image.convert(grey if image.mode == "L" else "RGB")
    except Image.DecompressionBombError:
        limit = 2 * Image.MAX_IMAGE_PIXELS
        raise _unreadable(path, f"{image_pixels(path):,} pixels, over the limit of {limit:,} that guards against "
                                "decompression bombs; if the file is trusted, pass --max-image-pixels N (0: no "
                                "limit)") from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for unknown or damaged files
        raise _unreadable(path, e) from e


def image_pixels(path: str) -> int:
    """Width x height from the file's header (nothing decoded)."""
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as image:
            return image.width * image.height
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _read_dicom(path: str) -> np.ndarray:
    """Decode the first frame of a DICOM file to uint8, (H, W) or (H, W, 3)."""
    try:
        ds = pydicom.dcmread(path, force=True)
        if "PixelData" not in ds:
            raise _unreadable(path, "DICOM file has no pixel data")
        arr = pixel_array(ds, index=0)  # YBR_* is converted to RGB here
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        if photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)  # (H, W, 3), 8 or 16 bits like the palette
        if arr.ndim == 3:  # RGB / YBR / palette, (H, W, 3)
            return arr if arr.dtype == np.uint8 else _minmax_to_uint8(arr)
        if photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise _unreadable(path, f"unsupported PhotometricInterpretation {photometric}")
        out = _monochrome_to_uint8(arr, ds)
        return 255 - out if photometric == "MONOCHROME1" else out
    except UserInputError:
        raise
    except Exception as e:  # pydicom and its decoder plugins raise many types for bad or unsupported files
        raise _unreadable(path, f"{type(e).__name__}: {e}") from e


def _unreadable(path: str, reason) -> UserInputError:
    return UserInputError(f"cannot read image {path}: " + " ".join(str(reason).split()))


def _monochrome_to_uint8(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    identity_rescale = float(ds.get("RescaleSlope") or 1) == 1 and float(ds.get("RescaleIntercept") or 0) == 0
    has_modality = "ModalityLUTSequence" in ds or not identity_rescale
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if arr.dtype == np.uint8 and ds.get("BitsStored", 8) == 8 and not has_modality and not has_voi:
        return arr  # stored values as they are (RSNA pneumonia: 8-bit MONOCHROME2)
    arr = apply_modality_lut(arr, ds)
    if has_voi:
        arr = apply_voi_lut(arr, ds, index=0)
    return _minmax_to_uint8(arr)


def _minmax_to_uint8(arr) -> np.ndarray:
    """Linearly map [arr.min(), arr.max()] onto 0..255; a constant image becomes all zeros."""
    arr = np.asarray(arr, dtype=np.float64)
    low, high = arr.min(), arr.max()
    if high <= low:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((arr - low) * (255.0 / (high - low))).astype(np.uint8)
