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
from ace_lora.data.labels import CHEXPERT_5X200_CLASSES
from ace_lora.data.prompts import CHEST_XRAY_TEMPLATES
from ace_lora.data.synthetic import write_demo_dataset, write_dicom
from ace_lora.errors import UserInputError
from ace_lora.model.checkpoint import save_released_checkpoint
from tests.conftest import error_exit_line, tiny_model_with_lora_updates
from zero_shot_eval import zero_shot_eval_ace_lora_chexpert

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
    write_dicom(root / "d.dcm", rng.integers(0, 256, (72, 72), dtype=np.uint8))
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
    assert len(list(heat.glob("*.png"))) == 4 * 3 and (heat / "00002_d__01_pleural_effusion.png").is_file()
    listing = pd.read_csv(out / "heatmaps.csv")
    assert len(listing) == 12 and listing["heatmap"].map(os.path.isfile).all()
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


def test_heatmaps_are_unique_per_input_and_class_and_listed(tiny_model_name, weights, tmp_path):
    """a/x.png, b/x.png and x.jpg with the classes 'pleural effusion' and 'pleural_effusion' (once 2 files for 6)."""
    scans = tmp_path / "scans"
    for name in ("a/x.png", "b/x.png", "x.jpg"):
        (scans / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (40, 40), 90).convert("RGB").save(scans / name)
    out, heat = tmp_path / "out", tmp_path / "heat"
    assert predict.main([str(scans), "--classes", "pleural effusion", "pleural_effusion", "--model", tiny_model_name,
                         "--checkpoint", weights, "--output-dir", str(out), "--heatmaps", str(heat), "--device", "cpu",
                         "--no-progress"]) == 0
    listing = pd.read_csv(out / "heatmaps.csv")
    assert len(set(listing["heatmap"])) == 6 == len(list(heat.glob("*.png")))
    assert sorted(zip(listing["path"], listing["class"])) == sorted(
        (str(scans / n), c) for n in ("a/x.png", "b/x.png", "x.jpg") for c in ("pleural effusion", "pleural_effusion"))


def test_class_names_never_take_the_csv_s_own_columns_and_must_be_distinct(tiny_model_name, mixed_folder, tmp_path,
                                                                           capsys):
    """`--classes path predicted` once wrote path,path,predicted,predicted and lost the image paths."""
    common = [str(mixed_folder), "--model", tiny_model_name, "--device", "cpu", "--output-dir", str(tmp_path / "o")]
    assert one_line(capsys, common + ["--classes", "path", "predicted"]) == (
        "class 'path' is the name of a predictions.csv column (path, predicted): rename it")
    assert one_line(capsys, common + ["--classes", "edema", "edema"]) == "class 'edema' is given twice"
    assert one_line(capsys, common + ["--classes", "edema", " "]) == "each class must be a non-empty string, got ' '"
    assert not (tmp_path / "o").exists()


def test_a_used_output_dir_is_refused_unless_overwrite(tiny_model_name, weights, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.new("L", (40, 40), 100).save(broken / "good.png")
    (broken / "bad.png").write_bytes(b"not an image")
    out = tmp_path / "o"
    common = ["--model", tiny_model_name, "--checkpoint", weights, "--device", "cpu", "--no-progress", "--output-dir",
              str(out), "--classes", "a", "b"]
    assert predict.main([str(broken), "--skip-unreadable"] + common) == 0
    assert (out / "unreadable.csv").is_file()
    before = (out / "predictions.csv").read_bytes()
    assert one_line(capsys, [str(broken / "good.png")] + common).startswith(
        f"--output-dir {out} holds a previous prediction (predictions.csv, unreadable.csv, config.yaml)")
    assert (out / "predictions.csv").read_bytes() == before
    assert predict.main([str(broken / "good.png"), "--overwrite"] + common) == 0
    assert not (out / "unreadable.csv").exists()  # the previous run's list does not stay behind


def test_a_folder_search_finds_extensionless_dicom_and_counts_the_rest(tiny_model_name, weights, tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    rng = np.random.default_rng(0)
    write_dicom(scans / "1.2.840.113619", rng.integers(0, 256, (32, 32), dtype=np.uint8))
    write_dicom(scans / "IM0001", rng.integers(0, 256, (32, 32), dtype=np.uint8))
    (scans / "README").write_text("not an image")
    out = tmp_path / "o"
    assert predict.main([str(scans), "--classes", "a", "b", "--model", tiny_model_name, "--checkpoint", weights,
                         "--device", "cpu", "--no-progress", "--output-dir", str(out)]) == 0
    assert sorted(os.path.basename(p) for p in pd.read_csv(out / "predictions.csv")["path"]) == [
        "1.2.840.113619", "IM0001"]
    assert f"skipped 1 file(s) in the folders that are neither images nor DICOM (e.g. {scans / 'README'})" in \
        capsys.readouterr().err


def test_the_api_does_not_guess(tiny_model_name, weights, mixed_folder):
    model = ace_lora.load(weights, model=tiny_model_name, device="cpu")
    path = str(mixed_folder / "a.png")
    assert model.classify([path], "pneumonia").shape == (1, 1)  # one class, not one per letter
    np.testing.assert_allclose(model.classify([path], ["edema", "pneumonia"], templates="There is {}."),
                               model.classify([path], ["edema", "pneumonia"], templates=["There is {}."]))
    image = to_tensor(Image.open(path).convert("RGB"))
    for bad, message in ((image * 255, r"float image tensor must hold values in \[0, 1\]"),
                         (image * float("nan"), "NaN or infinite"),
                         (image.to(torch.int32), "must be uint8 .* or float"),
                         (7, "cannot use a int as images")):
        with pytest.raises(UserInputError, match=message):
            model.classify(bad, ["edema", "pneumonia"])
    for names, message in ((["edema", "edema"], "'edema' is given twice"), (["edema", ""], "non-empty")):
        with pytest.raises(UserInputError, match=message):
            model.classify([path], names)
    assert model.embed_images([]).shape == (0, 64) and model.embed_texts([]).shape == (0, 64)
    assert model.classify([], ["edema", "pneumonia"]).shape == (0, 2)
    assert model.similarity_maps([], ["edema"]) == []
    [no_text] = model.similarity_maps([path], [])  # no text: an empty map of the image's size, not torch's error
    assert no_text.shape == (0, *np.asarray(Image.open(path)).shape[:2])
    np.testing.assert_array_equal(model.classify(image.mul(255).round().to(torch.uint8), ["edema", "pneumonia"]),
                                  model.classify(image, ["edema", "pneumonia"]))
