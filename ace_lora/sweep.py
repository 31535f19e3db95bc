"""Baselines and ablations on one pipeline: train every run of a YAML sweep, evaluate each with the same
scripts, and write one generated results table; on this machine or as SLURM jobs.

    python -m ace_lora.sweep configs/paper/main_zero_shot.yaml --output-dir sweeps/main
    python -m ace_lora.sweep CONFIG --output-dir D --parallel 2         # two parts at once (GPUs or cores)
    python -m ace_lora.sweep CONFIG --output-dir D --launcher slurm --no-wait --cluster partition=gpu
    python -m ace_lora.sweep status D                                   # the parts' table; submits nothing
    python -m ace_lora.sweep --demo --output-dir sweeps/demo       # tiny model, synthetic data, CPU

The YAML (configs/paper/ holds the paper's experiments; docs/reproducing.md says how to run them):
  model: local-dir:/models/biomedclip       # the backbone of every run
  train: {train_csv: ..., data_root: ..., epochs: 40}   # train.py flags shared by every run
  seeds: [1, 2, 3]
  runs:                                     # name, method (ace_lora.model.methods) and train.py overrides
    - {name: ace_lora, method: ace_lora}
    - {name: lora_clip_loss, method: lora, overrides: {loss: clip}}
  evaluations:                              # zero-shot data sets, retrieval, segmentation, detection
    - {name: chexpert, task: chexpert, csv: ..., data_root: ...}
    - {name: siim_seg_1pct, task: siim_segmentation, split_dir: ..., overrides: {train_fraction: 0.01}}
  launcher: [torchrun, --standalone, --nproc_per_node, "4"]   # optional: each training under torchrun
  cluster: {partition: gpu, time_min: 720, gpus_per_node: 1}  # optional: what each SLURM job asks for

Every (run, seed) is a part: its training, then every evaluation, each a subprocess of the repository's
own scripts, in <output-dir>/runs/<run>/seed<k>/ (under SLURM: one job per part, all in one job array).
A script is finished when its `done.json` exists (written atomically after it succeeded); a rerun skips
finished ones and redoes the rest (training resumes from its last checkpoint with `--resume auto`), so
nothing finished is recomputed and nothing half-written is trusted. A failing part is reported in the
table and the other parts go on. On SLURM the same command later shows the table, resubmits only failed
or lost parts, and never a queued, running or done one (docs/cluster.md).
Outputs: results.csv (run x seed x evaluation x metric: value, 95% CI), results.md (runs as rows,
evaluations as columns, mean +- std over seeds, best per column in bold, trainable numbers, training
time) and results_<evaluation>.png.
"""
import argparse
import os
import queue
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

import pandas as pd
import submitit
import yaml
from matplotlib.figure import Figure

from ace_lora.errors import RunInterrupted, UserInputError, main_guard
from ace_lora.evaluation.tasks import RETRIEVAL, TASKS
from ace_lora.io import prepare_output_dir, read_json, read_yaml_mapping, with_values, write_json
from ace_lora.model.config import LOCAL_PREFIX, TRANSFORMERS_PREFIX
from ace_lora.model.methods import METHODS, get_method
from ace_lora.params import HelpFormatter
from ace_lora.runners.cluster import (
    QUEUED_STATES,
    RUNNING_STATES,
    SLURM,
    ClusterConfig,
    RequeueableCall,
    check_sbatch,
    cluster_config,
    follow_states,
    held_signals,
    job_result,
    job_states,
    make_executor,
    submit_calls,
    task_env,
)
from ace_lora.runners.scripts import SCRIPTS, ForwardStopSignals, ScriptsStopped, cpu_slots

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
    PATH_KEYS, the CSV and root of each --eval-datasets TASK:CSV[:ROOT] entry, and a local-dir: or hf: folder model."""
    out = dict(values)
    for key, value in values.items():
        if key in PATH_KEYS and isinstance(value, str):
            out[key] = _absolute(value, base)
        elif key == "eval_datasets" and isinstance(value, (list, tuple)):
            out[key] = [":".join([spec.split(":")[0]] + [_absolute(p, base) for p in spec.split(":")[1:]])
                        for spec in value]
        elif key == "model" and isinstance(value, str) and value.startswith(LOCAL_PREFIX):
            out[key] = LOCAL_PREFIX + _absolute(value[len(LOCAL_PREFIX):], base)
        elif key == "model" and isinstance(value, str) and value.startswith(TRANSFORMERS_PREFIX):
            # a folder beside the sweep file, else a Hub id (org/name), which stays as it is
            folder = _absolute(value[len(TRANSFORMERS_PREFIX):], base)
            out[key] = TRANSFORMERS_PREFIX + folder if os.path.isdir(folder) else value
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
    check_held_out(sweep, path)
    return sweep


def selection_csvs(sweep: dict) -> set:
    """The validation CSVs that choose a run's best checkpoint (the shared train: block and every override)."""
    values = [sweep.get("train", {}).get("val_csv")]
    values += [run.get("overrides", {}).get("val_csv") for run in sweep["runs"]]
    return {os.path.realpath(value) for value in values if value}


