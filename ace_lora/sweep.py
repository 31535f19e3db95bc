"""Baselines and ablations on one pipeline: train every run of a YAML sweep, evaluate each with the same
scripts, and write one generated results table.

    python -m ace_lora.sweep configs/paper/main_zero_shot.yaml --output-dir sweeps/main
    python -m ace_lora.sweep --demo --output-dir sweeps/demo       # tiny model, synthetic data, CPU

The YAML (configs/paper/ holds the paper's experiments; docs/reproducing.md says how to run them):
  model: local-dir:/models/biomedclip       # the backbone of every run
  train: {train_csv: ..., data_root: ..., epochs: 40}   # train.py flags shared by every run
  seeds: [1, 2, 3]
  runs:                                     # name, method (ace_lora.methods) and train.py overrides
    - {name: ace_lora, method: ace_lora}
    - {name: lora_clip_loss, method: lora, overrides: {loss: clip}}
  evaluations:                              # zero-shot data sets, retrieval, segmentation, detection
    - {name: chexpert, task: chexpert, csv: ..., data_root: ...}
    - {name: siim_seg_1pct, task: siim_segmentation, split_dir: ..., overrides: {train_fraction: 0.01}}
  launcher: [torchrun, --standalone, --nproc_per_node, "4"]   # optional: each training under torchrun

Every training and evaluation is a subprocess of the repository's own scripts, in
<output-dir>/runs/<run>/seed<k>/. A part is finished when its `done.json` exists (written atomically
after the script succeeded); a rerun skips finished parts and redoes the rest (training resumes from
its last checkpoint with `--resume auto`), so nothing finished is recomputed and nothing half-written
is trusted. A failing part is reported in the table and the other parts go on.
Outputs: results.csv (run x seed x evaluation x metric: value, 95% CI), results.md (runs as rows,
evaluations as columns, mean +- std over seeds, best per column in bold, trainable numbers, training
time) and results_<evaluation>.png.
"""
import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

import pandas as pd
import yaml
from matplotlib.figure import Figure

from .config import LOCAL_PREFIX
from .errors import RunInterrupted, UserInputError, main_guard
from .evaluation.tasks import RETRIEVAL, TASKS
from .io import prepare_output_dir, read_json, read_yaml_mapping, write_json
from .methods import METHODS, get_method
from .params import HelpFormatter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DENSE_SCRIPTS = {"siim_segmentation": "segmentation_siim.py", "rsna_detection": "detection_rsna.py"}
# The metrics each kind of evaluation reports in results.csv; the first is its results.md column.
METRICS = {"zero_shot": ("auroc", "accuracy"), RETRIEVAL: ("i2t_recall@5", "i2t_recall@1", "t2i_recall@5"),
           "siim_segmentation": ("dice", "miou"), "rsna_detection": ("map_40_75", "map50")}
DONE = "done.json"


def flags(values: dict) -> List[str]:
    """train.py / script flags from a mapping of flag names (- or _) to values; True is a bare flag."""
    out: List[str] = []
    for key, value in values.items():
        flag = f"--{str(key).replace('_', '-')}"
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out


# Keys whose values are paths: relative ones in a sweep YAML start at the YAML's folder.
PATH_KEYS = ("train_csv", "data_root", "label_csv", "val_csv", "val_data_root", "init_from", "peft_config",
             "image_cache", "csv", "split_dir")


def _absolute(value: str, base: str) -> str:
    return value if os.path.isabs(value) else os.path.normpath(os.path.join(base, value))


def resolve_paths(values: dict, base: str) -> dict:
    """`values` (train flags, an evaluation, overrides) with every relative path made absolute from `base`:
    PATH_KEYS, the CSV and root of each --eval-datasets TASK:CSV[:ROOT] entry, and a local-dir: model."""
    out = dict(values)
    for key, value in values.items():
        if key in PATH_KEYS and isinstance(value, str):
            out[key] = _absolute(value, base)
        elif key == "eval_datasets" and isinstance(value, (list, tuple)):
            out[key] = [":".join([spec.split(":")[0]] + [_absolute(p, base) for p in spec.split(":")[1:]])
                        for spec in value]
        elif key == "model" and isinstance(value, str) and value.startswith(LOCAL_PREFIX):
            out[key] = LOCAL_PREFIX + _absolute(value[len(LOCAL_PREFIX):], base)
        elif key == "overrides" and isinstance(value, dict):
            out[key] = resolve_paths(value, base)
    return out


