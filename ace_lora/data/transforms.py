"""How an image becomes the encoder's input, in two halves: PIL image -> uint8 pixels (in the DataLoader
workers, or once, into the image cache), then uint8 -> normalised float (on the model's device).

- `train`: a bicubic resize of the whole image to the model's square S x S input, as released. The
  backbone's evaluation transform (resize the short side, centre crop) would cut the apices and bases off
  portrait chest X-rays.
- `eval`: the model's own evaluation transform (open_clip: Resize, CenterCrop, ...), as released.

Greyscale images stay one channel through the resize and are repeated to three only when normalised:
resizing mode L and repeating is bit-identical to resizing the RGB conversion (tests/data/test_images.py),
at a third of the work, and a batch of uint8 greyscale pixels is 12x smaller to copy to the GPU than
normalised float RGB. `normalise` computes exactly what torchvision's ToTensor + Normalize compute, so
the two halves give bit-identical inputs to the one-step transform.
"""
import functools
import json
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import PIL
import torch
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from ace_lora.errors import UserInputError

TRANSFORM_KINDS = ("train", "eval")
_TO_TENSOR = (T.ToTensor, T.PILToTensor)


@dataclass(frozen=True)
class InputSpec:
    """The encoder's input: S x S, normalised as (x - mean) / std, or by `levels`: the normalised value of each
    uint8 level per channel, as a model's own processor computes them (a transformers processor folds the 1/255
    into mean and std, which differs from ToTensor + Normalize in the last bit)."""
    size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    levels: Optional[Tuple[Tuple[float, ...], ...]] = field(default=None, compare=False, repr=False)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 1 or 3, S, S), on any device -> float32 (B, 3, S, S): ToTensor's x / 255, then
        Normalize's (x - mean) / std, with one channel repeated to three. Looked up in a (3, 256) table
        computed on the CPU with those very operations, so the result is the CPU's on every device (CUDA
        divides by a scalar as a multiplication by its reciprocal, which differs in the last bit)."""
        if pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[1] not in (1, 3):
            raise UserInputError(f"image pixels must be uint8 (B, 1 or 3, H, W), got {pixels.dtype} "
                                 f"{tuple(pixels.shape)}")
        table = (_level_table(self.mean, self.std, str(pixels.device)) if self.levels is None else
                 _fixed_levels(self.levels, str(pixels.device)))  # (3, 256)
        index = pixels.long().expand(-1, 3, -1, -1)  # (B, 3, S, S)
        return torch.stack([table[c][index[:, c]] for c in range(3)], dim=1)

    def describe(self) -> dict:
        """What decides the normalised inputs (feature caches key on it): size, mean, std, and a processor's own
        per-level values when it has them."""
        return {"size": self.size, "mean": self.mean, "std": self.std,
                **({"levels": self.levels} if self.levels is not None else {})}

    def transform(self) -> T.Compose:
        """The whole `train` transform of one image: PIL image -> (3, S, S) float tensor."""
        return T.Compose([PixelTransform("train", self.size, train_steps(self.size)), T.Lambda(self._normalise_one)])

    def _normalise_one(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.normalise(pixels[None])[0]


@functools.lru_cache(maxsize=16)
def _level_table(mean: Tuple[float, ...], std: Tuple[float, ...], device: str) -> torch.Tensor:
    """(3, 256) float32 on `device`: the normalised value of each uint8 level, per channel, computed on the
    CPU (once per normalisation and device, not per batch)."""
    levels = torch.arange(256, dtype=torch.float32).div(255).expand(3, 256)
    mean_ = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1)
    std_ = torch.as_tensor(std, dtype=torch.float32).view(-1, 1)
    return levels.sub(mean_).div(std_).to(device)


@functools.lru_cache(maxsize=16)
def _fixed_levels(levels: Tuple[Tuple[float, ...], ...], device: str) -> torch.Tensor:
    return torch.tensor(levels, dtype=torch.float32, device=device)


def train_steps(size: int) -> List[Callable]:
    return [T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC, antialias=True)]


class PixelTransform:
    """PIL image (RGB or L) -> uint8 (C, S, S) with C = 1 for greyscale and 3 for colour: the resize and
    crop steps of one transform kind, before any conversion to RGB, tensor or normalisation."""

    def __init__(self, kind: str, size: int, steps: Sequence[Callable]):
        self.kind, self.size, self.steps = kind, size, list(steps)

    def __call__(self, image) -> torch.Tensor:
        for step in self.steps:
            image = step(image)
        if isinstance(image, torch.Tensor):  # a step that already made the uint8 pixels (ProcessorPixels)
            return image
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        return TF.pil_to_tensor(image)

    def describe(self) -> dict:
        """What decides the pixels (recorded by the image cache, which refuses a cache made by another)."""
        return {"kind": self.kind, "size": self.size, "steps": [repr(step) for step in self.steps],
                "pillow": PIL.__version__}


def _is_rgb_conversion(step) -> bool:
    """open_clip's MaybeConvertMode / _convert_to_rgb, or any step named like them: the pixels keep their mode."""
    name = getattr(step, "__name__", type(step).__name__).lower()
    return "convert" in name and ("rgb" in name or "mode" in name)


