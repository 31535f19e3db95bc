"""Parity of the zero-shot scripts with the released checkpoint on the full-size fake BiomedCLIP.

CheXpert: the script must reproduce the released evaluation's outputs stored in
`shared/parity/expected_chexpert_A.json`. RSNA (8-bit DICOM) and SIIM (PNG) have no stored outputs:
the scripts must agree with a straightforward computation written here (pixels -> open_clip
preprocess -> encode_image; prompts -> class embeddings; softmax at the base scale). That reference
calls the same `encode_image` / `encode_prompt_ensemble` as the engine, so the RSNA/SIIM tests check
loading (DICOM/PNG pixels), preprocessing, row ordering and scoring, not the model's forward pass:
that is covered against the released outputs by the CheXpert test.
The fake model is conftest's session fixture `fake_biomedclip_dir`, built once for the whole suite.
"""
import json
import os

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from ace_lora.data.synthetic import write_dicom
from ace_lora.evaluation.predict import Predictor
from ace_lora.model.factory import load_model_for_eval
from zero_shot_eval import zero_shot_eval_ace_lora_chexpert, zero_shot_eval_ace_lora_rsna, zero_shot_eval_ace_lora_siim

CHEXPERT_CLASSES = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
RELEASED_TEMPLATES = ("a chest X-ray image of {}.", "Findings suggesting {}.")


@pytest.fixture(scope="module")
def released_checkpoint(shared_dir):
    return os.path.join(shared_dir, "checkpoints", "ACE_LoRA.pt")


@pytest.fixture(scope="module")
def released_model(fake_biomedclip_dir, released_checkpoint):
    return load_model_for_eval(f"local-dir:{fake_biomedclip_dir}", released_checkpoint)


@pytest.fixture(scope="module")
def script_args(fake_biomedclip_dir, released_checkpoint):
    """Flags for a zero-shot script: the fake model with the released weights, then the data flags."""
    def args(csv, data_root, output_dir):
        return ["--model", f"local-dir:{fake_biomedclip_dir}", "--checkpoint", released_checkpoint,
                "--csv", str(csv), "--data-root", str(data_root), "--output-dir", str(output_dir),
                "--device", "cpu", "--bootstrap", "20"]
    return args


def reference_probabilities(model, images, class_names):
    """Softmax over classes of base-scale cosine similarities, computed without the evaluation engine."""
    prompts = [template.format(name) for name in class_names for template in RELEASED_TEMPLATES]
    with torch.no_grad():
        classes = model.encode_prompt_ensemble(model.tokenize(prompts), len(RELEASED_TEMPLATES))  # (C, D)
        embeddings = model.encode_image(torch.stack([model.preprocess(image) for image in images]))  # (N, D)
        return (model.base_logit_scale() * embeddings @ classes.T).softmax(dim=-1).numpy()


@pytest.mark.slow
def test_chexpert_script_reproduces_the_released_evaluation(shared_dir, released_model, script_args, tmp_path):
    chexpert_dir = os.path.join(shared_dir, "parity", "chexpert_A")
    expected = json.load(open(os.path.join(shared_dir, "parity", "expected_chexpert_A.json")))
    csv = os.path.join(chexpert_dir, "chexpert_5x200.csv")
    zero_shot_eval_ace_lora_chexpert.main(
        script_args(csv, chexpert_dir, tmp_path) + ["--num-workers", "2", "--batch-size", "8"])

    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert list(predictions.columns) == ["Path", "label"] + CHEXPERT_CLASSES
    assert predictions["Path"].tolist() == pd.read_csv(csv)["Path"].tolist()
    assert predictions["label"].tolist() == [CHEXPERT_CLASSES[i] for i in expected["labels"]]
    probabilities = predictions[CHEXPERT_CLASSES].to_numpy()
    np.testing.assert_allclose(probabilities, np.array(expected["probabilities"]), rtol=0, atol=1e-4)

    metrics = json.load(open(tmp_path / "metrics.json"))["metrics"]
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)
    assert metrics["auroc"] == pytest.approx(expected["auroc"], abs=1e-6)
    assert metrics["n"] == 20 and metrics["n_unreadable"] == 0

    prompts = [template.format(name) for name in CHEXPERT_CLASSES for template in RELEASED_TEMPLATES]
    with torch.no_grad():
        classes = released_model.encode_prompt_ensemble(released_model.tokenize(prompts), 2)
    np.testing.assert_allclose(classes.numpy(), np.array(expected["class_text_embeddings"]), rtol=0, atol=1e-4)

    # The predict API (ace_lora.load) gives the script's probabilities on the same images and classes.
    api = Predictor(released_model, torch.device("cpu"), batch_size=8)
    paths = [os.path.join(chexpert_dir, p) for p in predictions["Path"]]
    np.testing.assert_allclose(api.classify(paths, CHEXPERT_CLASSES, RELEASED_TEMPLATES), probabilities,
                               rtol=0, atol=1e-6)