def read_sweep(path: str) -> dict:
    """The sweep YAML, checked, with relative paths resolved against its own folder."""
    sweep = read_yaml_mapping(path, "sweep config")
    for key in ("model", "runs", "evaluations"):
        if key not in sweep:
            raise UserInputError(f"{path}: missing '{key}'")
    names = [run.get("name") for run in sweep["runs"]]
    if None in names or len(set(names)) != len(names):
        raise UserInputError(f"{path}: every run needs a unique name")
    for run in sweep["runs"]:
        if run.get("method", "ace_lora") not in METHODS:
            raise UserInputError(f"{path}: run {run['name']}: unknown method {run.get('method')!r}")
    for evaluation in sweep["evaluations"]:
        if evaluation.get("task") not in (*TASKS, RETRIEVAL, *DENSE_SCRIPTS):
            raise UserInputError(f"{path}: evaluation {evaluation.get('name')}: unknown task "
                                 f"{evaluation.get('task')!r}")
    base = os.path.dirname(os.path.abspath(path))
    sweep = resolve_paths(sweep, base)
    sweep["train"] = resolve_paths(sweep.get("train") or {}, base)
    sweep["runs"] = [resolve_paths(run, base) for run in sweep["runs"]]
    sweep["evaluations"] = [resolve_paths(evaluation, base) for evaluation in sweep["evaluations"]]
    return sweep


def write_done(folder: str, record: dict) -> None:
    write_json(os.path.join(folder, DONE), record)


def read_done(folder: str) -> Optional[dict]:
    return read_json(os.path.join(folder, DONE))


def run_script(command: List[str], log_path: str) -> Optional[str]:
    """Run a script, its output appended to `log_path`; None on success, else its last error line.

    The script runs in its own session, so a Ctrl-C at the terminal reaches only the sweep, which
    forwards SIGINT / SIGTERM to it once and waits: the training saves its checkpoint and exits, and the
    sweep then stops with RunInterrupted (a second signal is forwarded too: the training stops at once).
    Should the sweep itself die (kill -9), the script gets SIGTERM (Linux: PR_SET_PDEATHSIG), saves and
    exits, instead of training on unwatched.
    """
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(command)}\n")
        log.flush()
        offset = log.tell()  # this attempt's output starts here
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                 preexec_fn=_terminate_with_parent, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        received: List[int] = []

        def forward(signum, _frame):
            received.append(signum)
            child.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            returncode = child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if received:
        raise SweepInterrupted(received[0], returncode)
    if returncode == 0:
        return None
    with open(log_path, encoding="utf-8") as log:
        log.seek(offset)
        lines = [line.strip() for line in log if line.strip()]
    errors = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    return (errors or lines or [f"exit status {returncode}"])[-1]