def not_held_out(sweep: dict, evaluation: dict) -> bool:
    return bool(evaluation.get("csv")) and os.path.realpath(evaluation["csv"]) in selection_csvs(sweep)


def check_held_out(sweep: dict, path: str) -> None:
    """An evaluation that scores the validation set that chose the best checkpoints is refused, unless the
    YAML says so (`held_out: false`; results.md then marks the column)."""
    for evaluation in sweep["evaluations"]:
        if evaluation.get("held_out", True) is not False and not_held_out(sweep, evaluation):
            raise UserInputError(f"{path}: evaluation {evaluation['name']} scores {evaluation['csv']}, the validation "
                                 "set (val_csv) that chooses each run's best checkpoint: report a held-out set (NIH: "
                                 "chestxray14_heldout.csv of dataset_prep/chestx-ray_14_prep.py), or mark the "
                                 "evaluation held_out: false to report it anyway (marked in results.md)")


def write_done(folder: str, record: dict) -> None:
    write_json(os.path.join(folder, DONE), record)


def read_done(folder: str) -> Optional[dict]:
    return read_json(os.path.join(folder, DONE))


PART_RECORD = "part.json"  # the part's SLURM job: its id, log, submission time (written by the driver and the job)
FAILED = "failed.json"  # why a script of the part last failed; read only while its done.json is absent


def part_folder(output_dir: str, run: dict, seed: int) -> str:
    return os.path.join(output_dir, "runs", run["name"], f"seed{seed}")


def sweep_parts(sweep: dict) -> List[Tuple[dict, int]]:
    """Every (run, seed) of the sweep, in table order; each is one part (one cluster job)."""
    return [(run, seed) for run in sweep["runs"] for seed in sweep.get("seeds", [1])]


def _run_step(command: List[str], log_path: str, folder: str, env: Optional[Dict[str, str]],
              cpus: Optional[List[int]]) -> Optional[str]:
    """One script of a part; its failure is noted in `folder` (FAILED) for the table and the status."""
    error = SCRIPTS.run(command, log_path, env=env, cpus=cpus)
    if error is not None:
        write_json(os.path.join(folder, FAILED), {"error": error})
    return error


TRAIN_TIME = "train_time.json"  # seconds of every training attempt of a part, added up


def _add_train_time(part: str, seconds: float) -> float:
    path = os.path.join(part, TRAIN_TIME)
    total = seconds + (read_json(path) or {}).get("seconds", 0.0)
    write_json(path, {"seconds": total})
    return total


