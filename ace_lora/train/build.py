"""Everything a training run computes with, built from its settings: the model and its loss, the data and its
loader, the optimiser, schedule and gradient scaler (`build_training`). The loop (ace_lora.train.loop) only uses
them."""
import argparse
import random
from dataclasses import dataclass

import numpy as np
import torch

from ace_lora.data.train_dataset import (
    ImageReportDataset,
    TokenizingCollate,
    TrainingLoader,
    build_training_dataset,
    steps_per_epoch,
)
from ace_lora.errors import UserInputError
from ace_lora.model.checkpoint import init_trainables_from
from ace_lora.model.config import AceLoRAConfig, config_from_args
from ace_lora.model.factory import build_model
from ace_lora.model.loss import ContrastiveLoss, create_loss
from ace_lora.model.model import AceLoRAModel
from ace_lora.train.distributed import DistributedContext, run_on_main
from ace_lora.train.run_state import AUTO
from ace_lora.train.step import warmup_cosine_schedule, wrap_ddp


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also every CUDA device


@dataclass
class TrainingParts:
    settings: argparse.Namespace  # the flags with what they resolved to (--loss auto: the loss used)
    config: AceLoRAConfig
    raw_model: AceLoRAModel
    model: torch.nn.Module  # raw_model, or its DDP wrapper
    loss: ContrastiveLoss
    dataset: ImageReportDataset
    loader: TrainingLoader
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler


def build_training(args: argparse.Namespace, context: DistributedContext) -> TrainingParts:
    """Seeds (seed + rank), then the model (--init-from's tensors copied in), the loss that follows it, the
    training data and its loader, AdamW with the warm-up + cosine schedule; fails on a data set smaller than one
    global batch."""
    seed_everything(args.seed + context.rank)
    config = config_from_args(args)
    raw_model = build_model(args.model, config, context.device)
    loss = create_loss(None if args.loss == AUTO else args.loss, has_logit_bias=raw_model.logit_bias is not None)
    raw_model.use_loss(loss)
    if args.init_from:
        init_trainables_from(raw_model, args.init_from)  # trainables only: a fresh optimiser and schedule
    model = wrap_ddp(raw_model, context.device) if context.is_distributed else raw_model

    dataset = build_training_dataset(
        args.train_csv, raw_model.preprocess, args.data_root, args.label_csv, args.split, args.uncertain_policy,
        quiet=not context.is_main, fast_decode=args.fast_decode, image_cache=args.image_cache,
        image_cache_rebuild=args.image_cache_rebuild, num_workers=args.num_workers, skip_unreadable=None,
        progress=args.progress, run_on_main=lambda work: run_on_main(work, context, "building the image cache"))
    loader = TrainingLoader(dataset, TokenizingCollate(raw_model.tokenizer), batch_size=args.batch_size,
                            seed=args.seed, rank=context.rank, world_size=context.world_size,
                            num_workers=args.num_workers, pin_memory=context.device.type == "cuda")
    per_epoch = steps_per_epoch(len(dataset), args.batch_size, context.world_size)
    if per_epoch == 0:
        raise UserInputError(f"{args.train_csv}: {len(dataset)} training rows, fewer than one global batch "
                             f"({args.batch_size} x {context.world_size} processes); lower --batch-size")

    optimizer = torch.optim.AdamW(raw_model.trainable_parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                  betas=tuple(args.betas))
    scheduler = warmup_cosine_schedule(optimizer, round(args.warmup_epochs * per_epoch), per_epoch * args.epochs)
    scaler = torch.amp.GradScaler(context.device.type, enabled=args.precision == "fp16")
    settings = argparse.Namespace(**{**vars(args), "loss": loss.name})  # the run records what trained
    return TrainingParts(settings, config, raw_model, model, loss, dataset, loader, per_epoch, optimizer, scheduler,
                         scaler)
