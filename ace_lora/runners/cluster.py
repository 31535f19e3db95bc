"""SLURM through submitit: the `cluster:` settings, submitting calls as jobs (one job array for many),
the jobs' states, and the requeue at preemption or the time limit.

A job runs the repository's scripts as child processes (ace_lora.runners.scripts), never the training in its
own process: the training knows nothing of SLURM. Before the time limit (and at preemption) SLURM
sends SIGUSR2 to every process of the job; submitit's handler in the job process calls
`RequeueableCall.checkpoint`, which tells the running script to save (SIGTERM, once), waits for it, and
lets submitit requeue the same call: the scripts start again and resume from their checkpoints
(`--resume auto`). `scontrol requeue` and preemption by SIGTERM reach the scripts directly (every process
of the job is signalled), and they save the same way before SLURM kills the job.

States come from `squeue` (pending, running, and finished jobs for MinJobAge), not `sacct`, which needs
the accounting database that small clusters often lack; a job that SLURM no longer knows is judged by
the files it leaves (its done markers, submitit's result file).
"""
import contextlib
import dataclasses
import difflib
import io
import os
import shutil
import signal
import subprocess
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import submitit

from ace_lora.errors import UserInputError
from ace_lora.runners.scripts import SCRIPTS

SLURM = "slurm"
# SLURM job states (squeue %T) grouped as the status tables show them.
QUEUED_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
                 "STOPPED", "SIGNALING", "RESV_DEL_HOLD"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "STAGE_OUT"}


def _setting(default: Any, help: str) -> Any:
    factory = (lambda: list(default)) if isinstance(default, list) else None
    if factory:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class ClusterConfig:
    """What each job asks SLURM for. The one declaration of these settings: the `cluster:` block of a sweep
    YAML (keys as named here) and the flags of ace_lora.submit (--time-min, ...) are read from it."""

    partition: Optional[str] = _setting(None, "SLURM partition (default: the cluster's default one)")
    account: Optional[str] = _setting(None, "SLURM account to charge")
    qos: Optional[str] = _setting(None, "SLURM quality of service")
    constraint: Optional[str] = _setting(None, "node features, e.g. a100")
    time_min: int = _setting(720, "minutes per attempt; a job still running then saves, is requeued and resumes")
    nodes: int = _setting(1, "nodes per job (one training on several nodes: one task per GPU)")
    gpus_per_node: int = _setting(1, "GPUs per node (0 on CPU-only nodes)")
    tasks_per_node: Optional[int] = _setting(None, "processes per node (default: the GPUs per node, at least 1)")
    cpus_per_task: int = _setting(8, "CPU cores per process (data loading)")
    mem_gb: Optional[float] = _setting(None, "memory per node in GB (default: the partition's)")
    parts_at_once: int = _setting(64, "sweeps: most parts running at the same time (the job array's throttle)")
    signal_delay_s: int = _setting(120, "SIGUSR2 this many seconds before the time limit: the time to save")
    max_timeouts: int = _setting(20, "requeues after reaching the time limit before a job is given up")
    setup: List[str] = _setting([], "shell lines run before each job, e.g. 'module load cuda'")

    @property
    def tasks(self) -> int:
        return self.nodes * self.tasks_per_node_or_default

    @property
    def tasks_per_node_or_default(self) -> int:
        return self.tasks_per_node if self.tasks_per_node is not None else max(self.gpus_per_node, 1)


CLUSTER_FIELDS = {field.name: field for field in dataclasses.fields(ClusterConfig)}
POSITIVE = ("time_min", "nodes", "cpus_per_task", "parts_at_once", "tasks_per_node")
NON_NEGATIVE = ("gpus_per_node", "signal_delay_s", "max_timeouts")


