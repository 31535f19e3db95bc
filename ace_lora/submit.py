"""One training run as one SLURM job, on one node or many: train_multi_gpu.py in every task (one per GPU),
the process group from SLURM's environment, requeued and resumed at preemption and at the time limit.

    python -m ace_lora.submit --nodes 2 --gpus-per-node 8 --partition gpu --time-min 1440 -- \\
        --config configs/ace_lora_mimic.yaml --output-dir runs/ace --gather-negatives
    python -m ace_lora.submit --gpus-per-node 0 --tasks-per-node 2 --cpus-per-task 1 -- --demo --output-dir d

Everything after `--` is train_multi_gpu.py's flags (or a YAML file, taken as --config); the training
always runs with --resume auto, so every attempt of the job continues from the last checkpoint. The job
id is recorded in OUTPUT_DIR/job.json: the same command again shows the job and submits another only
when the recorded one has ended without finishing the run. Logs: OUTPUT_DIR/train.log (rank 0),
OUTPUT_DIR/slurm/ (submitit's logs, the other ranks). docs/cluster.md has the details.
"""
import argparse
import os
import sys
import time
from typing import List, Optional, Sequence, Tuple

import submitit

from ace_lora.errors import RunInterrupted, UserInputError, main_guard
from ace_lora.io import prepare_output_dir, read_json, write_json
from ace_lora.params import HelpFormatter
from ace_lora.runners.cluster import (
    QUEUED_STATES,
    RUNNING_STATES,
    SLURM,
    RequeueableCall,
    add_cluster_args,
    check_sbatch,
    cluster_from_args,
    follow_states,
    held_signals,
    job_result,
    job_states,
    make_executor,
    submit_calls,
    task_env,
)
from ace_lora.runners.scripts import SCRIPTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB_RECORD = "job.json"


def training_job(train_argv: List[str], output_dir: str) -> None:
    """Every task of the job: train_multi_gpu.py, ranks from SLURM, MASTER_ADDR/PORT from the node list."""
    job = submitit.JobEnvironment()
    rank = job.global_rank
    record_path = os.path.join(output_dir, JOB_RECORD)
    if rank == 0 and read_json(record_path) is None:  # the submitting command died between sbatch and its record
        write_json(record_path, {"job_id": job.job_id, "folder": str(job.paths.folder.parent),
                                 "log": os.path.join(output_dir, "train.log"),
                                 "scheduler": os.environ.get("SUBMITIT_EXECUTOR", SLURM), "tasks": job.num_tasks})
    log = os.path.join(output_dir, "train.log") if rank == 0 else os.path.join(output_dir, "slurm",
                                                                                 f"train_rank{rank}.log")
    error = SCRIPTS.run([sys.executable, os.path.join(ROOT, "train_multi_gpu.py"), *train_argv], log, env=task_env())
    if error is not None:
        raise RuntimeError(f"rank {rank}: {error}")


def training_argv(extra: Sequence[str]) -> Tuple[List[str], str]:
    """The flags after `--`: a lone YAML file is --config; the output folder made absolute; --resume auto."""
    argv = list(extra)
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml")):
        argv = ["--config", argv[0], *argv[1:]]
    from run_utils import parse_args  # torch-free: the flags are checked here, before anything is submitted
    args = parse_args(argv, distributed=True)
    if args.dry_run:
        raise UserInputError("--dry-run needs no cluster: run train_multi_gpu.py --dry-run here")
    if args.resume not in (None, "auto"):
        raise UserInputError(f"--resume {args.resume}: a submitted run always continues with --resume auto")
    if args.overwrite:
        raise UserInputError("--overwrite would start over at every requeue: clear the folder before submitting")
    output_dir = os.path.abspath(args.output_dir)
    return [*argv, "--output-dir", output_dir, "--resume", "auto", "--no-progress"], output_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ace_lora.submit", description=__doc__,
                                     formatter_class=HelpFormatter,
                                     usage="%(prog)s [cluster flags] -- TRAINING-FLAGS-OR-CONFIG.yaml")
    cluster = parser.add_argument_group("what the job asks SLURM for")
    add_cluster_args(cluster, skip=("parts_at_once",))
    follow = parser.add_argument_group("following the job")
    follow.add_argument("--no-wait", action="store_true", help="submit and exit (the same command later shows it)")
    follow.add_argument("--poll-s", type=float, default=60.0, help="seconds between two looks at the job")
    return parser