def train_part(sweep: dict, run: dict, seed: int, folder: str, env: Optional[Dict[str, str]] = None,
               cpus: Optional[List[int]] = None, distributed: bool = False, rank: int = 0) -> dict:
    """Train one run (skipped when finished or for `bare`); {status, checkpoint, trainable, seconds}.

    `seconds` counts every attempt (an interrupted one too); a resumed part appends to train.log.
    `distributed`: this process is one task of several (SLURM), which run train_multi_gpu.py together; the
    first (`rank` 0) writes the marker and counts the time, the others log to train_rank<k>.log."""
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
    launcher = [] if distributed else list(map(str, sweep.get("launcher") or []))
    script = os.path.join(ROOT, "train_multi_gpu.py" if launcher or distributed else "train.py")
    start = time.perf_counter()
    log = os.path.join(folder, "train.log" if rank == 0 else f"train_rank{rank}.log")
    try:
        error = _run_step([*launcher, *([] if launcher else [sys.executable]), script, *flags(values)], log, part, env,
                          cpus)
    finally:
        seconds = _add_train_time(part, time.perf_counter() - start) if rank == 0 else 0.0
    if error is not None:
        return {"status": "failed", "error": error}
    import torch  # here: reading the checkpoint is the only torch work of the sweep process (fast --help)
    checkpoint = os.path.join(part, "checkpoints", "best.pt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    record = {"status": "ok", "checkpoint": checkpoint, "seconds": seconds,
              "trainable": int(sum(t.numel() for t in state["trainable"].values()))}
    if rank == 0:
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
        values.update({"csv": evaluation["csv"], "data_root": evaluation.get("data_root"), "no_progress": True})
    return [sys.executable, os.path.join(ROOT, "zero_shot_eval", script), *flags(values)]


def evaluate_part(sweep: dict, evaluation: dict, checkpoint: Optional[str], folder: str,
                  env: Optional[Dict[str, str]] = None, cpus: Optional[List[int]] = None) -> dict:
    out = os.path.join(folder, evaluation["name"])
    done = read_done(out)
    if done is not None:
        return done
    os.makedirs(out, exist_ok=True)
    error = _run_step(evaluation_command(sweep, evaluation, checkpoint, out), os.path.join(out, "log.txt"), out,
                      env, cpus)
    if error is not None:
        return {"status": "failed", "error": error}
    metrics = read_json(os.path.join(out, "metrics.json"))["metrics"]
    kind = evaluation["task"] if evaluation["task"] in METRICS else "zero_shot"
    values = {key: {"value": metrics.get(key), "ci95": metrics.get(f"{key}_ci95")}
              for key in METRICS[kind] if key in metrics}
    record = {"status": "ok", "metrics": values}
    write_done(out, record)
    return record


def run_part(sweep: dict, run: dict, seed: int, output_dir: str, env: Optional[Dict[str, str]] = None,
             cpus: Optional[List[int]] = None, progress: bool = True, distributed: bool = False,
             rank: int = 0) -> bool:
    """Train one (run, seed) and evaluate it with every evaluation; True when every marker exists.

    Finished scripts are skipped (their done.json); a failure is noted beside the script (failed.json)
    and the part's other evaluations still run. Under SLURM with several tasks (`distributed`), every
    task trains and only the first (`rank` 0) writes the marker and evaluates."""
    folder = part_folder(output_dir, run, seed)
    os.makedirs(folder, exist_ok=True)
    trained = train_part(sweep, run, seed, folder, env, cpus, distributed, rank)
    if rank != 0:
        return trained["status"] == "ok"
    if progress:
        print(f"{run['name']} seed {seed}: training {trained['status']}", flush=True)
    if trained["status"] != "ok":
        return False
    ok = True
    for evaluation in sweep["evaluations"]:
        result = evaluate_part(sweep, evaluation, trained["checkpoint"], folder, env, cpus)
        ok = ok and result["status"] == "ok"
        if progress:
            print(f"  {evaluation['name']}: {result['status']}", flush=True)
    return ok


def part_done(sweep: dict, run: dict, seed: int, output_dir: str) -> bool:
    """A part is done when all of its markers exist (its training's, unless it trains nothing, and each
    evaluation's)."""
    folder = part_folder(output_dir, run, seed)
    needed = ([os.path.join(folder, "train")] if get_method(run.get("method", "ace_lora")).trains else [])
    needed += [os.path.join(folder, evaluation["name"]) for evaluation in sweep["evaluations"]]
    return all(read_done(path) is not None for path in needed)