def _terminate_with_parent() -> None:
    """In the child before exec: SIGTERM when the sweep dies (Linux only; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        import ctypes
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class SweepInterrupted(Exception):
    """A signal reached the sweep while a part ran; the part has been told and has exited."""

    def __init__(self, signum: int, returncode: int):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.returncode = signum, returncode


TRAIN_TIME = "train_time.json"  # seconds of every training attempt of a part, added up


def _add_train_time(part: str, seconds: float) -> float:
    path = os.path.join(part, TRAIN_TIME)
    total = seconds + (read_json(path) or {}).get("seconds", 0.0)
    write_json(path, {"seconds": total})
    return total


def train_part(sweep: dict, run: dict, seed: int, folder: str) -> dict:
    """Train one run (skipped when finished or for `bare`); {status, checkpoint, trainable, seconds}.

    `seconds` counts every attempt (an interrupted one too); a resumed part appends to train.log."""
    method = run.get("method", "ace_lora")
    if not get_method(method).trains:
        return {"status": "ok", "checkpoint": None, "trainable": 0, "seconds": 0.0}
    part = os.path.join(folder, "train")
    done = read_done(part)
    if done is not None:
        return done
    os.makedirs(part, exist_ok=True)
    values = {**sweep.get("train", {}), **run.get("overrides", {}), "method": method, "seed": seed,
              "model": sweep["model"], "output_dir": part, "resume": "auto", "no_progress": True}
    launcher = sweep.get("launcher") or []
    script = os.path.join(ROOT, "train_multi_gpu.py" if launcher else "train.py")
    start = time.perf_counter()
    try:
        error = run_script([*map(str, launcher), *([] if launcher else [sys.executable]), script, *flags(values)],
                           os.path.join(folder, "train.log"))
    finally:
        seconds = _add_train_time(part, time.perf_counter() - start)
    if error is not None:
        return {"status": "failed", "error": error}
    import torch  # here: reading the checkpoint is the only torch work of the sweep process (fast --help)
    checkpoint = os.path.join(part, "checkpoints", "best.pt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    record = {"status": "ok", "checkpoint": checkpoint, "seconds": seconds,
              "trainable": int(sum(t.numel() for t in state["trainable"].values()))}
    write_done(part, record)
    return record


def evaluation_command(sweep: dict, evaluation: dict, checkpoint: Optional[str], out: str) -> List[str]:
    task = evaluation["task"]
    values = {"model": sweep["model"], "checkpoint": checkpoint, "output_dir": out, **evaluation.get("overrides", {})}
    if task in DENSE_SCRIPTS:
        script = DENSE_SCRIPTS[task]
        values.update({"split_dir": evaluation.get("split_dir"), "data_root": evaluation.get("data_root"),
                       "no_progress": True})
    else:
        script = "retrieval.py" if task == RETRIEVAL else f"zero_shot_eval_ace_lora_{task}.py"
        values.update({"csv": evaluation["csv"], "data_root": evaluation.get("data_root")})
    return [sys.executable, os.path.join(ROOT, "zero_shot_eval", script), *flags(values)]


def evaluate_part(sweep: dict, evaluation: dict, checkpoint: Optional[str], folder: str) -> dict:
    out = os.path.join(folder, evaluation["name"])
    done = read_done(out)
    if done is not None:
        return done
    os.makedirs(out, exist_ok=True)
    error = run_script(evaluation_command(sweep, evaluation, checkpoint, out), os.path.join(out, "log.txt"))
    if error is not None:
        return {"status": "failed", "error": error}
    metrics = read_json(os.path.join(out, "metrics.json"))["metrics"]
    kind = evaluation["task"] if evaluation["task"] in METRICS else "zero_shot"
    values = {key: {"value": metrics.get(key), "ci95": metrics.get(f"{key}_ci95")}
              for key in METRICS[kind] if key in metrics}
    record = {"status": "ok", "metrics": values}
    write_done(out, record)
    return record


def run_sweep(sweep: dict, output_dir: str, progress: bool = True) -> pd.DataFrame:
    """Every part, in order (runs, seeds, then evaluations); returns the results.csv table."""
    rows = []
    seeds = sweep.get("seeds", [1])
    for run in sweep["runs"]:
        for seed in seeds:
            folder = os.path.join(output_dir, "runs", run["name"], f"seed{seed}")
            os.makedirs(folder, exist_ok=True)
            trained = train_part(sweep, run, seed, folder)
            base = {"run": run["name"], "method": run.get("method", "ace_lora"), "seed": seed,
                    "trainable_parameters": trained.get("trainable"), "train_seconds": trained.get("seconds")}
            if progress:
                print(f"{run['name']} seed {seed}: training {trained['status']}", flush=True)
            for evaluation in sweep["evaluations"]:
                if trained["status"] != "ok":
                    rows.append({**base, "evaluation": evaluation["name"], "metric": None, "value": None,
                                 "ci_low": None, "ci_high": None, "status": "failed: " + trained["error"]})
                    continue
                result = evaluate_part(sweep, evaluation, trained["checkpoint"], folder)
                if result["status"] != "ok":
                    rows.append({**base, "evaluation": evaluation["name"], "metric": None, "value": None,
                                 "ci_low": None, "ci_high": None, "status": "failed: " + result["error"]})
                    continue
                for metric, entry in result["metrics"].items():
                    low, high = entry["ci95"] or (None, None)
                    rows.append({**base, "evaluation": evaluation["name"], "metric": metric, "value": entry["value"],
                                 "ci_low": low, "ci_high": high, "status": "ok"})
                if progress:
                    print(f"  {evaluation['name']}: {result['status']}", flush=True)
    return pd.DataFrame(rows, columns=["run", "method", "seed", "evaluation", "metric", "value", "ci_low", "ci_high",
                                       "status", "trainable_parameters", "train_seconds"])


def primary_metric(sweep: dict, evaluation: dict) -> str:
    return METRICS[evaluation["task"] if evaluation["task"] in METRICS else "zero_shot"][0]


def markdown_table(sweep: dict, results: pd.DataFrame) -> str:
    """Runs as rows, evaluations as columns (primary metric, mean +- std over seeds), best in bold."""
    columns = [(e["name"], primary_metric(sweep, e)) for e in sweep["evaluations"]]
    cells: Dict[str, Dict[str, str]] = {}
    means: Dict[str, Dict[str, float]] = {}
    for run in sweep["runs"]:
        name = run["name"]
        cells[name], means[name] = {}, {}
        for evaluation, metric in columns:
            part = results[(results["run"] == name) & (results["evaluation"] == evaluation)]
            values = part[(part["metric"] == metric) & (part["status"] == "ok")]["value"].astype(float).dropna()
            if len(values) == 0:
                cells[name][evaluation] = "failed" if (part["status"] != "ok").any() else "n/a"
                continue
            means[name][evaluation] = float(values.mean())
            std = f" ± {values.std(ddof=1):.3f}" if len(values) > 1 else ""
            cells[name][evaluation] = f"{values.mean():.3f}{std}"
    header = "| run | method | trainable | train time (s) | " + " | ".join(f"{e} ({m})" for e, m in columns) + " |"
    lines = [header, "|" + " --- |" * (4 + len(columns))]
    for evaluation, _ in columns:
        scored = {run: m[evaluation] for run, m in means.items() if evaluation in m}
        if scored:
            best = max(scored.values())
            for run, value in scored.items():
                if value == best:
                    cells[run][evaluation] = f"**{cells[run][evaluation]}**"
    for run in sweep["runs"]:
        part = results[results["run"] == run["name"]]
        trainable = part["trainable_parameters"].dropna()
        seconds = part.drop_duplicates("seed")["train_seconds"].dropna()
        trainable_cell = f"{int(trainable.iloc[0]):,}" if len(trainable) else "n/a"
        seconds_cell = f"{seconds.mean():.0f}" if len(seconds) else "n/a"
        lines.append(f"| {run['name']} | {run.get('method', 'ace_lora')} | {trainable_cell} | {seconds_cell} | "
                     + " | ".join(cells[run["name"]][e] for e, _ in columns) + " |")
    return "\n".join(lines) + "\n"


def plot_results(sweep: dict, results: pd.DataFrame, output_dir: str) -> List[str]:
    paths = []
    for evaluation in sweep["evaluations"]:
        metric = primary_metric(sweep, evaluation)
        part = results[(results["evaluation"] == evaluation["name"]) & (results["metric"] == metric)]
        grouped = part.groupby("run", sort=False)["value"].agg(["mean", "std"]).reindex(
            [r["name"] for r in sweep["runs"]])
        fig = Figure(figsize=(1.2 + 0.9 * len(grouped), 3.2))
        ax = fig.subplots()
        ax.bar(grouped.index, grouped["mean"].fillna(0), yerr=grouped["std"].fillna(0), capsize=3, color="tab:blue")
        ax.set_ylabel(metric)
        ax.set_title(evaluation["name"])
        ax.tick_params(axis="x", labelrotation=30)
        path = os.path.join(output_dir, f"results_{evaluation['name']}.png")
        fig.savefig(path, dpi=120, bbox_inches="tight")
        paths.append(path)
    return paths


def write_results(sweep: dict, results: pd.DataFrame, output_dir: str) -> None:
    results.to_csv(os.path.join(output_dir, "results.csv"), index=False)
    with open(os.path.join(output_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(markdown_table(sweep, results))
    plot_results(sweep, results, output_dir)


def demo_sweep(output_dir: str) -> dict:
    """A sweep on the training demo's synthetic data and tiny model, plus the synthetic SIIM split."""
    # Imported here: the demo modules load torch, and `--help` of the sweep should not.
    from .data.synthetic import write_demo_dataset
    from .demo import DEMO_DATA, DEMO_DIR, TINY_MODEL_DIRS
    from .dense.synthetic import write_siim_demo
    from .params.training import DEMO_DEFAULTS
    from .tiny_model import write_tiny_biomedclip
    root = os.path.join(os.path.abspath(output_dir), DEMO_DIR)
    data = write_demo_dataset(root, **DEMO_DATA)
    model = write_tiny_biomedclip(os.path.join(root, TINY_MODEL_DIRS["biomedclip"]), data.vocabulary,
                                  image_size=DEMO_DATA["image_size"])
    write_siim_demo(os.path.join(root, "siim"), size=DEMO_DATA["image_size"])
    train = {k: v for k, v in DEMO_DEFAULTS.items() if k not in ("output_dir", "val_before_training")}
    train.update(train_csv=data.train_csv, data_root=data.data_root, device="cpu", epochs=8)
    return {
        "model": model, "train": train, "seeds": [1],
        "runs": [{"name": "bare", "method": "bare"}, {"name": "lora", "method": "lora"},
                 {"name": "ace_lora", "method": "ace_lora"}, {"name": "dora", "method": "dora"}],
        "evaluations": [
            {"name": "chexpert", "task": "chexpert", "csv": data.test_csv,
             "overrides": {"device": "cpu", "num_workers": 0, "bootstrap": 100}},
            {"name": "siim_seg", "task": "siim_segmentation", "split_dir": os.path.join(root, "siim"),
             "overrides": {"device": "cpu", "num_workers": 0, "epochs": 15, "lr": 2e-3, "head_channels": 32,
                           "bootstrap": 50}},
        ],
    }


