"""The shared image loader on pydicom's real example files and on small files written here."""
import os
import re

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from ace_lora.data.images import is_dicom, load_image
from ace_lora.data.synthetic import write_dicom
from ace_lora.errors import UserInputError


def as_array(path):
    image = load_image(path)
    assert image.mode == "RGB"
    return np.asarray(image)


def grey(path):
    """The loaded image as (H, W) after checking the three channels are identical."""
    arr = as_array(path)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all()
    return arr[..., 0]


@pytest.mark.parametrize("name, size", [
    ("CT_small.dcm", (128, 128)),          # 16-bit signed, RescaleIntercept -1024
    ("MR_small.dcm", (64, 64)),            # 16-bit with WindowCenter/Width
    ("JPGExtended.dcm", (256, 1024)),      # 12-bit JPEG Extended
    ("JPEG2000.dcm", (256, 1024)),
    ("rtdose_rle.dcm", (10, 10)),          # RLE, 32-bit, 15 frames
    ("693_J2KI.dcm", (512, 512)),          # JPEG 2000 with rescale and window
])
def test_real_monochrome_dicoms_load_as_full_range_rgb(name, size):
    arr = grey(get_testdata_file(name))
    assert arr.shape == (size[1], size[0]) and arr.dtype == np.uint8
    assert arr.min() == 0 and arr.max() == 255


@pytest.mark.parametrize("name, size", [
    ("examples_jpeg2k.dcm", (640, 480)),   # = US1_J2KR: YBR_RCT JPEG 2000 lossless
    ("examples_ybr_color.dcm", (320, 240)),  # YBR_FULL_422 JPEG, 30 frames
    ("examples_palette.dcm", (800, 350)),  # PALETTE COLOR
    ("SC_rgb_rle_16bit_2frame.dcm", (100, 100)),
])
def test_real_colour_dicoms_load_as_rgb(name, size):
    arr = as_array(get_testdata_file(name))
    assert arr.shape == (size[1], size[0], 3) and arr.dtype == np.uint8
    assert not (arr[..., 0] == arr[..., 1]).all()  # colour survived


def test_compressed_and_big_endian_copies_decode_to_the_same_image():
    reference = grey(get_testdata_file("MR_small.dcm"))
    for name in ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                 "MR_small_bigendian.dcm"]:
        np.testing.assert_array_equal(grey(get_testdata_file(name)), reference, err_msg=name)


def test_multiframe_takes_the_first_frame():
    first = grey(get_testdata_file("rtdose_1frame.dcm"))
    np.testing.assert_array_equal(grey(get_testdata_file("rtdose.dcm")), first)
    np.testing.assert_array_equal(grey(get_testdata_file("rtdose_rle.dcm")), first)


def test_window_of_real_mr_is_applied():
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)  # 600, 1600
    x = ds.pixel_array.astype(np.float64)
    windowed = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1)  # DICOM LINEAR window
    expected = (windowed - windowed.min()) / (windowed.max() - windowed.min()) * 255
    out = grey(get_testdata_file("MR_small.dcm")).astype(np.float64)
    assert np.abs(out - expected).max() <= 1.0
    plain = (x - x.min()) / (x.max() - x.min()) * 255
    assert np.abs(out - plain).max() > 50  # the window made a difference


def test_ybr_is_converted_to_rgb():
    # pydicom's SC_rgb test images: horizontal bars red, light red, green, light green, blue, ...
    bars = [[255, 0, 0], [255, 128, 128], [0, 255, 0], [128, 255, 128], [0, 0, 255], [128, 128, 255],
            [0, 0, 0], [64, 64, 64], [192, 192, 192], [255, 255, 255]]
    rows = [5, 15, 25, 35, 45, 55, 65, 75, 85, 95]
    rgb = as_array(get_testdata_file("SC_rgb_rle.dcm"))
    assert rgb[rows, 50].tolist() == bars
    ybr = as_array(get_testdata_file("SC_ybr_full_422_uncompressed.dcm")).astype(int)
    assert np.abs(ybr[rows, 50] - np.array(bars)).max() <= 5


def test_undecodable_real_dicom_raises_with_the_path():
    # JPEG-lossy.dcm has invalid scan parameters (JPGExtended.dcm is its fixed copy)
    path = get_testdata_file("JPEG-lossy.dcm")
    with pytest.raises(UserInputError, match=r"^cannot read image .*JPEG-lossy\.dcm: RuntimeError: ") as e:
        load_image(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("tags", [{}, {"RescaleSlope": 1, "RescaleIntercept": 0}])
def test_8bit_monochrome2_keeps_stored_values(tmp_path, tags):
    pixels = np.random.default_rng(0).integers(40, 200, size=(20, 30), dtype=np.uint8)  # not 0..255
    path = write_dicom(tmp_path / "rsna.dcm", pixels, **tags)
    arr = as_array(path)
    assert arr.shape == (20, 30, 3)
    for channel in range(3):
        np.testing.assert_array_equal(arr[..., channel], pixels)


def test_dicom_found_by_magic_without_extension(tmp_path):
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = write_dicom(tmp_path / "image.bin", pixels)
    assert is_dicom(path)
    np.testing.assert_array_equal(grey(path), pixels)
    plain = tmp_path / "image.png"
    Image.fromarray(pixels).save(plain)
    assert not is_dicom(plain)


def test_monochrome1_is_inverted(tmp_path):
    pixels = np.random.default_rng(1).integers(40, 200, size=(8, 9), dtype=np.uint8)
    mono1 = write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1")
    np.testing.assert_array_equal(grey(mono1), 255 - pixels)

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))  # 16-bit, windowed
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "mr_mono1.dcm")
    np.testing.assert_array_equal(grey(tmp_path / "mr_mono1.dcm"), 255 - grey(get_testdata_file("MR_small.dcm")))