def _failure(path: str, default: str) -> str:
    return "failed: " + (read_json(os.path.join(path, FAILED)) or {}).get("error", default)


RESULT_COLUMNS = ["run", "method", "seed", "evaluation", "metric", "value", "ci_low", "ci_high", "status",
                  "trainable_parameters", "train_seconds"]


def part_rows(sweep: dict, run: dict, seed: int, output_dir: str, unfinished: str = "not run") -> List[dict]:
    """The part's results.csv rows, from its markers; a missing marker is a failed row with the noted error
    (or `unfinished`, e.g. the job's final SLURM state)."""
    folder = part_folder(output_dir, run, seed)
    method = run.get("method", "ace_lora")
    if get_method(method).trains:
        trained = read_done(os.path.join(folder, "train"))
    else:
        trained = {"trainable": 0, "seconds": 0.0}
    base = {"run": run["name"], "method": method, "seed": seed,
            "trainable_parameters": (trained or {}).get("trainable"), "train_seconds": (trained or {}).get("seconds")}
    rows = []
    for evaluation in sweep["evaluations"]:
        empty = {**base, "evaluation": evaluation["name"], "metric": None, "value": None, "ci_low": None,
                 "ci_high": None}
        if trained is None:
            rows.append({**empty, "status": _failure(os.path.join(folder, "train"), unfinished)})
            continue
        out = os.path.join(folder, evaluation["name"])
        result = read_done(out)
        if result is None:
            rows.append({**empty, "status": _failure(out, unfinished)})
            continue
        for metric, entry in result["metrics"].items():
            low, high = entry["ci95"] or (None, None)
            rows.append({**empty, "metric": metric, "value": entry["value"], "ci_low": low, "ci_high": high,
                         "status": "ok"})
    return rows


def collect_results(sweep: dict, output_dir: str, unfinished: Optional[Dict[Tuple[str, int], str]] = None
                    ) -> pd.DataFrame:
    """The results.csv table of every part, from the markers alone (whichever launcher ran them)."""
    rows = []
    for run, seed in sweep_parts(sweep):
        rows += part_rows(sweep, run, seed, output_dir, (unfinished or {}).get((run["name"], seed), "not run"))
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def run_local(sweep: dict, output_dir: str, parallel: int = 1, progress: bool = True) -> pd.DataFrame:
    """Every part on this machine, `parallel` at a time (each on its own GPU, or its own share of the
    cores); returns the results.csv table. SIGINT / SIGTERM reach the running scripts, which save."""
    parts = sweep_parts(sweep)
    recorded = [read_json(os.path.join(part_folder(output_dir, run, seed), PART_RECORD)) for run, seed in parts]
    if any(recorded):  # submitted to SLURM before: never train beside a live job of the same part
        live = [row for row in part_statuses(sweep, output_dir) if row["state"] in ("queued", "running")]
        if live:
            raise UserInputError(f"{live[0]['part']} has SLURM job {live[0]['job_id']} {live[0]['state']} in this "
                                 f"sweep ({len(live)} part(s) in all): follow it with --launcher slurm, or scancel "
                                 "it before running here")
    with ForwardStopSignals():
        if parallel == 1:
            for run, seed in parts:
                run_part(sweep, run, seed, output_dir, progress=progress)
        else:
            slots: "queue.Queue[dict]" = queue.Queue()
            for slot in local_slots(parallel):
                slots.put(slot)

            def work(run: dict, seed: int) -> bool:
                slot = slots.get()
                try:
                    return run_part(sweep, run, seed, output_dir, env=slot["env"], cpus=slot["cpus"],
                                    progress=progress)
                finally:
                    slots.put(slot)

            with ThreadPoolExecutor(parallel) as pool:
                futures = [pool.submit(work, run, seed) for run, seed in parts]
            stops = [future.exception() for future in futures if isinstance(future.exception(), ScriptsStopped)]
            for future in futures:
                if future.exception() is not None and not stops:
                    raise future.exception()
            if stops:
                raise stops[0]
    return collect_results(sweep, output_dir)


