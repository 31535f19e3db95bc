"""Process groups for multi-GPU / multi-node training (torchrun or SLURM), and a single-process stand-in.

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT. Under `srun` without torchrun,
SLURM_PROCID, SLURM_LOCALID and SLURM_STEP_NUM_TASKS give the same information (read only inside an srun
step: in an `salloc -n 4` or batch shell SLURM_NTASKS counts tasks that no one started); MASTER_ADDR and
MASTER_PORT must then be exported by the job script (ace_lora.submit does). NCCL is used on CUDA, gloo on
CPU. Rank 0 logs and writes files.
"""
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.distributed as dist

from ace_lora.errors import UserInputError
from ace_lora.runtime import resolve_device

# Generous: rank 0 runs the zero-shot validation alone while the other ranks wait at a barrier.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=2)


@dataclass
class DistributedContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def world_from_env() -> Optional[Tuple[int, int, int]]:
    """(rank, local rank, world size) from torchrun's or SLURM's variables; None outside a launcher."""
    env = os.environ
    if "WORLD_SIZE" in env and "RANK" in env:
        return int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"])
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:  # a task of an srun step, not an salloc / sbatch shell
        tasks = env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1"))
        return int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)), int(tasks)
    return None


def single_process(device: str = "auto") -> DistributedContext:
    return DistributedContext(rank=0, local_rank=0, world_size=1, device=resolve_device(device))


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the process group described by the environment; a single process when there is none."""
    world = world_from_env()
    if world is None or world[2] == 1:
        return single_process(device)
    rank, local_rank, world_size = world
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise UserInputError(f"{' and '.join(missing)} not set: launch with torchrun, or export them in the SLURM "
                             "job script (docs/training.md, several GPUs)")
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserInputError(f"local rank {local_rank} but only {torch.cuda.device_count()} GPU(s) on this node; "
                                 "--nproc_per_node must not exceed the GPU count")
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                            timeout=PROCESS_GROUP_TIMEOUT)
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=resolved)


def shutdown(context: DistributedContext) -> None:
    if context.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    if context.is_distributed:
        dist.barrier()


def all_ranks_true(flag: bool, context: DistributedContext) -> bool:
    """True only if `flag` is True on every rank (so all ranks take the same branch)."""
    if not context.is_distributed:
        return flag
    value = torch.tensor(1.0 if flag else 0.0, device=context.device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def sum_over_ranks(values: List[float], context: DistributedContext) -> List[float]:
    if not context.is_distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_objects(obj: Any, context: DistributedContext) -> List[Any]:
    """Every rank's `obj`, in rank order (a list of one outside DDP)."""
    if not context.is_distributed:
        return [obj]
    out: List[Any] = [None] * context.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, context: DistributedContext) -> Any:
    """Rank 0's `obj` on every rank."""
    if not context.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class StoppedByMainRank(UserInputError):
    """Raised on ranks > 0 when the work that rank 0 ran alone failed (rank 0 raises the real error)."""


def run_on_main(work: Callable[[], Any], context: DistributedContext, what: str) -> Any:
    """`work()` on rank 0 only; every rank then learns whether it succeeded, so a failure ends every
    rank at once instead of leaving the others waiting in the next collective until the timeout.

    Returns work's result on rank 0 and None elsewhere. On failure rank 0 re-raises the error and
    the other ranks raise StoppedByMainRank. Collective: call it on every rank.
    """
    result, error = None, None
    if context.is_main:
        try:
            result = work()
        except Exception as err:  # noqa: BLE001 - re-raised below, after the other ranks know
            error = err
    if not all_ranks_true(error is None, context):
        if error is not None:
            raise error
        raise StoppedByMainRank(f"rank {context.rank}: stopping because {what} failed on rank 0 (see its error)")
    return result
