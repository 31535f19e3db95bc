"""train.py end to end on the tiny model: trainable set, one step, outputs, validation, config, user errors."""
import json
import math
import os
import re

import pandas as pd
import pytest
import torch
import yaml

import train
from ace_lora.data.synthetic import write_demo_dataset
from ace_lora.data.train_dataset import TokenizingCollate, build_training_dataset
from ace_lora.errors import UserInputError
from ace_lora.model.checkpoint import read_released_checkpoint, save_released_checkpoint
from ace_lora.model.config import AceLoRAConfig
from ace_lora.model.factory import build_model, load_model_for_eval
from ace_lora.model.loss import create_loss
from ace_lora.params.training import DEMO_DEFAULTS, parse_training_args
from ace_lora.train.distributed import single_process
from ace_lora.train.step import train_step, warmup_cosine_schedule
from tests.conftest import error_exit_line
from tests.data.test_train_dataset import epoch_loader

N_TRAIN = 12
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    return write_demo_dataset(str(tmp_path_factory.mktemp("data")), n_train=N_TRAIN, n_test_per_class=2)


def run_args(model, data, out_dir, *extra):
    return ["--model", model, "--train-csv", data.train_csv, "--output-dir", str(out_dir), "--batch-size", "4",
            "--epochs", "2", "--num-workers", "0", "--device", "cpu", "--no-progress", *extra]


def error_line(capsys, argv):
    """Run train.main, expect exit status 2 and return the one-line message."""
    return error_exit_line(capsys, train.main, argv)


def test_only_lora_adapters_and_scale_are_trainable(tiny_model_name):
    model = build_model(tiny_model_name)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora." in n or "lora" in n.split(".")[-1] or n.startswith(("image_hgnn.", "text_hgnn."))
                             or n == "logit_scale" for n in trainable), trainable
    assert any(n.startswith("image_hgnn.") for n in trainable) and any(n.startswith("text_hgnn.") for n in trainable)
    assert sum("lora_A" in n for n in trainable) == sum("lora_B" in n for n in trainable) > 0
    trainable_ids = {id(p) for p in model.trainable_parameters()}
    assert not any(p.requires_grad for p in model.clip.parameters() if id(p) not in trainable_ids)
    assert model.num_trainable() == sum(p.numel() for n, p in model.named_parameters() if n in trainable)


