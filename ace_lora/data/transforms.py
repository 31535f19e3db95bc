"""The one image-to-input transform of training and the dense benchmarks: a bicubic resize of the whole
image to the model's square S x S input, ToTensor, then the model's own mean/std.

The backbone's evaluation transform (resize the short side, centre crop) would cut the apices and bases
off portrait chest X-rays; training resizes the whole image, as released. S, mean and std are read from
the model's evaluation transform (open_clip: a torchvision Compose of Resize, CenterCrop, ..., Normalize).
"""
from dataclasses import dataclass
from typing import Callable, Tuple

from torchvision import transforms as T

from ace_lora.errors import UserInputError


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes the encoder's input: a plain S x S resize, then (x - mean) / std."""
    size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    def transform(self) -> T.Compose:
        """RGB or greyscale (L) PIL image -> (3, S, S) float tensor; L is resized as one channel and repeated
        to three after the resize (bit-identical to resizing its RGB conversion, and faster)."""
        return T.Compose([T.Resize((self.size, self.size), interpolation=T.InterpolationMode.BICUBIC,
                                   antialias=True), T.Lambda(to_rgb), T.ToTensor(), T.Normalize(self.mean, self.std)])


def to_rgb(image):
    """PIL image in RGB (a greyscale one repeated to three channels); an RGB one as it is."""
    return image if image.mode == "RGB" else image.convert("RGB")


def input_spec(eval_preprocess: Callable) -> InputSpec:
    """S (the centre crop's size, else the resize's) and the Normalize mean/std of the model's transform."""
    steps = getattr(eval_preprocess, "transforms", [])
    normalize = [t for t in steps if isinstance(t, T.Normalize)]
    sized = next((t for t in steps if isinstance(t, T.CenterCrop)), None) or \
        next((t for t in steps if isinstance(t, T.Resize)), None)
    if len(normalize) != 1 or sized is None:
        raise UserInputError(f"cannot read the input size and normalisation from the model's preprocess: "
                             f"{eval_preprocess}")
    size = sized.size
    size = (size, size) if isinstance(size, int) else tuple(size) * (2 if len(size) == 1 else 1)
    if size[0] != size[1]:
        raise UserInputError(f"the model's input must be square, this one is {size[0]}x{size[1]}")
    return InputSpec(int(size[0]), tuple(map(float, normalize[0].mean)), tuple(map(float, normalize[0].std)))