@pytest.mark.parametrize("slope, intercept", [(None, None), (2, -1000)])
def test_16bit_window_maps_onto_0_255(tmp_path, slope, intercept):
    pixels = np.arange(4096, dtype=np.uint16).reshape(64, 64)  # 0..4095
    tags = {"WindowCenter": 2048, "WindowWidth": 1024}
    if slope is not None:  # the window is given in rescaled units: 2 * 2048 - 1000, 2 * 1024
        tags = {"RescaleSlope": slope, "RescaleIntercept": intercept, "WindowCenter": 3096, "WindowWidth": 2048}
    out = grey(write_dicom(tmp_path / "w.dcm", pixels, **tags)).ravel()
    assert (out[:1536] == 0).all() and (out[2560:] == 255).all()
    assert (np.diff(out[1536:2560].astype(int)) >= 0).all()
    assert abs(int(out[2048]) - 128) <= 1


def test_dicom_without_pixel_data(tmp_path):
    path = tmp_path / "nopix.dcm"
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.save_as(path)
    message = f"^cannot read image {re.escape(str(path))}: DICOM file has no pixel data$"
    with pytest.raises(UserInputError, match=message):
        load_image(path)


def test_png_and_jpeg_modes_load_as_rgb(tmp_path):
    grey8 = np.random.default_rng(2).integers(40, 200, size=(5, 7), dtype=np.uint8)
    Image.fromarray(grey8).save(tmp_path / "l.png")
    np.testing.assert_array_equal(grey(tmp_path / "l.png"), grey8)

    rgba = np.random.default_rng(3).integers(0, 256, size=(5, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(as_array(tmp_path / "rgba.png"), rgba[..., :3])

    Image.fromarray(np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)).save(tmp_path / "16.png")
    assert Image.open(tmp_path / "16.png").mode == "I;16"
    assert grey(tmp_path / "16.png").tolist() == [[0, 4], [117, 255]]  # min-max to 8 bits

    Image.fromarray(np.full((6, 8), 100, np.uint8)).save(tmp_path / "l.jpg")
    assert grey(tmp_path / "l.jpg").tolist() == [[100] * 8] * 6
    Image.fromarray(np.full((6, 8, 3), (200, 30, 90), np.uint8)).save(tmp_path / "rgb.jpg", quality=100)
    assert np.abs(as_array(tmp_path / "rgb.jpg").astype(int) - (200, 30, 90)).max() <= 3


def test_unreadable_files_raise_one_line_errors(tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "notes.dcm").write_text("not a dicom")
    for name in ["cut.jpg", "notes.png", "notes.dcm"]:
        path = tmp_path / name
        with pytest.raises(UserInputError, match=f"^cannot read image {re.escape(str(path))}: ") as e:
            load_image(path)
        assert "\n" not in str(e.value)
    with pytest.raises(UserInputError, match=f"^image not found: {re.escape(str(tmp_path / 'gone.png'))}$"):
        load_image(tmp_path / "gone.png")


@pytest.fixture(scope="module")
def greyscale_sources(tmp_path_factory):
    """One greyscale image of each kind the loaders read: JPEG, PNG, 16-bit PNG, 8-bit and 12-bit DICOM."""
    folder = tmp_path_factory.mktemp("grey")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (301, 253), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "a.jpg", quality=95)
    Image.fromarray(pixels).save(folder / "b.png")
    Image.fromarray((pixels.astype(np.uint16) * 200 + 7)).save(folder / "c16.png")
    write_dicom(folder / "d.dcm", pixels)
    write_dicom(folder / "e.dcm", (pixels.astype(np.uint16) * 16), WindowCenter=2000, WindowWidth=3000)
    return sorted(str(p) for p in folder.iterdir())


def test_greyscale_fast_path_is_bit_identical_for_the_training_and_the_evaluation_transform(greyscale_sources):
    """Resizing mode L, then uint8 pixels normalised (and repeated to RGB) as on the device, gives exactly the
    tensors of the one-step float transforms of the RGB conversion: torchvision's Resize + ToTensor +
    Normalize as the release trained, and the model's own evaluation transform."""
    import tempfile

    import torch
    from torchvision import transforms as T

    from ace_lora.data.transforms import input_spec, pixel_transform
    from ace_lora.model.factory import build_model
    from ace_lora.model.tiny_model import write_tiny_biomedclip
    preprocess = build_model(write_tiny_biomedclip(tempfile.mkdtemp(), ["x"], image_size=96)).preprocess
    spec = input_spec(preprocess)
    released_train = T.Compose([T.Resize((96, 96), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                                T.Normalize(spec.mean, spec.std)])
    for path in greyscale_sources:
        grey, rgb = load_image(path, keep_greyscale=True), load_image(path)
        assert grey.mode == "L" and rgb.mode == "RGB", path
        for kind, reference in (("train", released_train), ("eval", preprocess)):
            pixels = pixel_transform(preprocess, kind)(grey)
            assert pixels.dtype == torch.uint8 and pixels.shape == (1, 96, 96)
            assert torch.equal(spec.normalise(pixels[None])[0], reference(rgb)), (path, kind)
        assert torch.equal(spec.transform()(grey), released_train(rgb))
    colour = os.path.join(os.path.dirname(greyscale_sources[0]), "colour.png")
    Image.new("RGB", (20, 20), (200, 30, 40)).save(colour)
    assert load_image(colour, keep_greyscale=True).mode == "RGB"  # colour sources stay colour