def test_train_step_updates_trainables_and_nothing_else(tiny_model_name, demo_data):
    torch.manual_seed(0)
    model = build_model(tiny_model_name).train()
    dataset = build_training_dataset(demo_data.train_csv, model.preprocess)
    batch = next(iter(epoch_loader(dataset, TokenizingCollate(model.tokenizer), batch_size=6, epoch=0, seed=0)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    scheduler = warmup_cosine_schedule(optimizer, 0, 10)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = [train_step(model, batch, optimizer, scheduler, scaler, device=torch.device("cpu"), precision="fp32",
                         loss_fn=create_loss("label_guided"), gather_negatives=False, context=single_process("cpu"))
              for _ in range(2)]  # B starts at 0, so A gets a gradient from the second step on
    assert all(math.isfinite(loss) and loss > 0 for loss, _ in losses)
    assert losses[0][1] == pytest.approx(1e-2) and losses[1][1] < 1e-2  # the cosine schedule moved
    for name, p in model.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == p.requires_grad, f"{name}: changed={changed}, trainable={p.requires_grad}"


def test_training_from_the_image_cache_is_bit_identical_to_decoding(tiny_model_name, demo_data, tmp_path, capsys):
    """train.py --image-cache on a folder that does not exist builds the cache, then trains on it: the same
    step losses and final weights, bit for bit, as from the image files."""
    runs = {}
    for name, extra in (("files", []), ("cache", ["--image-cache", str(tmp_path / "cache")])):
        out = tmp_path / f"run_{name}"
        assert train.main(run_args(tiny_model_name, demo_data, out, "--max-steps", "3", "--log-every-steps", "1",
                                   *extra)) == 0
        steps = [json.loads(line)["loss"] for line in (out / "steps.jsonl").read_text().splitlines()]
        runs[name] = steps, torch.load(out / "checkpoints" / "last.pt", weights_only=False)["trainable"]
    assert (tmp_path / "cache" / "manifest.json").is_file()
    assert len(runs["files"][0]) == 3 and runs["files"][0] == runs["cache"][0]
    assert runs["files"][1].keys() == runs["cache"][1].keys()
    assert all(torch.equal(runs["files"][1][k], runs["cache"][1][k]) for k in runs["files"][1])
    # the cache was built for the training transform and size: an evaluation cache or other model is refused
    line = error_line(capsys, run_args(tiny_model_name, demo_data, tmp_path / "again", "--image-cache",
                                       str(tmp_path / "cache" / "manifest.json")))
    assert line == f"error: --image-cache {tmp_path / 'cache' / 'manifest.json'} is a file, not a folder"


def test_dry_run_prints_the_trainable_count(tiny_model_name, capsys):
    train.main(["--dry-run", "--model", tiny_model_name])
    expected = build_model(tiny_model_name).num_trainable()
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"trainable parameters: {expected}"
    train.main(["--dry-run", "--model", tiny_model_name, "--params", "q", "v", "o", "--lora-r", "8"])
    bigger = build_model(tiny_model_name, AceLoRAConfig(r=8, params=["q", "v", "o"])).num_trainable()
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"trainable parameters: {bigger}"
    assert bigger > expected


def test_dry_run_full_size_architecture(fake_biomedclip_dir, capsys):
    train.main(["--dry-run", "--model", f"local-dir:{fake_biomedclip_dir}"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == "trainable parameters: 969217"


def test_training_run_writes_every_output(tiny_model_name, demo_data, tmp_path):
    out = tmp_path / "run"
    assert train.main(run_args(tiny_model_name, demo_data, out, "--log-every-steps", "1")) == 0
    last = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert last["step"] == 6 and last["epoch"] == 2
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "ACE-LoRA_weights_last.pt", "ACE-LoRA_weights_best.pt",
                 "metrics.jsonl", "steps.jsonl", "training_curves.png", "config.yaml"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and [r["step"] for r in records] == [3, 6]
    assert all(r["train_loss"] > 0 and r["images_per_s"] > 0 and r["time_s"] > 0 for r in records)
    assert len((out / "steps.jsonl").read_text().splitlines()) == 6

    last = torch.load(out / "checkpoints/last.pt", weights_only=True)
    best = torch.load(out / "checkpoints/best.pt", weights_only=True)
    best_epoch = min(records, key=lambda r: r["train_loss"])["epoch"]  # no validation: lowest training loss
    assert best["best"] == {"metric": "train_loss", "value": pytest.approx(records[best_epoch - 1]["train_loss"]),
                            "epoch": best_epoch}
    assert (last["epoch"], last["step"], last["step_in_epoch"]) == (2, 6, 0)
    assert last["model_config"] == AceLoRAConfig().to_dict() and last["config"]["lr"] == 1e-3
    # the training checkpoint and the released-format file hold the same weights, and both load for evaluation
    released = read_released_checkpoint(str(out / "ACE-LoRA_weights_last.pt"))
    assert released["metadata"]["loss_type"] == "clip_loss_ace_hgnn"  # --loss label_guided (the default)
    assert torch.equal(released["weights"]["logit_scale"], last["trainable"]["logit_scale"])
    from_training = load_model_for_eval(tiny_model_name, str(out / "checkpoints/last.pt"), merge=False)
    from_released = load_model_for_eval(tiny_model_name, str(out / "ACE-LoRA_weights_last.pt"), merge=False)
    for name, tensor in last["trainable"].items():
        assert torch.equal(dict(from_training.named_parameters())[name], tensor)
        assert torch.equal(dict(from_released.named_parameters())[name], tensor)


def test_validation_selects_best_by_auroc(tiny_model_name, demo_data, tmp_path):
    out = tmp_path / "run"
    train.main(run_args(tiny_model_name, demo_data, out, "--val-dataset", "chexpert", "--val-csv", demo_data.test_csv,
                        "--val-data-root", demo_data.data_root, "--val-before-training", "--eval-datasets",
                        f"chexpert:{demo_data.test_csv}:{demo_data.data_root}"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert all(0 <= r["val_auroc"] <= 1 and r["chexpert_auroc"] == r["val_auroc"] for r in records)
    best = torch.load(out / "checkpoints/best.pt", weights_only=True)["best"]
    trained = records[1:]
    top = max(trained, key=lambda r: r["val_auroc"])
    assert best["metric"] == "val_auroc" and best["value"] == pytest.approx(top["val_auroc"])
    assert [r["best"] for r in trained] == [True, trained[1]["val_auroc"] > trained[0]["val_auroc"]]


def test_yaml_config_with_command_line_override(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("lr: 0.5\nepochs: 3\nlora-r: 8\nparams: [q, v]\nval_dataset: nih\n")
    args = parse_training_args(["--config", str(config), "--epochs", "1"], "", distributed=False)
    assert (args.lr, args.epochs, args.lora_r, args.params, args.val_dataset) == (0.5, 1, 8, ["q", "v"], "nih")
    config.write_text("learning_rate: 0.5\n")
    with pytest.raises(Exception, match="unknown keys learning_rate"):
        parse_training_args(["--config", str(config)], "", distributed=False)


def test_example_config_holds_the_released_hyperparameters():
    args = parse_training_args(["--config", os.path.join(ROOT, "configs", "ace_lora_mimic.yaml")], "", distributed=True)
    assert (args.lora_r, args.lora_alpha, args.lora_dropout, args.params) == (4, 1, 0.1, ["q", "k", "v"])
    assert (args.position, args.topk, args.hidden_features) == ("all", 5, 128)
    assert (args.lr, args.epochs, args.batch_size, args.seed) == (1e-3, 40, 64, 1)
    assert (args.loss, args.apply_gnn_encoders, args.warmup_epochs) == ("label_guided", "both", 1)


def test_the_released_regime_config_has_the_released_checkpoint_s_steps_and_warm_up():
    """40 epochs over a third of the data = 13.33 epochs of all of it; warm-up one such third-epoch."""
    paper = parse_training_args(["--config", os.path.join(ROOT, "configs", "ace_lora_mimic.yaml")], "",
                                distributed=False)
    released = parse_training_args(["--config", os.path.join(ROOT, "configs", "ace_lora_mimic_released_regime.yaml")],
                                   "", distributed=False)
    assert released.epochs == int(paper.epochs / 3) and released.warmup_epochs == pytest.approx(1 / 3, abs=1e-3)
    same = {k for k in vars(paper) if k not in ("epochs", "warmup_epochs", "output_dir", "config")}
    assert {k: getattr(released, k) for k in same} == {k: getattr(paper, k) for k in same}


def test_demo_defaults_yield_to_explicit_flags():
    args = parse_training_args(["--demo", "--epochs", "2"], "", distributed=True)
    assert (args.epochs, args.output_dir, args.num_workers, args.gather_negatives) == (2, "demo_output", 0, False)
    assert (args.batch_size, args.lr) == (DEMO_DEFAULTS["batch_size"], DEMO_DEFAULTS["lr"]) != (64, 1e-3)


@pytest.mark.parametrize("problem, expected", [
    ("missing_image", r"1 of 12 images not found: row 6 .*gone\.jpg \(check --data-root\)"),
    ("missing_column", r"missing column\(s\) 'report'"),
    ("semicolons", r"not a readable CSV file \(.*\) \(the header looks ';'-separated: these files are "
                   r"comma-separated CSV; save it with commas\)"),
    ("corrupt_image", r"cannot read image .*000003\.jpg"),
    ("no_csv", r"--train-csv is required"),
])
def test_bad_data_gives_one_line_errors(problem, expected, tiny_model_name, demo_data, tmp_path, capsys):
    table = pd.read_csv(demo_data.train_csv)
    csv = tmp_path / "train.csv"
    if problem == "missing_image":
        table.loc[5, "image_path"] = "mimic/gone.jpg"
    if problem == "missing_column":
        table = table.drop(columns="report")
    if problem == "semicolons":  # as a spreadsheet in a ';' locale saves it; the reports hold commas
        table.loc[3, "report"] = "Findings suggesting edema, no pneumothorax."
    if problem == "corrupt_image":
        for i in range(N_TRAIN):  # every image but one is fine; the corrupt one is read in the first epoch
            src = os.path.join(demo_data.data_root, table.loc[i, "image_path"])
            dst = tmp_path / os.path.basename(src)
            dst.write_bytes(b"\xff\xd8 truncated" if i == 3 else open(src, "rb").read())
            table.loc[i, "image_path"] = str(dst)
    table.to_csv(csv, index=False, sep=";" if problem == "semicolons" else ",")
    argv = run_args(tiny_model_name, demo_data, tmp_path / "run", "--data-root", demo_data.data_root)
    argv[argv.index("--train-csv") + 1] = str(csv)
    if problem == "no_csv":
        argv = [a for a in argv if a not in ("--train-csv", str(csv))]
    assert re.search(expected, error_line(capsys, argv))


def test_bad_resume_checkpoints_give_one_line_errors(tiny_model_name, demo_data, tmp_path, capsys):
    argv = run_args(tiny_model_name, demo_data, tmp_path / "run")
    assert "--resume latest: no checkpoint at" in error_line(capsys, argv + ["--resume", "latest"])
    released = str(tmp_path / "released.pt")  # weights only: cannot resume an optimiser from it
    save_released_checkpoint(build_model(tiny_model_name), released)
    assert "is not a resume checkpoint" in error_line(capsys, argv + ["--resume", released])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"nonsense")
    assert "cannot read checkpoint" in error_line(capsys, argv + ["--resume", str(garbage)])


@pytest.mark.parametrize("problem, expected", [
    ("val_csv", r"^error: --val-csv \S*nope\.csv: file not found$"),
    ("val_root", r"^error: --val-data-root \S*nowhere: folder not found$"),
    ("val_columns", r"^error: --val-csv \S*train\.csv: missing column\(s\) 'Path' that the chexpert task needs "
                    r"\(found: image_path, report, "),
    ("eval_csv", r"^error: --eval-datasets nih \S*nope\.csv: file not found$"),
])
def test_bad_validation_inputs_fail_before_training(problem, expected, tiny_model_name, demo_data, tmp_path, capsys):
    val = {"val_csv": ["--val-csv", str(tmp_path / "nope.csv")],
           "val_root": ["--val-data-root", str(tmp_path / "nowhere")],
           "val_columns": ["--val-csv", demo_data.train_csv]}.get(problem, [])
    argv = ["--val-dataset", "chexpert", "--val-csv", demo_data.test_csv, "--val-data-root", demo_data.data_root]
    argv += val + (["--eval-datasets", f"nih:{tmp_path / 'nope.csv'}"] if problem == "eval_csv" else [])
    out = tmp_path / "run"
    assert re.search(expected, error_line(capsys, run_args(tiny_model_name, demo_data, out, *argv)))
    assert not (out / "steps.jsonl").exists() and not (out / "checkpoints" / "last.pt").exists()  # no step trained


def test_failed_evaluation_keeps_the_epoch_checkpoint(tiny_model_name, demo_data, tmp_path, capsys, monkeypatch):
    import ace_lora.train.loop as training

    def broken(*args, **kwargs):
        raise UserInputError("cannot read image x.jpg")
    monkeypatch.setattr(training, "evaluate", broken)  # the zero-shot engine as training validation calls it
    out = tmp_path / "run"
    argv = run_args(tiny_model_name, demo_data, out, "--val-dataset", "chexpert", "--val-csv", demo_data.test_csv)
    assert error_line(capsys, argv) == "error: cannot read image x.jpg"
    last = torch.load(out / "checkpoints/last.pt", weights_only=True)  # saved before the evaluation failed
    assert (last["epoch"], last["step"], last["step_in_epoch"]) == (1, 3, 0)
    assert (out / "ACE-LoRA_weights_last.pt").is_file() and not (out / "checkpoints/best.pt").exists()


def test_curves_refreshed_every_epoch_and_loss_type_recorded(tiny_model_name, demo_data, tmp_path, monkeypatch):
    import ace_lora.train.loggers as loggers

    plotted = []  # the number of step records each time the curves are drawn

    def plot(records, path):
        plotted.append(len(records))
        return real_plot(records, path)
    real_plot = loggers.plot_training_curves
    monkeypatch.setattr(loggers, "plot_training_curves", plot)
    out = tmp_path / "run"
    train.main(run_args(tiny_model_name, demo_data, out, "--log-every-steps", "1", "--loss", "clip"))
    assert plotted[:2] == [3, 6] and (out / "training_curves.png").is_file()  # after epoch 1, not only at the end
    for name in ("last", "best"):
        metadata = read_released_checkpoint(str(out / f"ACE-LoRA_weights_{name}.pt"))["metadata"]
        # As released: loss_type says the hypergraph exists; use_labels says the label mask is off.
        assert metadata["loss_type"] == "clip_loss_ace_hgnn" and metadata["use_labels"] is False


def test_init_from_loads_trainables_with_a_fresh_schedule(tiny_model_name, demo_data, tmp_path):
    """--init-from copies the file's tensors (lr 0 keeps them exactly) and starts at step 1, epoch 1."""
    first = tmp_path / "first"
    train.main(run_args(tiny_model_name, demo_data, first, "--epochs", "1", "--log-every-steps", "1"))
    again = tmp_path / "again"
    for start in (first / "checkpoints" / "last.pt", first / "ACE-LoRA_weights_last.pt"):
        train.main(run_args(tiny_model_name, demo_data, again, "--init-from", str(start), "--lr", "0",
                            "--max-steps", "1", "--log-every-steps", "1", "--overwrite"))
        before = read_released_checkpoint(str(first / "ACE-LoRA_weights_last.pt"))["weights"]
        after = read_released_checkpoint(str(again / "ACE-LoRA_weights_last.pt"))["weights"]
        assert torch.equal(after["logit_scale"], before["logit_scale"])
        assert torch.equal(after["layer_0"]["q_proj"]["w_lora_B"], before["layer_0"]["q_proj"]["w_lora_B"])
        assert torch.equal(after["img_node_adapter"]["up.bias"], before["img_node_adapter"]["up.bias"])
        assert before["layer_0"]["q_proj"]["w_lora_B"].abs().sum() > 0  # the first run trained B away from 0
        steps = [json.loads(line) for line in (again / "steps.jsonl").read_text().splitlines()]
        assert [s["step"] for s in steps] == [1] and steps[0]["epoch"] == 1


def test_init_from_mismatches_give_one_line_errors(tiny_model_name, demo_data, tmp_path, capsys):
    model = build_model(tiny_model_name, AceLoRAConfig(r=2, topk=3))
    weights = tmp_path / "r2.pt"
    save_released_checkpoint(model, str(weights))
    out = tmp_path / "out"
    line = error_line(capsys, run_args(tiny_model_name, demo_data, out, "--init-from", str(weights)))
    assert line == (f"error: --init-from {weights} was trained with --lora-r 2 (this run: 4), --topk 3 (this run: 5); "
                    "set the same flags to start from it")
    state = read_released_checkpoint(str(weights))
    state["metadata"]["r"] = 4  # metadata that lies about the shapes: the tensor is named
    torch.save(state, weights)
    line = error_line(capsys, run_args(tiny_model_name, demo_data, out, "--init-from", str(weights), "--topk", "3"))
    assert "weights['layer_0']['q_proj']['w_lora_A'] has shape (2, 64), the model expects (4, 64)" in line
    plain = tmp_path / "plain.pt"
    save_released_checkpoint(build_model(tiny_model_name, AceLoRAConfig(apply_gnn_encoders="none")), str(plain))
    line = error_line(capsys, run_args(tiny_model_name, demo_data, out, "--init-from", str(plain)))
    assert "--apply-gnn-encoders none (this run: both)" in line
    assert error_line(capsys, run_args(tiny_model_name, demo_data, out, "--init-from", str(tmp_path / "no.pt"))) \
        == f"error: --init-from {tmp_path / 'no.pt'}: file not found"
    assert "give one" in error_line(capsys, run_args(tiny_model_name, demo_data, out, "--init-from", str(plain),
                                                     "--resume", "latest"))
    assert not out.exists() or not (out / "checkpoints" / "last.pt").exists()


def test_lora_only_training_without_hypergraph(tiny_model_name, demo_data, tmp_path, capsys):
    """--apply-gnn-encoders none: LoRA and the scale train; the weight file says clip_loss (LoRA only)."""
    argv = run_args(tiny_model_name, demo_data, tmp_path, "--apply-gnn-encoders", "none", "--dry-run")
    train.main(argv)
    # 2 BERT layers + 6 ViT blocks, q/k/v, width 64, r 4: 8 * 3 * 512 LoRA numbers + the scale
    assert capsys.readouterr().out.strip() == f"trainable parameters: {8 * 3 * 512 + 1}"
    train.main(run_args(tiny_model_name, demo_data, tmp_path, "--apply-gnn-encoders", "none", "--epochs", "1"))
    weights = read_released_checkpoint(str(tmp_path / "ACE-LoRA_weights_last.pt"))
    assert weights["metadata"]["loss_type"] == "clip_loss" and weights["metadata"]["use_labels"] is True
    assert not any("adapter" in key for key in weights["weights"])
    assert load_model_for_eval(tiny_model_name, str(tmp_path / "ACE-LoRA_weights_last.pt")).image_hgnn is None


def test_validation_metrics_name_each_set_and_turn_undefined_values_into_null(tiny_model_name, tmp_path):
    from ace_lora.model.factory import build_model
    from ace_lora.train.loop import finite_or_none, validation_metrics
    data = write_demo_dataset(str(tmp_path / "data"), n_train=5, n_test_per_class=2)
    metrics = validation_metrics(build_model(tiny_model_name), [("val", "chexpert", data.test_csv, None),
                                                                ("chexpert", "chexpert", data.test_csv, None)],
                                 batch_size=4, num_workers=0, precision="fp32", progress=False)
    assert set(metrics) == {"val_auroc", "val_accuracy", "chexpert_auroc", "chexpert_accuracy"}
    assert metrics["val_auroc"] == metrics["chexpert_auroc"] and 0 <= metrics["val_auroc"] <= 1
    assert finite_or_none(float("nan")) is None and finite_or_none(None) is None and finite_or_none(0.5) == 0.5


def test_every_declared_setting_walks_through_a_run(tiny_model_name, demo_data, tmp_path, capsys):
    """Each declared model setting (ace_lora.model.config) at a non-default value, set in YAML: --help lists its
    flag, the run records it (config.yaml, the checkpoint, the released file), evaluation loads it back, and
    resuming with the flag at another value is refused naming the flag."""
    from ace_lora.model.checkpoint import read_trained
    from ace_lora.model.config import declared_settings, setting_default, setting_dest
    from tests.model.test_config import EXAMPLE_VALUES
    with pytest.raises(SystemExit):
        train.main(["--help"])
    help_text = capsys.readouterr().out
    specs = declared_settings()
    config = tmp_path / "settings.yaml"
    config.write_text("".join(f"{setting_dest(s)}: {json.dumps(EXAMPLE_VALUES[s.name])}\n" for s in specs))
    out = tmp_path / "run"
    argv = run_args(tiny_model_name, demo_data, out, "--config", str(config), "--max-steps", "1")
    assert train.main(argv) == 0
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    last = torch.load(out / "checkpoints/last.pt", weights_only=True)
    released = read_trained(str(out / "ACE-LoRA_weights_last.pt")).config
    evaluated = load_model_for_eval(tiny_model_name, str(out / "checkpoints/last.pt")).config
    for spec in specs:
        flag, value = spec.metadata["flag"], EXAMPLE_VALUES[spec.name]
        assert flag in help_text and recorded[setting_dest(spec)] == value, flag
        assert last["model_config"][spec.name] == value and getattr(released, spec.name) == value, flag
        assert getattr(evaluated, spec.name) == value, flag
        default = setting_default(spec)
        again = argv + ["--resume", "latest", "--max-steps", "2", flag, *map(str, default if isinstance(
            default, list) else [default])]
        assert f"the run was started with other settings: {flag} " in error_line(capsys, again)


def test_a_checkpoint_written_before_a_setting_existed_reads_it_as_its_default_and_resumes(
        tiny_model_name, demo_data, tmp_path):
    from ace_lora.model.config import declared_settings, setting_dest
    out = tmp_path / "run"
    argv = run_args(tiny_model_name, demo_data, out, "--max-steps", "1")
    assert train.main(argv) == 0
    path = out / "checkpoints/last.pt"
    old = torch.load(path, weights_only=True)
    for spec in declared_settings():  # as if none of them had existed when it was written
        del old["model_config"][spec.name], old["config"][setting_dest(spec)]
    torch.save(old, path)
    assert train.main(argv[:-1] + ["2", "--resume", "latest"]) == 0
    assert torch.load(path, weights_only=True)["step"] == 2


def test_the_best_is_the_highest_auroc_or_the_lowest_loss_and_a_new_metric_starts_over():
    from ace_lora.train.loop import improved_best
    assert improved_best(None, {"epoch": 1, "val_auroc": 0.6}, "val_auroc") == {"metric": "val_auroc", "value": 0.6,
                                                                                 "epoch": 1}
    best = {"metric": "val_auroc", "value": 0.6, "epoch": 1}
    assert improved_best(best, {"epoch": 2, "val_auroc": 0.5}, "val_auroc") is None
    assert improved_best(best, {"epoch": 2, "val_auroc": 0.7}, "val_auroc")["value"] == 0.7
    assert improved_best(best, {"epoch": 2, "val_auroc": None}, "val_auroc") is None  # undefined: not better
    loss = {"metric": "train_loss", "value": 1.0, "epoch": 1}
    assert improved_best(loss, {"epoch": 2, "train_loss": 1.2}, "train_loss") is None
    assert improved_best(loss, {"epoch": 2, "train_loss": 0.8}, "train_loss")["value"] == 0.8
    assert improved_best(loss, {"epoch": 2, "val_auroc": 0.1}, "val_auroc")["metric"] == "val_auroc"
