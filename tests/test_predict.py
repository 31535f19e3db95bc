"""Use on your own data: the ace_lora.load API and predict.py on a folder of PNG, JPEG and DICOM files."""
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

import ace_lora
import predict
from ace_lora.checkpoint import save_released_checkpoint
from ace_lora.data.labels import CHEXPERT_5X200_CLASSES
from ace_lora.data.synthetic import write_demo_dataset
from ace_lora.prompts import CHEST_XRAY_TEMPLATES
from tests.test_parity import write_dicom_8bit
from zero_shot_eval import zero_shot_eval_ace_lora_chexpert
from tests.conftest import error_exit_line, tiny_model_with_lora_updates

CLASSES = ["pneumonia", "pleural effusion", "edema"]


@pytest.fixture(scope="module")
def weights(tiny_model_name, tmp_path_factory):
    """A tiny model with non-zero LoRA updates, saved in the released format."""
    model = tiny_model_with_lora_updates(tiny_model_name)
    path = tmp_path_factory.mktemp("weights") / "weights.pt"
    save_released_checkpoint(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """scans/: two PNGs (one in a sub-folder), a JPEG and an 8-bit DICOM, plus a text file to ignore."""
    root = tmp_path_factory.mktemp("scans")
    rng = np.random.default_rng(0)
    (root / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, (80, 60), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 256, (50, 90), dtype=np.uint8)).save(root / "sub" / "b.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "c.jpg", quality=90)
    write_dicom_8bit(root / "d.dcm", rng.integers(0, 256, (72, 72), dtype=np.uint8))
    (root / "notes.txt").write_text("not an image")
    return root


def test_api_classifies_embeds_and_maps_paths_pil_images_and_tensors(tiny_model_name, weights, mixed_folder):
    model = ace_lora.load(weights, model=tiny_model_name, device="cpu", batch_size=2)
    paths = [str(mixed_folder / n) for n in ("a.png", "sub/b.png", "c.jpg", "d.dcm")]
    probabilities = model.classify(paths, CLASSES)
    assert probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-6)
    pil = Image.open(paths[0]).convert("RGB")
    np.testing.assert_allclose(model.classify([pil], CLASSES), probabilities[:1], atol=1e-6)
    np.testing.assert_allclose(model.classify(to_tensor(pil), CLASSES), probabilities[:1], atol=1e-6)
    custom = model.classify(paths, CLASSES, templates=["There is {}."])
    assert not np.allclose(custom, probabilities)  # the templates are used

    images, texts = model.embed_images(paths), model.embed_texts(["there is edema", "pneumonia"])
    assert images.shape == (4, 64) and texts.shape == (2, 64)
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(4))
    maps = model.similarity_maps(paths[:2], ["edema", "pneumonia"])
    assert [m.shape for m in maps] == [(2, 80, 60), (2, 50, 90)]  # each image's own height and width
    assert np.abs(maps[0]).max() <= 1 + 1e-5


def test_classify_equals_the_chexpert_script(tiny_model_name, weights, tmp_path):
    data = write_demo_dataset(str(tmp_path / "data"), n_train=5, n_test_per_class=3)
    out = tmp_path / "out"
    zero_shot_eval_ace_lora_chexpert.main(["--model", tiny_model_name, "--checkpoint", weights, "--csv", data.test_csv,
                                           "--output-dir", str(out), "--device", "cpu", "--num-workers", "0",
                                           "--bootstrap", "0"])
    script = pd.read_csv(out / "predictions.csv")
    paths = [os.path.join(data.data_root, p) for p in pd.read_csv(data.test_csv)["Path"]]
    api = ace_lora.load(weights, model=tiny_model_name, device="cpu", batch_size=4)
    np.testing.assert_allclose(api.classify(paths, CHEXPERT_5X200_CLASSES, CHEST_XRAY_TEMPLATES),
                               script[list(CHEXPERT_5X200_CLASSES)].to_numpy(), rtol=0, atol=1e-6)


def test_cli_on_a_folder_writes_predictions_heatmaps_and_config(tiny_model_name, weights, mixed_folder, tmp_path,
                                                               capsys):
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    out, heat = tmp_path / "out", tmp_path / "heat"
    assert predict.main([str(mixed_folder), "--classes", str(classes), "--checkpoint", weights, "--model",
                         tiny_model_name, "--output-dir", str(out), "--heatmaps", str(heat), "--device", "cpu",
                         "--batch-size", "3", "--no-progress"]) == 0
    table = pd.read_csv(out / "predictions.csv")
    assert list(table.columns) == ["path", *CLASSES, "predicted"]
    assert [os.path.relpath(p, mixed_folder) for p in table["path"]] == ["a.png", "c.jpg", "d.dcm",
                                                                        os.path.join("sub", "b.png")]
    assert (table["predicted"] == table[CLASSES].idxmax(axis=1)).all()
    api = ace_lora.load(weights, model=tiny_model_name, device="cpu")
    np.testing.assert_allclose(table[CLASSES].to_numpy(), api.classify(list(table["path"]), CLASSES), atol=1e-6)
    assert len(list(heat.glob("*.png"))) == 4 * 3 and (heat / "d__pleural_effusion.png").is_file()
    assert (out / "config.yaml").is_file() and not (out / "unreadable.csv").exists()
    assert "predicted 4 of 4 images" in capsys.readouterr().out


def one_line(capsys, argv):
    return error_exit_line(capsys, predict.main, argv)[len("error: "):]


def test_cli_bad_inputs_and_unreadable_files(tiny_model_name, mixed_folder, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    common = ["--model", tiny_model_name, "--device", "cpu", "--no-progress", "--output-dir", str(tmp_path / "o")]
    assert one_line(capsys, [str(empty), "--classes", "a", "b"] + common).startswith(f"{empty}: no images in this")
    assert one_line(capsys, [str(mixed_folder), "--classes", str(tmp_path / "nope.txt")] + common) == \
        f"class file not found: {tmp_path / 'nope.txt'}"
    assert one_line(capsys, [str(tmp_path / "absent.png"), "--classes", "a"] + common) == \
        f"{tmp_path / 'absent.png'}: no such file or folder"
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.new("L", (40, 40), 100).save(broken / "good.png")
    (broken / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    line = one_line(capsys, [str(broken), "--classes", "a", "b"] + common)
    assert line.startswith(f"cannot read image {broken / 'bad.png'}") and "--skip-unreadable" in line
    assert predict.main([str(broken), "--classes", "a", "b", "--skip-unreadable"] + common) == 0
    assert pd.read_csv(tmp_path / "o" / "predictions.csv")["path"].tolist() == [str(broken / "good.png")]
    skipped = pd.read_csv(tmp_path / "o" / "unreadable.csv")
    assert skipped["path"].tolist() == [str(broken / "bad.png")] and "cannot read image" in skipped["error"][0]
    assert "1 unreadable listed in unreadable.csv" in capsys.readouterr().out
