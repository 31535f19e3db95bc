"""The whole-image transform shared by training and the dense benchmarks."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from ace_lora.data.transforms import InputSpec, input_spec, pixel_transform
from ace_lora.errors import UserInputError
from ace_lora.model.backbone import load_backbone


@pytest.fixture(scope="module")
def tiny_model(tiny_model_name):
    return load_backbone(tiny_model_name)


def test_training_transform_resizes_the_whole_image(tiny_model):
    transform = input_spec(tiny_model.preprocess).transform()
    normalize = next(t for t in tiny_model.preprocess.transforms if isinstance(t, T.Normalize))
    pixels = np.zeros((128, 64, 3), np.uint8)  # portrait, like a chest X-ray: (H, W, 3)
    pixels[:8] = 255  # a white band at the top edge (the apices)
    pixels[-8:, :, 0] = 255  # a red band at the bottom edge (the bases)
    image = transform(Image.fromarray(pixels))
    assert image.shape == (3, 64, 64)  # the model's square input
    mean, std = torch.tensor(normalize.mean)[:, None, None], torch.tensor(normalize.std)[:, None, None]
    rgb = image * std + mean  # undo the model's own normalisation
    assert rgb[:, 0].mean() > 0.95 and rgb[0, -1].mean() > 0.95 and rgb[1:, -1].mean() < 0.05  # both edges kept
    assert rgb[:, 32].abs().max() < 0.05  # the middle stays black: a resize, not a crop
    # the eval transform (resize the short side + centre crop) loses both bands: the bug this guards against
    assert (tiny_model.preprocess(Image.fromarray(pixels)) * std + mean)[:, 0].mean() < 0.05


def test_input_spec_reads_size_and_normalisation_and_refuses_the_unreadable(tiny_model):
    spec = input_spec(tiny_model.preprocess)
    normalize = next(t for t in tiny_model.preprocess.transforms if isinstance(t, T.Normalize))
    assert spec == InputSpec(64, tuple(normalize.mean), tuple(normalize.std))
    with pytest.raises(UserInputError, match="cannot read the input size and normalisation"):
        input_spec(T.Compose([T.ToTensor()]))
    with pytest.raises(UserInputError, match="must be square, this one is 64x32"):
        input_spec(T.Compose([T.Resize((64, 32)), T.ToTensor(), T.Normalize((0.5,), (0.5,))]))


@pytest.mark.parametrize("layout", ["clip", "siglip"])
def test_a_transformers_models_inputs_are_its_processors_bit_for_bit(tiny_transformers, layout):
    """CLIP: shortest-edge resize + centre crop; SigLIP: resize to the square. uint8 pixels from the processor's
    own resize (greyscale kept one channel), normalised by its own per-level values, equal AutoProcessor's output
    (its default torchvision backend) for colour, greyscale, RGBA, small and large images."""
    from PIL import Image
    from transformers import AutoProcessor
    backbone = load_backbone(tiny_transformers[layout])
    spec, pixels = input_spec(backbone.preprocess), pixel_transform(backbone.preprocess, "eval")
    processor = AutoProcessor.from_pretrained(tiny_transformers[layout][3:])
    rng = np.random.default_rng(0)
    for (width, height), mode in (((97, 131), "RGB"), ((300, 200), "L"), ((64, 64), "RGB"), ((50, 90), "RGBA"),
                                  ((20, 31), "L")):
        shape = (height, width) if mode == "L" else (height, width, len(mode))
        image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
        ours = pixels(image)
        assert ours.dtype == torch.uint8 and ours.shape[0] == (1 if mode == "L" else 3)
        expected = processor(images=image, return_tensors="pt")["pixel_values"]
        assert torch.equal(spec.normalise(ours[None]), expected), (mode, width, height)
    assert spec.size == 64 and "ProcessorPixels" in repr(pixels.describe())