def split_argv(argv: Sequence[str]):
    argv = list(argv)
    if "--" not in argv:
        return argv, None
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


@main_guard
def main(argv: Optional[Sequence[str]] = None, kind: str = SLURM) -> int:
    own, extra = split_argv(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(own)
    if extra is None or not extra:
        raise UserInputError("give the training flags after `--` (e.g. -- --config configs/ace_lora_mimic.yaml)")
    if not args.poll_s > 0:
        raise UserInputError(f"--poll-s must be > 0, got {args.poll_s}")
    cluster = cluster_from_args(args, skip=("parts_at_once",))
    train_argv, output_dir = training_argv(extra)
    if kind == SLURM:
        check_sbatch()
    prepare_output_dir(output_dir)
    record_path = os.path.join(output_dir, JOB_RECORD)
    record = read_json(record_path)
    state = job_states([record["job_id"]], record.get("scheduler", SLURM)).get(record["job_id"]) if record else None
    if state and state["state"] in QUEUED_STATES | RUNNING_STATES:
        print(f"job {record['job_id']} of {output_dir} is {state['state'].lower()} ({state['elapsed']}): not "
              f"submitting another; log {record['log']}")
    elif record and finished(record, state):
        print(f"job {record['job_id']} finished the run in {output_dir}: nothing to submit")
        return 0
    else:
        if record:
            print(f"job {record['job_id']} has ended: submitting again (the run resumes from its last checkpoint)")
        folder = os.path.join(output_dir, "slurm")
        executor = make_executor(cluster, folder, name=f"ace-lora-{os.path.basename(output_dir)}", kind=kind)
        with held_signals():  # the job and its record, both or neither
            [job] = submit_calls(executor, [RequeueableCall(training_job, train_argv, output_dir)])
            record = {"job_id": str(job.job_id), "folder": folder, "log": os.path.join(output_dir, "train.log"),
                      "scheduler": kind, "submitted": time.strftime("%Y-%m-%d %H:%M:%S"), "tasks": cluster.tasks}
            write_json(record_path, record)
        print(f"submitted job {record['job_id']} ({cluster.nodes} node(s) x {cluster.tasks_per_node_or_default} "
              f"task(s)); log {record['log']}", flush=True)
    if args.no_wait:
        return 0
    return follow_job(record, args.poll_s)


def finished(record: dict, state: Optional[dict]) -> bool:
    """The recorded job ended having finished the run (SLURM's COMPLETED, or submitit's success)."""
    result = job_result(record["folder"], record["job_id"])
    return (state is not None and state["state"] == "COMPLETED") or (result is not None and result[0] == "success")


def follow_job(record: dict, poll_s: float) -> int:
    """Wait until the job leaves the queue; 0 when it finished the run, 1 otherwise."""
    shown, state = None, None
    try:
        while True:
            state = follow_states([record["job_id"]], record.get("scheduler", SLURM)).get(record["job_id"])
            current = state["state"] if state else None
            if current != shown and current is not None:
                print(f"job {record['job_id']}: {current.lower()}", flush=True)
                shown = current
            if current is None or current not in QUEUED_STATES | RUNNING_STATES:
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        raise RunInterrupted(f"stopped following job {record['job_id']}; it goes on (log {record['log']})",
                             130) from None
    if finished(record, state):
        print(f"job {record['job_id']} finished the run")
        return 0
    print(f"job {record['job_id']} ended without finishing the run ({shown.lower() if shown else 'no result'}); "
          f"see {record['log']}; the same command resubmits it, and it resumes", file=sys.stderr)
    return 1


if __name__ == "__main__":
    # Through the imported module, not __main__: the job pickles its function by name (submitit).
    from ace_lora.submit import main as imported_main
    sys.exit(imported_main())