def local_slots(parallel: int) -> List[dict]:
    """Where each of `parallel` parts runs: its own GPU (CUDA_VISIBLE_DEVICES) when there are GPUs, and
    its own share of the cores (pinned, with as many compute threads)."""
    cores = len(os.sched_getaffinity(0))
    if parallel > cores:
        raise UserInputError(f"--parallel {parallel} but this machine gives {cores} core(s): each part needs one")
    import torch  # here: only --parallel asks for the GPUs (fast --help)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = ([gpu for gpu in visible.split(",") if gpu.strip()] if visible is not None
            else [str(index) for index in range(torch.cuda.device_count())])
    if gpus and parallel > len(gpus):
        raise UserInputError(f"--parallel {parallel} but {len(gpus)} GPU(s) are visible: each part runs on its own")
    slots = []
    for index, cpus in enumerate(cpu_slots(parallel)):
        env = {"OMP_NUM_THREADS": str(len(cpus))}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[index]
        slots.append({"env": env, "cpus": cpus})
    return slots


class PartFailed(Exception):
    """A part's job ends in failure (SLURM: FAILED) when one of its scripts failed; failed.json says why."""


def slurm_part_job(sweep: dict, run: dict, seed: int, output_dir: str) -> bool:
    """One part as a SLURM job (run by every task of it): train, then evaluate on the first task."""
    folder = part_folder(output_dir, run, seed)
    job = submitit.JobEnvironment()
    record_path = os.path.join(folder, PART_RECORD)
    if job.global_rank == 0 and read_json(record_path) is None:  # the driver died between sbatch and its record
        write_json(record_path, {"job_id": job.job_id, "log": str(job.paths.stdout),
                                 "folder": str(job.paths.folder.parent),
                                 "scheduler": os.environ.get("SUBMITIT_EXECUTOR", SLURM)})
    if not run_part(sweep, run, seed, output_dir, env=task_env(), distributed=job.num_tasks > 1,
                    rank=job.global_rank):
        raise PartFailed(f"{run['name']} seed {seed} failed: see {folder}")
    return True


def part_statuses(sweep: dict, output_dir: str, states_of=None) -> List[dict]:
    """Every part's row of the status table: part, state (done, queued, running, failed, lost, not
    submitted), job id, elapsed, log, and why it failed. `states_of`: how to ask the scheduler (job_states;
    follow_states while waiting)."""
    records = {(run["name"], seed): read_json(os.path.join(part_folder(output_dir, run, seed), PART_RECORD))
               for run, seed in sweep_parts(sweep)}
    done = {(run["name"], seed) for run, seed in sweep_parts(sweep) if part_done(sweep, run, seed, output_dir)}
    asked = [record for part, record in records.items() if record and part not in done]  # the scheduler: if needed
    states: Dict[str, Dict[str, str]] = {}
    for kind in {record.get("scheduler", SLURM) for record in asked}:
        ids = [record["job_id"] for record in asked if record.get("scheduler", SLURM) == kind]
        states.update((states_of or job_states)(ids, kind))
    rows = []
    for run, seed in sweep_parts(sweep):
        folder = part_folder(output_dir, run, seed)
        record = records[(run["name"], seed)] or {}
        job_id = record.get("job_id", "")
        known = states.get(job_id)
        row = {"part": f"{run['name']}/seed{seed}", "run": run["name"], "seed": seed, "job_id": job_id,
               "elapsed": (known or {}).get("elapsed", ""), "log": record.get("log", os.path.join(folder, "train.log")),
               "reason": ""}
        if (run["name"], seed) in done:
            seconds = (read_done(os.path.join(folder, "train")) or {}).get("seconds")
            row.update(state="done", elapsed=row["elapsed"] or (_clock(seconds) if seconds else ""))
        elif not job_id:
            row["state"] = "not submitted"
        elif known and known["state"] in QUEUED_STATES:
            row["state"] = "queued"
        elif known and known["state"] in RUNNING_STATES:
            row["state"] = "running"
        elif known:
            row.update(state="failed", reason=f"job {job_id} {known['state']}")
        else:
            result = job_result(record.get("folder", ""), job_id)
            if result is None:
                row.update(state="lost", reason=f"job {job_id} is not known to SLURM and left no result")
            else:
                row.update(state="failed", reason=f"job {job_id} ended with an error")
        rows.append(row)
    return rows