def cluster_config(values: Optional[dict], source: str = "cluster") -> ClusterConfig:
    """A ClusterConfig from a mapping (the YAML block), every key and value checked (one-line errors)."""
    values = dict(values or {})
    for key in values:
        if key not in CLUSTER_FIELDS:
            close = difflib.get_close_matches(key, CLUSTER_FIELDS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(CLUSTER_FIELDS)})"
            raise UserInputError(f"{source}: unknown key '{key}'{hint}")
    for key in (*POSITIVE, *NON_NEGATIVE):
        value = values.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key in POSITIVE else 0):
            raise UserInputError(f"{source}: '{key}' must be an integer >= {1 if key in POSITIVE else 0}, "
                                 f"got {value!r}")
    if values.get("mem_gb") is not None and not (isinstance(values["mem_gb"], (int, float)) and values["mem_gb"] > 0):
        raise UserInputError(f"{source}: 'mem_gb' must be a number > 0, got {values['mem_gb']!r}")
    for key in ("partition", "account", "qos", "constraint"):
        if values.get(key) is not None and not isinstance(values[key], str):
            raise UserInputError(f"{source}: '{key}' must be a string, got {values[key]!r}")
    setup = values.get("setup", [])
    if not isinstance(setup, list) or not all(isinstance(line, str) for line in setup):
        raise UserInputError(f"{source}: 'setup' must be a list of shell lines")
    return ClusterConfig(**values)


def check_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise UserInputError("sbatch was not found on PATH: run this on a SLURM login node, or use --launcher local")


def check_resources(config: ClusterConfig) -> None:
    """Ask SLURM whether a job of `config` could ever start (`sbatch --test-only`, nothing submitted): many
    clusters accept a job beyond any node and leave it pending for ever."""
    request = {"partition": config.partition, "account": config.account, "qos": config.qos,
               "constraint": config.constraint, "time": config.time_min, "nodes": config.nodes,
               "ntasks-per-node": config.tasks_per_node_or_default, "cpus-per-task": config.cpus_per_task,
               "gpus-per-node": config.gpus_per_node or None,
               "mem": f"{int(config.mem_gb * 1024)}M" if config.mem_gb else None}
    command = ["sbatch", "--test-only", *[f"--{key}={value}" for key, value in request.items() if value is not None],
               "--wrap", "true"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise sbatch_refusal(done.stderr + done.stdout, "job")


def sbatch_refusal(output: str, what: str) -> UserInputError:
    """sbatch's refusal in one line: its reasons ("sbatch: error: X", "allocation failure: Y"), each once (its
    whole output when it gives none)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    reasons = [_reason(line) for line in lines if _reason(line)]
    return UserInputError(f"sbatch refused the {what}: "
                          f"{'; '.join(dict.fromkeys(reasons or lines or ['no reason given']))}")


def _reason(line: str) -> Optional[str]:
    for mark in ("error:", "allocation failure:"):
        if mark in line:
            return line.split(mark, 1)[1].strip()
    return None


def make_executor(config: ClusterConfig, folder: str, name: str, kind: str = SLURM) -> submitit.AutoExecutor:
    """A submitit executor for `config`; kind "local" is submitit's local executor (tests, no SLURM)."""
    if kind == SLURM:
        check_sbatch()
        check_resources(config)
    executor = submitit.AutoExecutor(folder=os.path.join(folder, "%j"), cluster=kind,
                                     slurm_max_num_timeout=config.max_timeouts)
    executor.update_parameters(
        name=name, timeout_min=config.time_min, nodes=config.nodes,
        tasks_per_node=config.tasks_per_node_or_default, cpus_per_task=config.cpus_per_task,
        gpus_per_node=config.gpus_per_node or None, mem_gb=config.mem_gb,
        slurm_partition=config.partition, slurm_account=config.account, slurm_qos=config.qos,
        slurm_constraint=config.constraint, slurm_array_parallelism=config.parts_at_once,
        slurm_signal_delay_s=config.signal_delay_s, slurm_setup=config.setup or None,
        slurm_additional_parameters={"requeue": True})
    return executor


def submit_calls(executor: submitit.AutoExecutor, calls: Sequence["RequeueableCall"]) -> List[submitit.Job]:
    """Submit `calls` as one job array (one job for one call); sbatch's refusal becomes one line."""
    echoed = io.StringIO()  # submitit echoes sbatch's stderr before raising: it goes into the one line instead
    try:
        with contextlib.redirect_stderr(echoed), executor.batch():
            jobs = [executor.submit(call) for call in calls]
    except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError, OSError) as error:
        raise sbatch_refusal(str(error), "jobs" if len(calls) > 1 else "job") from None
    return jobs


