"""The training loop shared by the segmentation decoder and the detector: a head trained on cached
frozen features with AdamW and a cosine schedule, validated every epoch, stopped early on the
validation score; the best epoch's weights are returned. Deterministic on CPU for a given seed."""
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List

import torch
from torch import nn
from tqdm import tqdm

from ace_lora.runtime import autocast


@dataclass
class FitSettings:
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    patience: int  # epochs without a better validation score before stopping
    seed: int
    device: torch.device
    precision: str = "fp32"
    progress: bool = True


@dataclass
class FitResult:
    best_state: Dict[str, torch.Tensor]
    best_epoch: int  # 0 = the untrained head (no epoch improved on it, or epochs == 0)
    best_score: float
    epochs_run: int
    records: List[dict] = field(default_factory=list)  # per epoch: epoch, loss, lr, val_score
    train_seconds: float = 0.0  # head training only (features come from the cache)
    images_seen: int = 0

    @property
    def train_images_per_second(self) -> float:
        return self.images_seen / self.train_seconds if self.train_seconds > 0 else math.nan


def fit_head(head: nn.Module, n_train: int, batch_loss: Callable[[nn.Module, torch.Tensor], torch.Tensor],
             validate: Callable[[nn.Module], float], settings: FitSettings) -> FitResult:
    """Train `head` on `n_train` cached items; returns the best validation epoch's state.

    batch_loss(head, indices (B,)) -> scalar loss of the training items `indices` (head in train mode).
    validate(head) -> validation score, higher is better (head in eval mode, under no_grad).
    The untrained head is validated first (epoch 0), so a head that never improves is reported as such.
    """
    head.to(settings.device)
    optimizer = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(n_train / settings.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, settings.epochs * steps_per_epoch))
    generator = torch.Generator().manual_seed(settings.seed)
    scaler = torch.amp.GradScaler(settings.device.type, enabled=settings.precision == "fp16")  # fp16 needs loss scaling

    def score() -> float:
        head.eval()
        with torch.no_grad(), autocast(settings.device, settings.precision):
            return float(validate(head))

    best_score = score()
    result = FitResult(copy.deepcopy(head.state_dict()), 0, best_score, 0, [{"epoch": 0, "val_score": best_score}])
    stale = 0
    bar = tqdm(range(1, settings.epochs + 1), desc="training head", unit="epoch", disable=not settings.progress)
    for epoch in bar:
        head.train()
        start, total = time.perf_counter(), 0.0
        for indices in torch.randperm(n_train, generator=generator).split(settings.batch_size):
            with autocast(settings.device, settings.precision):
                loss = batch_loss(head, indices)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total += float(loss.detach()) * len(indices)
        if settings.device.type == "cuda":
            torch.cuda.synchronize(settings.device)
        result.train_seconds += time.perf_counter() - start
        result.images_seen += n_train
        val_score = score()
        result.records.append({"epoch": epoch, "loss": total / n_train, "lr": scheduler.get_last_lr()[0],
                               "val_score": val_score})
        result.epochs_run = epoch
        bar.set_postfix(loss=f"{total / n_train:.4f}", val=f"{val_score:.4f}", best=f"{result.best_score:.4f}")
        if val_score > result.best_score:
            result.best_score, result.best_epoch, stale = val_score, epoch, 0
            result.best_state = copy.deepcopy(head.state_dict())
        else:
            stale += 1
            if stale >= settings.patience:
                break
    head.load_state_dict(result.best_state)
    head.eval()
    return result
