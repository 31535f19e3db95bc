"""Bad inputs through the real entry points: one line, exit 2, before expensive work, nothing changed.

The numbers in the test names are the cases of the "never lose a run" issue; folder and resume cases
(1-5) are in test_resume.py, data preparation (10) in test_prepare.py / test_mimic.py.
"""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import train
from ace_lora.data.synthetic import write_demo_dataset
from ace_lora.evaluation.dense.splits import decode_error
from ace_lora.model.checkpoint import released_state
from ace_lora.model.config import AceLoRAConfig
from ace_lora.model.factory import build_model
from tests.conftest import error_exit_line
from zero_shot_eval import zero_shot_eval_ace_lora_chexpert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_MODEL = "local-dir:/nonexistent/model"  # loading it would fail: a check that passes must come first


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    return write_demo_dataset(str(tmp_path_factory.mktemp("data")), n_train=12, n_test_per_class=2)


def one_line(capsys, main, argv):
    # A progress bar may precede the message.
    return error_exit_line(capsys, main, argv, progress_lines=True)[len("error: "):]


def train_args(model, data, out, *extra):
    return ["--model", model, "--train-csv", data.train_csv, "--output-dir", str(out), "--batch-size", "4",
            "--epochs", "1", "--num-workers", "0", "--device", "cpu", "--no-progress", *extra]


def eval_args(model, data, out, *extra):
    return ["--model", model, "--csv", data.test_csv, "--output-dir", str(out), "--device", "cpu",
            "--num-workers", "0", "--bootstrap", "5", *extra]


