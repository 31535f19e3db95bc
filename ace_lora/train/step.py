"""One optimisation step: the schedule, the step itself, and the DDP wrapper it runs under.

`train_step` is the one place where a batch becomes a parameter update.
"""
import inspect
import math
from typing import Iterable, Tuple

import torch
from torch.nn.parallel import DistributedDataParallel

from ace_lora.errors import TrainingDiverged
from ace_lora.model.loss import ContrastiveLoss, gather_batch
from ace_lora.model.model import AceLoRAModel
from ace_lora.runtime import autocast
from ace_lora.train.distributed import DistributedContext, all_ranks_true


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Per-step factor: linear from 0 over `warmup_steps`, then half a cosine down to 0 at `total_steps`."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Every value of every tensor is finite (one device sync)."""
    flags = [torch.isfinite(t).all() for t in tensors]
    return bool(torch.stack(flags).all().item()) if flags else True


def train_step(model, batch, optimizer, scheduler, scaler, *, device: torch.device, precision: str,
               loss_fn: ContrastiveLoss, gather_negatives: bool, context: DistributedContext) -> Tuple[float, float]:
    """One update from one batch (images (B, 3, H, W), token ids (B, L), labels (B, 14)) with `loss_fn`
    (ace_lora.model.loss.create_loss).

    `model` is the AceLoRAModel or its DistributedDataParallel wrapper. With `gather_negatives` in DDP
    the loss is computed over the global batch on every rank (ace_lora.model.loss.gather_batch). A NaN/inf loss
    or gradient on any rank stops every rank before the update (TrainingDiverged), and so does a weight
    that the update made non-finite: the run never continues, or saves, from non-finite weights. With
    fp16 the gradient scaler skips steps with inf gradients itself, so gradients are not checked there.
    Returns (loss, learning rate of this step).
    """
    images, ids, labels = (t.to(device, non_blocking=True) for t in batch)
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, precision):
        image_emb, text_emb, scale, bias = model(images, ids)  # (B, D), (B, D), (), () or None
    labels = labels if loss_fn.uses_labels else None
    if gather_negatives and context.is_distributed:
        image_emb, text_emb, labels = gather_batch(image_emb, text_emb, labels)  # (world * B, D)
    loss = loss_fn(image_emb, text_emb, scale, labels, bias)
    value = loss.item()
    if not all_ranks_true(math.isfinite(value), context):
        raise TrainingDiverged(f"the training loss became {value} (on this or another rank)")
    lr = optimizer.param_groups[0]["lr"]
    scaler.scale(loss).backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not scaler.is_enabled() and not all_ranks_true(all_finite(p.grad for p in params if p.grad is not None),
                                                      context):
        raise TrainingDiverged("a gradient became NaN or infinite (on this or another rank)")
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    if not all_ranks_true(all_finite(params), context):
        raise TrainingDiverged("a trained weight became NaN or infinite in the update (on this or another rank)")
    return value, lr


def wrap_ddp(model: AceLoRAModel, device: torch.device) -> DistributedDataParallel:
    """DDP without per-step buffer broadcasts: every buffer belongs to the frozen backbone.

    Recent torch calls the switch `forward_sync_buffers` (and warns about `broadcast_buffers`); older
    versions know only `broadcast_buffers`.
    """
    no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else "broadcast_buffers")
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   **{no_sync: False})