def synthetic_xray(rng, height, width):
    """A smooth grey pattern with noise, inside roughly 60..190: a loader that rescaled the stored values
    (min-max, windowing) would change the image and fail the comparison."""
    y, x = np.mgrid[0:height, 0:width]
    base = 125 + 50 * np.sin(x / rng.uniform(10, 40)) * np.cos(y / rng.uniform(10, 40))
    return np.clip(base + rng.normal(0, 5, (height, width)), 0, 255).astype(np.uint8)


def assert_matches_reference(predictions_csv, reference, classes, labels):
    predictions = pd.read_csv(predictions_csv)
    np.testing.assert_allclose(predictions[classes].to_numpy(), reference, rtol=0, atol=1e-5)
    metrics = json.load(open(os.path.join(os.path.dirname(predictions_csv), "metrics.json")))["metrics"]
    assert metrics["auroc"] == pytest.approx(roc_auc_score(labels, reference[:, 1]), abs=1e-9)
    assert metrics["accuracy"] == pytest.approx(float((reference.argmax(1) == labels).mean()), abs=1e-9)


@pytest.mark.slow
def test_rsna_script_on_8bit_dicom_matches_a_direct_computation(released_model, script_args, tmp_path):
    rng = np.random.default_rng(0)
    image_dir = tmp_path / "data" / "stage_2_train_images"
    image_dir.mkdir(parents=True)
    labels = np.array([0, 1, 1, 0, 1, 0])
    rows = []
    for i, target in enumerate(labels):
        patient = f"patient-{i:02d}"
        write_dicom(image_dir / f"{patient}.dcm", synthetic_xray(rng, 256, 224 + 16 * i))
        rows.append({"patientId": patient, "Path": f"stage_2_train_images/{patient}.dcm", "Target": target,
                     "boxes": "[]"})
    csv = tmp_path / "rsna_test.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)

    zero_shot_eval_ace_lora_rsna.main(script_args(csv, tmp_path / "data", tmp_path / "out")
                                      + ["--num-workers", "0", "--batch-size", "4"])

    images = [Image.fromarray(pydicom.dcmread(image_dir / f"{row['patientId']}.dcm").pixel_array) for row in rows]
    reference = reference_probabilities(released_model, images, ["No Finding", "pneumonia"])
    assert_matches_reference(tmp_path / "out" / "predictions.csv", reference, ["No Finding", "pneumonia"], labels)


def test_siim_script_on_png_matches_a_direct_computation(released_model, script_args, tmp_path):
    rng = np.random.default_rng(1)
    png_dir = tmp_path / "png"
    png_dir.mkdir()
    image_ids = [f"1.2.276.0.7230010.3.1.4.{i}" for i in range(5)]
    labels = np.array([1, 0, 0, 1, 1])
    for i, image_id in enumerate(image_ids):
        Image.fromarray(synthetic_xray(rng, 240 + 8 * i, 256)).save(png_dir / f"{image_id}.png")
    csv = tmp_path / "siim_test.csv"
    pd.DataFrame({"ImageId": image_ids, "Label": labels}).to_csv(csv, index=False)

    zero_shot_eval_ace_lora_siim.main(script_args(csv, png_dir, tmp_path / "out")
                                      + ["--num-workers", "0", "--batch-size", "3"])

    images = [Image.open(png_dir / f"{image_id}.png") for image_id in image_ids]
    reference = reference_probabilities(released_model, images, ["No Finding", "pneumothorax"])
    assert_matches_reference(tmp_path / "out" / "predictions.csv", reference, ["No Finding", "pneumothorax"], labels)
    assert pd.read_csv(tmp_path / "out" / "predictions.csv", dtype={"ImageId": str})["ImageId"].tolist() == image_ids