def job_states(job_ids: Iterable[str], kind: str = SLURM) -> Dict[str, Dict[str, str]]:
    """{job id: {"state": SLURM state, "elapsed": time used}} for the jobs the scheduler still knows
    (SLURM: squeue; submitit's local executor: the controller process is alive)."""
    wanted = set(job_ids)
    if not wanted:
        return {}
    if kind != SLURM:
        return {job_id: {"state": "RUNNING", "elapsed": ""} for job_id in wanted if _local_job_running(job_id)}
    try:
        done = subprocess.run(["squeue", "--me", "--noheader", "--array", "--states=all", "--format=%i|%T|%M"],
                              capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise UserInputError("squeue was not found on PATH: look at SLURM jobs from a SLURM login node") from None
    except subprocess.TimeoutExpired:
        raise UserInputError("squeue did not answer within 60 s (a busy controller?): try again later") from None
    if done.returncode != 0:
        raise UserInputError(f"squeue failed: {(done.stderr.strip().splitlines() or ['no message'])[-1]}")
    states = {}
    for line in done.stdout.splitlines():
        job_id, state, elapsed = (line.strip().split("|") + ["", ""])[:3]
        if job_id in wanted:
            states[job_id] = {"state": state, "elapsed": elapsed}
    return states


def follow_states(job_ids: Iterable[str], kind: str = SLURM, tries: int = 5, pause_s: float = 10.0):
    """job_states for a driver that waits for hours: a controller that does not answer is asked again (up to
    `tries` times) before the driver gives up in one line."""
    for attempt in range(tries):
        try:
            return job_states(job_ids, kind)
        except UserInputError:
            if attempt == tries - 1:
                raise
            time.sleep(pause_s)


@contextlib.contextmanager
def held_signals():
    """SIGINT, SIGTERM and SIGHUP held back: a submission and its record happen both or neither."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _local_job_running(job_id: str) -> bool:
    """submitit's local executor: a job id is the pid of its controller process."""
    try:
        os.kill(int(job_id), 0)
    except (ValueError, ProcessLookupError, PermissionError):
        return False
    return True


def job_result(job_folder: str, job_id: str) -> Optional[tuple]:
    """submitit's result of a finished job: ("success", value) or ("error", traceback); None if absent."""
    path = submitit.core.utils.JobPaths(os.path.join(job_folder, "%j"), job_id=job_id).result_pickle
    if not path.exists():
        return None
    try:
        return submitit.core.utils.pickle_load(path)
    except Exception:  # noqa: BLE001 - a half-written result is no result
        return None


def task_env() -> Dict[str, str]:
    """What the job's scripts get on top of its environment: MASTER_ADDR and MASTER_PORT for a job of several
    tasks (from SLURM's node list, a port from the job id, so every task agrees), and OMP_NUM_THREADS = the
    task's cores unless it is set (torch would otherwise start a thread per core of a shared node)."""
    environment = submitit.JobEnvironment()
    env = {}
    if "OMP_NUM_THREADS" not in os.environ and os.environ.get("SLURM_CPUS_PER_TASK"):
        env["OMP_NUM_THREADS"] = os.environ["SLURM_CPUS_PER_TASK"]
    if environment.num_tasks > 1:
        port = 20000 + int(environment.raw_job_id) % 20000
        env.update(MASTER_ADDR=environment.hostnames[0], MASTER_PORT=str(port))
    return env


class RequeueableCall(submitit.helpers.Checkpointable):
    """`function(*args)` as a SLURM job that is requeued, not lost, at preemption and at its time limit."""

    def __init__(self, function: Callable[..., Any], *args: Any):
        self.function, self.args = function, args

    def __call__(self) -> Any:
        return self.function(*self.args)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """In the job process, at SIGUSR2: the running script saves and exits, then the same call is requeued."""
        SCRIPTS.stop_all(signal.SIGTERM)
        SCRIPTS.wait_stopped()
        return super().checkpoint(*args, **kwargs)


def add_cluster_args(group, skip: Sequence[str] = ()) -> None:
    """A flag for each ClusterConfig setting (--time-min, ...), its help and type from the declaration."""
    types = {"time_min": int, "nodes": int, "gpus_per_node": int, "tasks_per_node": int, "cpus_per_task": int,
             "parts_at_once": int, "signal_delay_s": int, "max_timeouts": int, "mem_gb": float}
    for name, field in CLUSTER_FIELDS.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        if name == "setup":
            group.add_argument(flag, nargs="+", default=[], metavar="LINE", help=field.metadata["help"])
        else:
            group.add_argument(flag, type=types.get(name, str), default=field.default, help=field.metadata["help"])


def cluster_from_args(args, skip: Sequence[str] = ()) -> ClusterConfig:
    return cluster_config({name: getattr(args, name) for name in CLUSTER_FIELDS if name not in skip}, "flags")