def test_6_an_output_folder_that_cannot_be_created_fails_before_the_model_loads(demo_data, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    assert one_line(capsys, train.main, train_args(NO_MODEL, demo_data, taken)) == \
        f"--output-dir {taken}: exists and is not a folder"
    assert one_line(capsys, train.main, train_args(NO_MODEL, demo_data, taken / "run")) == \
        f"--output-dir {taken / 'run'}: cannot create the folder ({taken} is not a folder)"
    assert one_line(capsys, train.main, train_args(NO_MODEL, demo_data, "/proc/ace_lora_run")).startswith(
        "--output-dir /proc/ace_lora_run: cannot create the folder")
    assert taken.read_text() == "a file"


def test_7_a_checkpoint_with_non_finite_weights_is_refused_at_load(tiny_model_name, demo_data, tmp_path, capsys):
    state = released_state(build_model(tiny_model_name, AceLoRAConfig()))
    state["weights"]["img_edge_adapter"]["down.weight"][0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    out = tmp_path / "out"
    line = one_line(capsys, zero_shot_eval_ace_lora_chexpert.main,
                    eval_args(tiny_model_name, demo_data, out, "--checkpoint", str(path)))
    assert line == f"{path}: weights['img_edge_adapter']['down.weight'] holds NaN or infinite values (a diverged or " \
                   "damaged checkpoint)"
    assert not (out / "predictions.csv").exists() and not (out / "metrics.json").exists()
    line = one_line(capsys, train.main, train_args(tiny_model_name, demo_data, tmp_path / "run", "--init-from",
                                                   str(path)))
    assert "holds NaN or infinite values" in line


def test_8_an_image_over_the_decompression_bomb_limit_is_an_unreadable_image(tiny_model_name, demo_data, tmp_path,
                                                                            capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 64 x 64 demo images are then "bombs" (> 2x)
    line = one_line(capsys, train.main, train_args(tiny_model_name, demo_data, tmp_path / "run"))
    assert line.startswith(f"{demo_data.train_csv} row ") and ": cannot read image " in line  # the CSV row named
    assert "decompression bomb" in line and "pass --max-image-pixels N (0: no limit)" in line
    line = one_line(capsys, zero_shot_eval_ace_lora_chexpert.main, eval_args(tiny_model_name, demo_data,
                                                                             tmp_path / "eval"))
    assert "decompression bomb" in line and "pass --skip-unreadable" in line
    table = pd.read_csv(demo_data.test_csv, index_col=0)
    big = table["Path"].iloc[0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    Image.new("L", (200, 200), 128).save(os.path.join(demo_data.data_root, "big.jpg"))
    table.loc[table.index[0], "Path"] = "big.jpg"
    csv = tmp_path / "one_big.csv"
    table.to_csv(csv)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 15000)  # 40,000 pixels > 2x: only big.jpg is a bomb
    argv = eval_args(tiny_model_name, demo_data, tmp_path / "skip", "--skip-unreadable")
    argv[argv.index("--csv") + 1] = str(csv)
    argv += ["--data-root", demo_data.data_root]
    assert zero_shot_eval_ace_lora_chexpert.main(argv) == 0
    metrics = json.loads((tmp_path / "skip" / "metrics.json").read_text())["metrics"]
    assert metrics["n_unreadable"] == 1 and metrics["n"] == len(table) - 1
    assert "decompression bomb" in metrics["unreadable"][0]["error"] and big != "big.jpg"


@pytest.mark.parametrize("flags, message", [
    (["--device", "gpu"], "--device must be auto, cpu, cuda, cuda:N or mps, not 'gpu'"),
    (["--lr", "-1"], "--lr must be >= 0, got -1.0"),
    (["--betas", "2", "0.5"], "--betas must both be in [0, 1), got 2.0 0.5"),
    (["--num-workers", "-1"], "--num-workers must be >= 0, got -1"),
    (["--save-every-steps", "-1"], "--save-every-steps must be >= 0, got -1"),
    (["--weight-decay", "nan"], "--weight-decay must be >= 0, got nan"),
])
def test_9_bad_training_flags_fail_before_the_model_loads(demo_data, tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert one_line(capsys, train.main, train_args(NO_MODEL, demo_data, out, *flags)) == message
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--bootstrap", "-1"], "--bootstrap must be >= 0 (0: no intervals), got -1"),
    (["--num-workers", "-1"], "--num-workers must be >= 0, got -1"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--device", "cuda:x"], "--device must be auto, cpu, cuda, cuda:N or mps, not 'cuda:x'"),
])
def test_9_bad_evaluation_flags_fail_before_the_model_loads(demo_data, tmp_path, capsys, flags, message):
    assert one_line(capsys, zero_shot_eval_ace_lora_chexpert.main,
                    eval_args(NO_MODEL, demo_data, tmp_path / "out", *flags)) == message


def test_9_checkpoint_metadata_with_a_non_integer_rank(tiny_model_name, demo_data, tmp_path, capsys):
    state = released_state(build_model(tiny_model_name, AceLoRAConfig()))
    state["metadata"]["r"] = "four"
    path = tmp_path / "bad_meta.pt"
    torch.save(state, path)
    line = one_line(capsys, zero_shot_eval_ace_lora_chexpert.main,
                    eval_args(tiny_model_name, demo_data, tmp_path / "out", "--checkpoint", str(path)))
    assert line == f"{path}: invalid metadata, r must be an integer, got 'four'"


def test_11_messages(tiny_model_name, demo_data, tmp_path, capsys):
    header_only = tmp_path / "header.csv"
    header_only.write_text(open(demo_data.train_csv).readline())
    argv = train_args(tiny_model_name, demo_data, tmp_path / "run")
    argv[argv.index("--train-csv") + 1] = str(header_only)
    assert one_line(capsys, train.main, argv + ["--data-root", demo_data.data_root]) == \
        f"{header_only}: no training rows (the file has a header only)"

    table = pd.read_csv(demo_data.test_csv, index_col=0)
    table["Edema"] = table["Edema"].astype(object)
    table.loc[table.index[1], "Edema"] = "yes"
    csv = tmp_path / "yes.csv"
    table.to_csv(csv)
    argv = eval_args(tiny_model_name, demo_data, tmp_path / "out", "--data-root", demo_data.data_root)
    argv[argv.index("--csv") + 1] = str(csv)
    assert one_line(capsys, zero_shot_eval_ace_lora_chexpert.main, argv) == \
        f"{csv}: row 2 (Path {table['Path'].iloc[1]}): Edema must be 0 or 1, not 'yes'"

    zero_shot_eval_ace_lora_chexpert.main(eval_args(tiny_model_name, demo_data, tmp_path / "nb", "--bootstrap", "0"))
    printed = capsys.readouterr().out
    assert "AUROC" in printed and "CI" not in printed and "nan" not in printed


def test_11_a_truncated_jpeg_fails_the_dense_up_front_check(tmp_path):
    whole = tmp_path / "whole.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(whole, quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(whole.read_bytes()[:-600])
    assert decode_error(str(whole)) is None
    assert decode_error(str(truncated)) == "truncated JPEG (no end-of-image marker)"


ENTRY_SCRIPTS = sorted(["train.py", "train_multi_gpu.py", "predict.py", "export.py"]
                       + glob.glob("zero_shot_eval/*.py", root_dir=ROOT) + glob.glob("dataset_prep/*.py", root_dir=ROOT)
                       + glob.glob("benchmarks/*.py", root_dir=ROOT))
ENTRY_SCRIPTS.remove("zero_shot_eval/__init__.py")
HEAVY = ("torch", "open_clip", "transformers", "timm", "sklearn")


def test_11_help_of_every_entry_script_imports_no_heavy_library():
    """--help answers before torch, open_clip or scikit-learn load (the cost of a slow --help)."""
    probe = ("import runpy, sys\n"
             "target = sys.argv[1]\n"
             "sys.argv = [target, '--help']\n"
             "run = runpy.run_path if target.endswith('.py') else runpy.run_module\n"
             "try:\n    run(target, run_name='__main__')\n"
             "except SystemExit as exit:\n    assert exit.code in (0, None), exit.code\n"
             f"print('LOADED', sorted(name for name in {HEAVY!r} if name in sys.modules))\n")
    for script in ENTRY_SCRIPTS + ["ace_lora.sweep"]:
        target = script if script == "ace_lora.sweep" else os.path.join(ROOT, script)
        done = subprocess.run([sys.executable, "-c", probe, target], capture_output=True,
                              text=True, cwd=ROOT)
        assert done.returncode == 0, (script, done.stderr)
        assert "usage:" in done.stdout and done.stdout.strip().splitlines()[-1] == "LOADED []", (script, done.stdout)


def _csv_with_first_image(data, tmp_path, image_path) -> str:
    table = pd.read_csv(data.train_csv)
    table.loc[0, "image_path"] = str(image_path)
    path = tmp_path / "train.csv"
    table.to_csv(path, index=False)
    return str(path)


def test_round3_13_an_image_over_the_pixel_limit_names_its_row_and_the_flag_that_allows_it(
        tiny_model_name, demo_data, tmp_path, capsys):
    big = tmp_path / "big.png"
    Image.new("L", (300, 200)).save(big)  # 60,000 pixels: over a limit of 50,000 as 15000x15000 is over Pillow's
    csv = _csv_with_first_image(demo_data, tmp_path, big)
    argv = ["--model", tiny_model_name, "--train-csv", csv, "--data-root", demo_data.data_root, "--output-dir",
            str(tmp_path / "run"), "--batch-size", "12", "--max-steps", "1", "--num-workers", "0", "--device", "cpu",
            "--no-progress"]
    line = one_line(capsys, train.main, [*argv, "--max-image-pixels", "50000"])
    assert line == (f"{csv} row 1: cannot read image {big}: 60,000 pixels, over the limit of 50,000 that guards "
                    "against decompression bombs; if the file is trusted, pass --max-image-pixels N (0: no limit)")
    assert train.main([*argv, "--max-image-pixels", "0", "--overwrite"]) == 0  # the documented way through


def test_round3_14_an_image_path_that_names_a_folder_is_said_so(tiny_model_name, demo_data, tmp_path, capsys):
    folder = tmp_path / "a_folder.png"
    folder.mkdir()
    csv = _csv_with_first_image(demo_data, tmp_path, folder)
    line = one_line(capsys, train.main, ["--model", tiny_model_name, "--train-csv", csv, "--output-dir",
                                         str(tmp_path / "r"), "--num-workers", "0", "--device", "cpu"])
    assert line == f"{csv}: 1 image path(s) name a folder, not an image file: row 1 {folder}"


def test_round3_11_resume_given_a_folder_says_what_it_takes(demo_data, tmp_path, capsys):
    export = tmp_path / "export"
    export.mkdir()
    (export / "open_clip_config.json").write_text("{}")
    line = one_line(capsys, train.main, train_args(NO_MODEL, demo_data, tmp_path / "run", "--resume", str(export)))
    assert line == (f"--resume {export} is a folder, not a checkpoint: --resume takes a training checkpoint file (a "
                    "run's checkpoints/last.pt) or latest / auto; an export or weights folder holds no training state "
                    "(optimiser, schedule, data position): start a new run from trained weights with --init-from "
                    "WEIGHTS.pt")
    run = tmp_path / "old_run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    line = one_line(capsys, train.main, train_args(NO_MODEL, demo_data, tmp_path / "run", "--resume", str(run)))
    assert line.endswith(f"that run's checkpoint is --resume {run / 'checkpoints' / 'last.pt'}")


def test_round3_1_a_damaged_cache_under_train_py_is_one_line_and_its_rebuild_flag_repairs_it(
        tiny_model_name, demo_data, tmp_path, capsys):
    cache = tmp_path / "cache"
    argv = train_args(tiny_model_name, demo_data, tmp_path / "run", "--image-cache", str(cache), "--max-steps", "1")
    assert train.main(argv) == 0  # builds the cache first
    chunk = cache / "chunks" / "000000.npy"
    with open(chunk, "r+b") as f:
        f.truncate(300)
    again = [*argv[:argv.index("--output-dir") + 1], str(tmp_path / "run2"), *argv[argv.index("--output-dir") + 2:]]
    line = one_line(capsys, train.main, again)
    assert line.startswith(f"--image-cache {cache} is damaged (chunks/000000.npy is truncated or overwritten (300 "
                           "bytes, expected")
    assert line.endswith(f"repair it with --image-cache-rebuild (or dataset_prep/cache_images.py --csv CSV --output "
                         f"{cache} --rebuild)")
    assert train.main([*again, "--image-cache-rebuild"]) == 0
    assert chunk.stat().st_size > 300