@main_guard
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ace_lora.sweep", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("config", nargs="?", help="the sweep YAML (see above); not with --demo")
    parser.add_argument("--output-dir", required=True, help="folder of the sweep (rerun with the same to resume)")
    parser.add_argument("--demo", action="store_true", help="tiny model and synthetic data on the CPU, minutes")
    args = parser.parse_args(argv)
    if args.demo == bool(args.config):
        raise UserInputError("give a sweep YAML or --demo (one of them)")
    args.output_dir = os.path.abspath(args.output_dir)  # the parts run scripts by absolute path, from anywhere
    prepare_output_dir(args.output_dir)
    sweep = demo_sweep(args.output_dir) if args.demo else read_sweep(args.config)
    with open(os.path.join(args.output_dir, "sweep.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(sweep, f, sort_keys=False)
    try:
        results = run_sweep(sweep, args.output_dir)
    except SweepInterrupted as stop:
        again = "--demo" if args.demo else args.config
        raise RunInterrupted(f"{stop}: the sweep stopped after its running part saved and exited (status "
                             f"{stop.returncode}); continue with: python -m ace_lora.sweep {again} --output-dir "
                             f"{args.output_dir}", 128 + stop.signum) from None
    write_results(sweep, results, args.output_dir)
    failed = results[results["status"] != "ok"]
    print(f"wrote {os.path.join(args.output_dir, 'results.md')} ({len(failed)} failed part(s))")
    return 1 if len(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
