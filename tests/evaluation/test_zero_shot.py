"""Zero-shot engine on the tiny model: order, paths, errors, unreadable images, scorings, output files."""
import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ace_lora.data.images import load_image
from ace_lora.data.labels import CHEXPERT_5X200_CLASSES
from ace_lora.errors import UserInputError
from ace_lora.evaluation.tasks import TASKS, get_task
from ace_lora.evaluation.zero_shot import evaluate, score, write_outputs
from ace_lora.model.config import AceLoRAConfig
from ace_lora.model.factory import build_model
from zero_shot_eval import zero_shot_eval_ace_lora_nih, zero_shot_eval_ace_lora_rsna

CHEXPERT_LABELS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                   "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                   "Fracture", "Support Devices"]
FAST = dict(num_workers=0, n_bootstrap=10, progress=False)


@pytest.fixture(scope="module")
def model(tiny_model_name):
    return build_model(tiny_model_name, AceLoRAConfig()).eval()


def write_images(folder, names, seed=0):
    """Random greyscale PNGs (distinct content per image); returns their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (70 + rng.integers(0, 30), 90), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def write_chexpert_csv(path, image_paths, classes):
    """The CheXpert 5x200 layout: unnamed index, Path, demographics, 14 labels, Report Impression."""
    table = pd.DataFrame({"Path": image_paths, "Sex": "Female", "Age": 60, "Frontal/Lateral": "Frontal",
                          "AP/PA": "PA"})
    for label in CHEXPERT_LABELS:
        table[label] = [1.0 if label in row_classes else 0.0 for row_classes in classes]
    table["Report Impression"] = "\n1. report text,\nwith a second line.\n"
    table.to_csv(path)


def chexpert_set(tmp_path, n=7, seed=0):
    """n images under tmp_path/images, classes cycling in a shuffled order; returns (csv, paths, labels)."""
    labels = np.random.default_rng(seed).permutation(np.arange(n) % 5)
    names = [f"images/p{i}/view1_frontal.png" for i in range(n)]
    paths = write_images(str(tmp_path), names, seed)
    csv = tmp_path / "chexpert_5x200.csv"
    write_chexpert_csv(csv, names, [[CHEXPERT_5X200_CLASSES[c]] for c in labels])
    return csv, paths, labels


def cosines(model, task_name, image_paths):
    """(N, C) cosine similarities computed directly, image by image."""
    task = TASKS[task_name]
    with torch.no_grad():
        classes = model.encode_prompt_ensemble(model.tokenize(task.prompts), len(task.templates))
        images = torch.stack([model.preprocess(load_image(path)) for path in image_paths])
        return (model.encode_image(images) @ classes.T).numpy()


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_predictions_follow_csv_order_with_class_named_columns(model, tmp_path):
    csv, paths, labels = chexpert_set(tmp_path)
    result = evaluate(model, "chexpert", csv, batch_size=3, **FAST)

    assert list(result.predictions.columns) == ["Path", "label", *CHEXPERT_5X200_CLASSES]
    assert result.predictions["Path"].tolist() == pd.read_csv(csv)["Path"].tolist()
    assert result.predictions["label"].tolist() == [CHEXPERT_5X200_CLASSES[c] for c in labels]
    np.testing.assert_array_equal(result.labels, labels)
    expected = softmax(float(model.base_logit_scale()) * cosines(model, "chexpert", paths))
    np.testing.assert_allclose(result.predictions[list(CHEXPERT_5X200_CLASSES)].to_numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)
    assert result.metrics["accuracy"] == pytest.approx(float((expected.argmax(1) == labels).mean()))
    assert result.metrics["n"] == 7 and result.metrics["n_unreadable"] == 0 and result.metrics["images_per_second"] > 0


def test_batch_size_does_not_change_probabilities(model, tmp_path):
    csv, _, _ = chexpert_set(tmp_path, n=9)
    one = evaluate(model, "chexpert", csv, batch_size=1, **FAST).probabilities
    seven = evaluate(model, "chexpert", csv, batch_size=7, **{**FAST, "num_workers": 2}).probabilities
    np.testing.assert_allclose(one, seven, rtol=0, atol=1e-5)


def test_probabilities_from_the_image_cache_equal_those_from_the_files_exactly(model, tmp_path):
    csv, paths, _ = chexpert_set(tmp_path, n=6)
    Image.open(paths[2]).convert("RGB").save(paths[2])  # a colour file among greyscale ones
    files = evaluate(model, "chexpert", csv, batch_size=4, **FAST)
    cache = tmp_path / "cache"
    built = evaluate(model, "chexpert", csv, batch_size=4, image_cache=str(cache), **FAST)  # built first
    assert (cache / "manifest.json").is_file()
    read = evaluate(model, "chexpert", csv, batch_size=4, image_cache=str(cache), **FAST)
    assert np.array_equal(files.probabilities, built.probabilities)
    assert np.array_equal(files.probabilities, read.probabilities)
    with pytest.raises(UserInputError, match="built for another transform"):  # a training cache is not reused
        from ace_lora.data.image_cache import build_cache
        from ace_lora.data.transforms import pixel_transform
        build_cache(str(tmp_path / "train_cache"), paths, pixel_transform(model.preprocess, "train"), progress=False)
        evaluate(model, "chexpert", csv, image_cache=str(tmp_path / "train_cache"), **FAST)


def test_relative_paths_use_data_root_or_csv_folder_and_absolute_paths_are_kept(model, tmp_path):
    csv, paths, labels = chexpert_set(tmp_path / "root", n=5)
    by_csv_folder = evaluate(model, "chexpert", csv, **FAST).probabilities

    elsewhere = tmp_path / "csvs"
    elsewhere.mkdir()
    relative_csv, absolute_csv = elsewhere / "relative.csv", elsewhere / "absolute.csv"
    names = pd.read_csv(csv)["Path"].tolist()
    write_chexpert_csv(relative_csv, names, [[CHEXPERT_5X200_CLASSES[c]] for c in labels])
    write_chexpert_csv(absolute_csv, paths, [[CHEXPERT_5X200_CLASSES[c]] for c in labels])

    with pytest.raises(UserInputError, match="image.*not found"):  # relative to the CSV's folder: not there
        evaluate(model, "chexpert", relative_csv, **FAST)
    by_data_root = evaluate(model, "chexpert", relative_csv, data_root=str(tmp_path / "root"), **FAST)
    absolute = evaluate(model, "chexpert", absolute_csv, data_root=str(tmp_path), **FAST)
    np.testing.assert_allclose(by_data_root.probabilities, by_csv_folder, atol=1e-6)
    np.testing.assert_allclose(absolute.probabilities, by_csv_folder, atol=1e-6)
    assert absolute.predictions["Path"].tolist() == paths


def test_missing_column_is_named_with_the_file(model, tmp_path):
    write_images(str(tmp_path), ["a.png"])
    csv = tmp_path / "rsna_test.csv"
    pd.DataFrame({"patientId": ["a"], "Path": ["a.png"], "label": [1]}).to_csv(csv, index=False)
    with pytest.raises(UserInputError) as error:
        evaluate(model, "rsna", csv, **FAST)
    message = str(error.value)
    assert "'Target'" in message and str(csv) in message and "\n" not in message


def test_script_turns_a_user_error_into_one_line_and_exit_status_2(tiny_model_name, tmp_path, capsys):
    csv = tmp_path / "rsna_test.csv"
    pd.DataFrame({"Path": ["a.dcm"]}).to_csv(csv, index=False)
    with pytest.raises(SystemExit) as exit_info:
        zero_shot_eval_ace_lora_rsna.main(["--model", tiny_model_name, "--csv", str(csv), "--device", "cpu",
                                           "--output-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "'Target'" in err and "\n" not in err
    assert not (tmp_path / "out").exists()  # a run that fails leaves no output folder


def test_chexpert_row_without_exactly_one_class_is_an_error(model, tmp_path):
    names = ["a.png", "b.png"]
    write_images(str(tmp_path), names)
    csv = tmp_path / "chexpert.csv"
    write_chexpert_csv(csv, names, [["Edema"], ["Edema", "Atelectasis"]])
    with pytest.raises(UserInputError, match=r"row 2 \(Path b.png\) must have exactly one of .* has 2 "
                                             r"\(Atelectasis, Edema\)"):
        evaluate(model, "chexpert", csv, **FAST)


def test_bad_binary_label_is_named_by_row_with_a_plain_value(model, tmp_path):
    write_images(str(tmp_path), ["a.png", "b.png"])
    pd.DataFrame({"Path": ["a.png", "b.png"], "Target": [0, 2]}).to_csv(tmp_path / "rsna.csv", index=False)
    with pytest.raises(UserInputError) as error:
        evaluate(model, "rsna", tmp_path / "rsna.csv", **FAST)
    assert str(error.value).endswith("row 2 (Path b.png): Target must be 0 or 1, not 2")  # not np.int64(2)


def corrupt(path):
    with open(path, "wb") as f:
        f.write(b"this is not an image")


def test_unreadable_image_stops_with_its_name(model, tmp_path):
    csv, paths, _ = chexpert_set(tmp_path, n=6)
    corrupt(paths[4])
    with pytest.raises(UserInputError) as error:  # raised from a DataLoader worker's flag, not a traceback
        evaluate(model, "chexpert", csv, batch_size=2, **{**FAST, "num_workers": 2})
    assert paths[4] in str(error.value) and "--skip-unreadable" in str(error.value) and "\n" not in str(error.value)


def test_skip_unreadable_keeps_rows_with_nan_and_counts_them(model, tmp_path):
    csv, paths, labels = chexpert_set(tmp_path, n=8)
    clean = evaluate(model, "chexpert", csv, **FAST)
    corrupt(paths[2])
    os.remove(paths[5])

    result = evaluate(model, "chexpert", csv, batch_size=3, skip_unreadable=True, **{**FAST, "num_workers": 2})
    assert len(result.predictions) == 8
    bad = [2, 5]
    assert result.predictions.loc[bad, list(CHEXPERT_5X200_CLASSES)].isna().all().all()
    good = [i for i in range(8) if i not in bad]
    np.testing.assert_allclose(result.probabilities[good], clean.probabilities[good], atol=1e-5)
    np.testing.assert_array_equal(result.readable, [i not in bad for i in range(8)])
    metrics = result.metrics
    assert (metrics["n"], metrics["n_rows"], metrics["n_unreadable"]) == (6, 8, 2)
    assert [entry["row"] for entry in metrics["unreadable"]] == [3, 6]
    assert paths[2] in metrics["unreadable"][0]["error"] and paths[5] in metrics["unreadable"][1]["error"]
    assert metrics["accuracy"] == pytest.approx(float((clean.probabilities[good].argmax(1) == labels[good]).mean()))


def test_nih_released_scoring_is_exp_min_max_per_image():
    cosine = torch.tensor(np.log([[1.0, 2.0, 5.0], [3.0, 3.5, 2.0]]), dtype=torch.float32)
    expected = [[0.0, 0.25, 1.0], [(3 - 2) / 1.5, 1.0, 0.0]]
    np.testing.assert_allclose(score(cosine, "released", 73.7).numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(score(cosine, "cosine", 73.7).numpy(), cosine.numpy())


def test_nih_released_scoring_of_equal_cosines_is_zero_not_nan():
    cosine = torch.tensor([[0.3] * 14, [0.1, 0.2] + [0.1] * 12])
    scores = score(cosine, "released", 73.7)
    assert torch.isfinite(scores).all()
    np.testing.assert_array_equal(scores[0].numpy(), np.zeros(14))
    assert scores[1, 1] == 1 and scores[1, 0] == 0


def write_nih_set(folder, n=6):
    """n NIH-style images and chestxray14_test.csv with positives for 3 classes; returns (csv, paths)."""
    names = [f"images/{i:08d}_000.png" for i in range(n)]
    paths = write_images(str(folder), names)
    targets = np.zeros((n, 14), dtype=int)
    targets[[0, 1, 2], [0, 2, 12]] = 1
    targets[3, [0, 2]] = 1
    table = pd.DataFrame(targets, columns=TASKS["nih"].class_names)
    table.insert(0, "Path", names)
    table.insert(0, "Image Index", [os.path.basename(n) for n in names])
    table.to_csv(folder / "chestxray14_test.csv", index=False)
    return folder / "chestxray14_test.csv", paths


def test_nih_script_writes_per_class_roc_and_takes_readable_prompt_names(tiny_model_name, tmp_path, capsys):
    csv, _ = write_nih_set(tmp_path)
    out = tmp_path / "out"
    zero_shot_eval_ace_lora_nih.main(["--model", tiny_model_name, "--csv", str(csv), "--device", "cpu",
                                      "--num-workers", "0", "--bootstrap", "5", "--output-dir", str(out),
                                      "--nih-prompt-names", "readable"])
    assert os.path.getsize(out / "roc.png") > 0 and not (out / "confusion_matrix.png").exists()
    with open(out / "metrics.json") as f:
        prompts = json.load(f)["settings"]["prompts"]
    assert "Findings suggesting Pleural Thickening." in prompts and not any("_" in p for p in prompts)


def test_output_dir_that_is_a_file_fails_before_the_model_is_loaded(tmp_path, capsys):
    csv, _ = write_nih_set(tmp_path)
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(SystemExit) as exit_info:  # a model that cannot load: the output check must come first
        zero_shot_eval_ace_lora_nih.main(["--model", f"local-dir:{tmp_path / 'no_model'}", "--csv", str(csv),
                                          "--device", "cpu", "--output-dir", str(tmp_path / "taken")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --output-dir {tmp_path / 'taken'}: exists and is not a folder"


def test_nih_is_scored_per_image_as_released_or_by_cosine(model, tmp_path):
    _, paths = write_nih_set(tmp_path)
    released = evaluate(model, "nih", tmp_path / "chestxray14_test.csv", **FAST)
    cosine = evaluate(model, "nih", tmp_path / "chestxray14_test.csv", scoring="cosine", **FAST)
    np.testing.assert_allclose(cosine.probabilities, cosines(model, "nih", paths), atol=1e-5)
    # The formula on the engine's own cosines: (max - min) divides by a small range on a random model,
    # which would magnify float noise between two separately computed sets of cosines.
    e = np.exp(cosine.probabilities)
    expected = (e - e.min(1, keepdims=True)) / (e.max(1, keepdims=True) - e.min(1, keepdims=True))
    np.testing.assert_allclose(released.probabilities, expected, atol=1e-5)
    assert released.predictions["label"].tolist()[:5] == [
        "Atelectasis", "Effusion", "Pleural_Thickening", "Atelectasis|Effusion", "No Finding"]
    assert set(released.metrics["auroc_skipped_classes"]) == set(TASKS["nih"].class_names) - {
        "Atelectasis", "Effusion", "Pleural_Thickening"}
    # The released evaluation prompts with the data set's raw names; the readable spelling is an option.
    assert "a chest X-ray image of Pleural_Thickening." in TASKS["nih"].prompts
    assert released.settings["prompts"] == TASKS["nih"].prompts
    readable = get_task("nih", nih_prompt_names="readable")
    assert "a chest X-ray image of Pleural Thickening." in readable.prompts and len(readable.prompts) == 28
    assert evaluate(model, readable, tmp_path / "chestxray14_test.csv", **FAST).settings["prompts"] == readable.prompts
    with pytest.raises(UserInputError, match="scoring must be one of released, cosine"):
        evaluate(model, "nih", tmp_path / "chestxray14_test.csv", scoring="softmax", **FAST)


def test_learned_logit_scale_sharpens_as_its_ratio_to_the_base_scale(model, tmp_path):
    csv, _, _ = chexpert_set(tmp_path, n=4)
    base = evaluate(model, "chexpert", csv, **FAST)
    original = model.logit_scale.detach().clone()
    with torch.no_grad():
        model.logit_scale.fill_(2.5 * float(model.base_logit_scale()))
    try:
        learned = evaluate(model, "chexpert", csv, logit_scale="learned", **FAST)
    finally:
        with torch.no_grad():
            model.logit_scale.copy_(original)
    log_odds = np.log(base.probabilities[:, 1:] / base.probabilities[:, :1])
    np.testing.assert_allclose(np.log(learned.probabilities[:, 1:] / learned.probabilities[:, :1]), 2.5 * log_odds,
                               rtol=1e-3, atol=1e-4)
    assert learned.settings["temperature"] == pytest.approx(2.5 * base.settings["temperature"], rel=1e-6)


def test_evaluate_restores_training_mode(model, tmp_path):
    csv, _, _ = chexpert_set(tmp_path, n=2)
    model.train()
    try:
        evaluate(model, "chexpert", csv, **FAST)
        assert model.training and model.image_hgnn.training
    finally:
        model.eval()


def test_siim_finds_png_by_image_id_anywhere_under_the_root(model, tmp_path):
    image_ids = ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
    write_images(str(tmp_path / "png"), [f"{image_ids[0]}.png", f"study/series/{image_ids[1]}.png"])
    csv = tmp_path / "siim_test.csv"
    pd.DataFrame({"ImageId": image_ids, "Label": [0, 1, 1]}).to_csv(csv, index=False)
    with pytest.raises(UserInputError, match=r"no 1\.2\.3\.3\.png or 1\.2\.3\.3\.dcm under"):
        evaluate(model, "siim", csv, data_root=str(tmp_path / "png"), **FAST)
    result = evaluate(model, "siim", csv, data_root=str(tmp_path / "png"), skip_unreadable=True, **FAST)
    assert list(result.predictions.columns) == ["ImageId", "label", "No Finding", "pneumothorax"]
    assert result.readable.tolist() == [True, True, False]
    found = [tmp_path / "png" / f"{image_ids[0]}.png", tmp_path / "png" / "study" / "series" / f"{image_ids[1]}.png"]
    expected = softmax(float(model.base_logit_scale()) * cosines(model, "siim", found))
    np.testing.assert_allclose(result.probabilities[:2], expected, atol=1e-5)


def test_pathology_labels_map_folder_and_code_names_to_readable_classes(model, tmp_path):
    names = ["lung_aca/a.jpeg", "colon_n/b.jpeg", "lung_n/c.jpeg"]
    write_images(str(tmp_path), names)
    pd.DataFrame({"Path": names, "label": ["lung_aca", "colon_n", "lung_n"]}).to_csv(tmp_path / "lc.csv", index=False)
    result = evaluate(model, "lc25000", tmp_path / "lc.csv", **FAST)
    assert result.predictions["label"].tolist() == ["lung adenocarcinoma", "benign colon", "benign lung"]
    assert list(result.predictions.columns)[2:] == ["lung adenocarcinoma", "lung squamous cell carcinoma",
                                                    "benign lung", "colon adenocarcinoma", "benign colon"]
    assert TASKS["lc25000"].prompts[:2] == ["an H&E image of lung adenocarcinoma.",
                                            "a histopathology image of lung adenocarcinoma."]

    pd.DataFrame({"Path": names[:2], "label": ["SSA", "TA"]}).to_csv(tmp_path / "mhist.csv", index=False)
    with pytest.raises(UserInputError, match=r"row 2 \(Path colon_n/b.jpeg\): label 'TA' is not one of HP, SSA"):
        evaluate(model, "mhist", tmp_path / "mhist.csv", **FAST)


def test_metrics_json_is_strict_json_with_metrics_settings_and_config(model, tmp_path):
    csv, _, _ = chexpert_set(tmp_path, n=4)  # 4 images, 5 classes: one class absent, its AUROC undefined
    result = evaluate(model, "chexpert", csv, **{**FAST, "n_bootstrap": 0})  # no resamples: CIs undefined
    paths = write_outputs(result, str(tmp_path / "out"), {"checkpoint": None, "batch_size": 64})

    def reject(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    with open(paths["metrics"]) as f:
        document = json.loads(f.read(), parse_constant=reject)
    assert set(document) == {"task", "metrics", "settings", "config"}
    metrics = document["metrics"]
    assert {"accuracy", "accuracy_ci95", "auroc", "auroc_ci95", "per_class_auroc", "n", "n_rows", "class_counts",
            "n_unreadable", "unreadable", "images_per_second"} <= set(metrics)
    assert metrics["auroc_ci95"] == [None, None] and math.isnan(result.metrics["auroc_ci95"][0])
    assert sum(value is None for value in metrics["per_class_auroc"].values()) == 1
    assert document["settings"]["prompts"] == TASKS["chexpert"].prompts
    assert document["settings"]["temperature"] == pytest.approx(float(model.base_logit_scale()))
    assert document["config"] == {"checkpoint": None, "batch_size": 64}
    for name in ("predictions", "roc", "confusion_matrix"):
        assert os.path.getsize(paths[name]) > 0
    written = pd.read_csv(paths["predictions"])
    np.testing.assert_allclose(written[list(CHEXPERT_5X200_CLASSES)].to_numpy(), result.probabilities, atol=1e-7)