def _clock(seconds: float) -> str:
    minutes, second = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{second:02d}"


def status_table(rows: List[dict]) -> str:
    columns = ("part", "state", "job_id", "elapsed", "log")
    widths = {c: max(len(c), *(len(str(row[c])) for row in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    for row in rows:
        reason = f"  ({row['reason']})" if row["reason"] else ""
        lines.append("  ".join(str(row[c]).ljust(widths[c]) for c in columns) + reason)
    return "\n".join(line.rstrip() for line in lines)


def submit_parts(sweep: dict, output_dir: str, cluster: ClusterConfig, parts: List[Tuple[dict, int]],
                 kind: str = SLURM) -> List[str]:
    """The parts as one job array (their job ids); each part's job id and log recorded in its folder (part.json).

    Submitting and recording happen with SIGINT / SIGTERM / SIGHUP held back, so that a driver stopped then
    leaves no job unrecorded (the job also records itself when it starts)."""
    folder = os.path.join(output_dir, "slurm")
    executor = make_executor(cluster, folder, name=f"ace-lora-{os.path.basename(output_dir)}", kind=kind)
    calls = [RequeueableCall(slurm_part_job, sweep, run, seed, output_dir) for run, seed in parts]
    with held_signals():
        jobs = submit_calls(executor, calls)
        for (run, seed), job in zip(parts, jobs):
            write_json(os.path.join(part_folder(output_dir, run, seed), PART_RECORD),
                       {"job_id": str(job.job_id), "log": str(job.paths.stdout), "folder": folder,
                        "scheduler": kind, "submitted": time.strftime("%Y-%m-%d %H:%M:%S")})
    return [str(job.job_id) for job in jobs]


def run_on_cluster(sweep: dict, output_dir: str, cluster: ClusterConfig, wait: bool = True, poll_s: float = 60.0,
                   kind: str = SLURM) -> int:
    """Submit every part that is not done, queued or running (new, failed and lost ones), show the table,
    and (with `wait`) follow the jobs until none is queued or running, then write the results.

    Returns 0 when every part is done (or, without `wait`, when the jobs are submitted), else 1."""
    rows = part_statuses(sweep, output_dir)
    again = [(row, (run, seed)) for row, (run, seed) in zip(rows, sweep_parts(sweep))
             if row["state"] in ("not submitted", "failed", "lost")]
    for row, _ in again:
        if row["state"] != "not submitted":
            print(f"{row['part']}: {row['state']} ({row['reason']}): resubmitting", flush=True)
    if again:
        job_ids = submit_parts(sweep, output_dir, cluster, [part for _, part in again], kind)
        print(f"submitted {len(job_ids)} part(s): job(s) {', '.join(job_ids)}", flush=True)
        rows = part_statuses(sweep, output_dir)
    print(status_table(rows), flush=True)
    if not wait:
        if all(row["state"] == "done" for row in rows):
            write_results(sweep, collect_results(sweep, output_dir), output_dir)
        return 0
    shown = {row["part"]: row["state"] for row in rows}
    try:
        while any(row["state"] in ("queued", "running") for row in rows):
            time.sleep(poll_s)
            rows = part_statuses(sweep, output_dir, follow_states)
            for row in rows:
                if shown.get(row["part"]) != row["state"]:
                    reason = f" ({row['reason']})" if row["reason"] else ""
                    print(f"{row['part']}: {row['state']}{reason}", flush=True)
                    shown[row["part"]] = row["state"]
    except KeyboardInterrupt:
        raise RunInterrupted(f"stopped following the jobs; they go on. See them with: python -m ace_lora.sweep "
                             f"status {output_dir}", 130) from None
    unfinished = {(row["run"], row["seed"]): row["reason"] or row["state"] for row in rows if row["state"] != "done"}
    write_results(sweep, collect_results(sweep, output_dir, unfinished), output_dir)
    return 0 if not unfinished else 1


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
    marked = {e["name"] for e in sweep["evaluations"] if not_held_out(sweep, e)}
    header = "| run | method | trainable | train time (s) | " + " | ".join(
        f"{e} ({m}){' †' if e in marked else ''}" for e, m in columns) + " |"
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
    if marked:
        lines += ["", "† not held out: this evaluation scores the validation set that chose each run's best "
                      "checkpoint (held_out: false in the sweep YAML)"]
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
    from ace_lora.data.synthetic import write_demo_dataset
    from ace_lora.evaluation.dense.demo_data import write_siim_demo
    from ace_lora.model.tiny_model import write_tiny_biomedclip
    from ace_lora.params.training import DEMO_DEFAULTS
    from ace_lora.train.demo import DEMO_DATA, DEMO_DIR, TINY_MODEL_DIRS
    root = os.path.join(os.path.abspath(output_dir), DEMO_DIR)
    data = write_demo_dataset(root, **DEMO_DATA)
    model = write_tiny_biomedclip(os.path.join(root, TINY_MODEL_DIRS["biomedclip"]), data.vocabulary,
                                  image_size=DEMO_DATA["image_size"])
    write_siim_demo(os.path.join(root, "siim"), size=DEMO_DATA["image_size"])
    train = {k: v for k, v in DEMO_DEFAULTS.items() if k not in ("output_dir", "val_before_training")}
    train.update(train_csv=data.train_csv, data_root=data.data_root, device="cpu", epochs=8)
    return {
        "demo": True, "model": model, "train": train, "seeds": [1],
        "cluster": {"gpus_per_node": 0, "cpus_per_task": 1, "time_min": 30},
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


TEXT_SETTINGS = ("partition", "account", "qos", "constraint")  # kept as given on the command line ("0123", "@lab")


def cluster_settings(sweep: dict, overrides: List[str]) -> ClusterConfig:
    """The sweep's `cluster:` block with --cluster KEY=VALUE on top, checked."""
    values = dict(sweep.get("cluster") or {})
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserInputError(f"--cluster {item}: give KEY=VALUE (e.g. partition=gpu)")
        key = key.strip()
        try:
            values[key] = value if key in TEXT_SETTINGS else yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserInputError(f"--cluster {item}: not a value (a number, or a list such as [a, b])") from None
    cluster = cluster_config(values, "cluster")
    if sweep.get("launcher") and cluster.tasks > 1:
        raise UserInputError("the sweep's launcher: starts the training processes itself (one task): set "
                             "tasks_per_node: 1 in its cluster: block, or drop launcher: to run one task per GPU")
    return cluster


def load_sweep(args, read: Optional[dict]) -> dict:
    """The sweep of the command line (`read`: its YAML, read already), recorded in the output folder as
    sweep.yaml; a demo rerun in the same folder reuses its data (jobs may read it)."""
    recorded = os.path.join(args.output_dir, "sweep.yaml")
    if args.demo and os.path.isfile(recorded):
        sweep = read_yaml_mapping(recorded, "sweep config")
        if sweep.get("demo") and os.path.isdir(sweep["model"].removeprefix(LOCAL_PREFIX)):
            return sweep
    sweep = demo_sweep(args.output_dir) if args.demo else read
    with open(recorded, "w", encoding="utf-8") as f:
        yaml.safe_dump(sweep, f, sort_keys=False)
    return sweep


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ace_lora.sweep", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("config", nargs="?", help="the sweep YAML (see above); not with --demo")
    parser.add_argument("--output-dir", required=True, help="folder of the sweep (rerun with the same to resume)")
    parser.add_argument("--demo", action="store_true", help="tiny model and synthetic data on the CPU, minutes")
    launch = parser.add_argument_group("where the parts run")
    launch.add_argument("--launcher", choices=("local", SLURM), default="local",
                        help="local: on this machine, by this process; slurm: each (run, seed) part a job of one "
                             "job array, through submitit (docs/cluster.md)")
    launch.add_argument("--parallel", type=int, default=1,
                        help="local: parts at once, each on its own GPU, or its own share of the CPU cores")
    launch.add_argument("--no-wait", action="store_true",
                        help="slurm: submit and exit; the same command (or `status`) later shows the table, "
                             "resubmits failed or lost parts and writes the results once all are done")
    launch.add_argument("--cluster", nargs="+", default=[], metavar="KEY=VALUE",
                        help="slurm: keys of the YAML's cluster: block set here, e.g. partition=gpu time_min=240")
    launch.add_argument("--poll-s", type=float, default=60.0,
                        help="slurm: seconds between two looks at the jobs while waiting for them")
    return parser


def status_main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ace_lora.sweep status",
                                     description="The table of a sweep's parts (part, state, job id, elapsed, "
                                                 "log); the results once every part is done. Submits nothing.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("output_dir", help="the sweep's --output-dir")
    args = parser.parse_args(argv)
    recorded = os.path.join(os.path.abspath(args.output_dir), "sweep.yaml")
    if not os.path.isfile(recorded):
        raise UserInputError(f"{args.output_dir}: not a sweep folder (no sweep.yaml)")
    sweep = read_yaml_mapping(recorded, "sweep config")
    output_dir = os.path.dirname(recorded)
    rows = part_statuses(sweep, output_dir)
    print(status_table(rows))
    if all(row["state"] == "done" for row in rows):
        write_results(sweep, collect_results(sweep, output_dir), output_dir)
        print(f"wrote {os.path.join(output_dir, 'results.md')}")
    return 0


@main_guard
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["status"]:
        return status_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.demo == bool(args.config):
        raise UserInputError("give a sweep YAML or --demo (one of them)")
    if args.parallel < 1:
        raise UserInputError(f"--parallel must be >= 1, got {args.parallel}")
    if args.launcher == SLURM and args.parallel != 1:
        raise UserInputError("--parallel is for --launcher local; on SLURM set parts_at_once in the cluster: block")
    if args.launcher != SLURM and (args.no_wait or args.cluster):
        raise UserInputError(f"{'--no-wait' if args.no_wait else '--cluster'} goes with --launcher slurm (the local "
                             "runner runs the parts itself)")
    if not args.poll_s > 0:
        raise UserInputError(f"--poll-s must be > 0, got {args.poll_s}")
    args = with_values(args, output_dir=os.path.abspath(args.output_dir))  # the parts run scripts from anywhere
    if args.config and not os.path.isfile(args.config):
        raise UserInputError(f"{args.config}: file not found")
    read = read_sweep(args.config) if args.config else None  # its mistakes before anything is written
    cluster = cluster_settings(read, args.cluster) if read is not None and args.launcher == SLURM else None
    if read is not None and args.parallel > 1 and read.get("launcher"):
        raise UserInputError("--parallel gives each part one GPU; the sweep's launcher: starts several processes "
                             "per part: drop one of them")
    if args.launcher == SLURM:
        check_sbatch()
    prepare_output_dir(args.output_dir)
    sweep = load_sweep(args, read)
    if args.launcher == SLURM:
        return run_on_cluster(sweep, args.output_dir, cluster or cluster_settings(sweep, args.cluster),
                              wait=not args.no_wait, poll_s=args.poll_s)
    try:
        results = run_local(sweep, args.output_dir, args.parallel)
    except ScriptsStopped as stop:
        again = "--demo" if args.demo else args.config
        raise RunInterrupted(f"{stop}: the sweep stopped after its running part saved and exited (status "
                             f"{stop.returncode}); continue with: python -m ace_lora.sweep {again} --output-dir "
                             f"{args.output_dir}", 128 + stop.signum) from None
    write_results(sweep, results, args.output_dir)
    failed = results[results["status"] != "ok"]
    print(f"wrote {os.path.join(args.output_dir, 'results.md')} ({len(failed)} failed part(s))")
    return 1 if len(failed) else 0


if __name__ == "__main__":
    # Through the imported module, not __main__: the jobs pickle its functions by name (submitit).
    from ace_lora.sweep import main as imported_main
    sys.exit(imported_main())