def pixel_transform(preprocess: Callable, kind: str) -> PixelTransform:
    """The uint8 half of the `train` or `eval` transform of a model whose evaluation transform is `preprocess`."""
    if kind not in TRANSFORM_KINDS:
        raise UserInputError(f"transform must be one of {', '.join(TRANSFORM_KINDS)}, not {kind!r}")
    spec = input_spec(preprocess)
    if kind == "train":
        return PixelTransform(kind, spec.size, train_steps(spec.size))
    steps = list(getattr(preprocess, "transforms", []))
    if steps and isinstance(steps[0], ProcessorPixels):
        return PixelTransform(kind, spec.size, steps[:1])
    to_tensor = next(i for i, step in enumerate(steps) if isinstance(step, _TO_TENSOR))
    after = [step for step in steps[to_tensor + 1:] if not isinstance(step, T.Normalize)]
    if after:
        raise UserInputError(f"the model's preprocess has steps after ToTensor other than Normalize: {after}")
    return PixelTransform(kind, spec.size, [step for step in steps[:to_tensor] if not _is_rgb_conversion(step)])


def stack_pixels(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, C, S, S) from uint8 (C, S, S) images: C = 1 when every image is greyscale, else 3 (greyscale
    ones repeated)."""
    if all(image.shape[0] == 1 for image in images):
        return torch.stack(list(images))
    return torch.stack([image.expand(3, -1, -1) for image in images])


class ProcessorPixels:
    """The resize and crop of a transformers image processor (its default, torchvision backend): PIL image ->
    uint8 (C, S, S), computed by the processor itself without its rescale and normalisation (which the device
    does, `InputSpec.levels`). Greyscale stays one channel (the processor's resize works channel by channel, so
    that is bit-identical to its RGB conversion); other modes are converted to RGB by the processor."""

    def __init__(self, processor, size: int):
        self.processor, self.size = processor, size

    def __call__(self, image) -> torch.Tensor:
        out = self.processor(images=image, do_rescale=False, do_normalize=False,
                             do_convert_rgb=image.mode not in ("L", "RGB"), return_tensors="pt")
        return out["pixel_values"][0].to(torch.uint8)

    def __repr__(self) -> str:  # what the image cache records: every setting (and library) that decides the pixels
        import torchvision
        import transformers
        p = self.processor
        settings = {k: getattr(p, k, None) for k in ("size", "crop_size", "do_resize", "do_center_crop", "resample",
                                                     "do_convert_rgb")}
        settings.update(torchvision=torchvision.__version__, transformers=transformers.__version__)
        return f"ProcessorPixels({type(p).__name__}, {json.dumps(settings, default=str, sort_keys=True)})"

    def levels(self) -> Tuple[Tuple[float, ...], ...]:
        """(3, 256): the processor's rescale and normalisation of every uint8 level."""
        p = self.processor
        grid = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 256).expand(1, 3, 1, 256).contiguous()
        values = p.rescale_and_normalize(grid, p.do_rescale, p.rescale_factor, p.do_normalize, p.image_mean,
                                         p.image_std)
        return tuple(tuple(row.tolist()) for row in values.float()[0, :, 0])


def processor_preprocess(processor, size: int) -> T.Compose:
    """A transformers image processor as a model's evaluation transform: its pixels (ProcessorPixels), then
    ToTensor + Normalize with its mean and std; `input_spec` reads the processor's own normalisation."""
    return T.Compose([ProcessorPixels(processor, size), T.Lambda(_uint8_to_float),
                      T.Normalize(processor.image_mean, processor.image_std)])


def _uint8_to_float(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.expand(3, -1, -1).float().div(255)


def input_spec(eval_preprocess: Callable) -> InputSpec:
    """S (the centre crop's size, else the resize's) and the Normalize mean/std of the model's transform (a
    transformers processor's: its size and its own normalisation of each level)."""
    steps = getattr(eval_preprocess, "transforms", [])
    processor = next((t for t in steps if isinstance(t, ProcessorPixels)), None)
    if processor is not None:
        return InputSpec(processor.size, tuple(map(float, processor.processor.image_mean)),
                         tuple(map(float, processor.processor.image_std)), processor.levels())
    normalize = [t for t in steps if isinstance(t, T.Normalize)]
    sized = next((t for t in steps if isinstance(t, T.CenterCrop)), None) or \
        next((t for t in steps if isinstance(t, T.Resize)), None)
    if len(normalize) != 1 or sized is None or not any(isinstance(t, _TO_TENSOR) for t in steps):
        raise UserInputError(f"cannot read the input size and normalisation from the model's preprocess: "
                             f"{eval_preprocess}")
    size = sized.size
    size = (size, size) if isinstance(size, int) else tuple(size) * (2 if len(size) == 1 else 1)
    if size[0] != size[1]:
        raise UserInputError(f"the model's input must be square, this one is {size[0]}x{size[1]}")
    return InputSpec(int(size[0]), tuple(map(float, normalize[0].mean)), tuple(map(float, normalize[0].std)))
