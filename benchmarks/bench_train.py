#!/usr/bin/env python3
"""Training speed and memory: ACE-LoRA against full fine-tuning of the same backbone, same batch.

- ACE-LoRA: the training step of train.py (ace_lora.train.step.train_step; LoRA q/k/v in all layers,
  ACE-HGNN on both towers, label-guided loss, AdamW over the 969,217 trainable numbers).
- Full fine-tuning: every backbone parameter trainable, plain CLIP loss on open_clip's pooled
  embeddings, AdamW over all of them.
Both see the same random images and the same tokenized report (the context is padded to its full
length, as in training). Each variant runs in its own fresh process, so that peak memory is its own:
CUDA reports torch.cuda.max_memory_allocated; the CPU reports the process's peak resident set size
(resource.getrusage ru_maxrss, which includes the weights, the Python runtime and the allocator's cache).
Step time is the median over --steps timed steps after --warmup-steps untimed ones. Both variants use
torch.optim.AdamW with its default implementation, as train.py does.

The last line printed is one JSON object:
  {"ace_step_s": ..., "full_step_s": ..., "ratio": ace/full, "ace_peak_mb": ..., "full_peak_mb": ...}
Example: python benchmarks/bench_train.py --model local-dir:/path/to/biomedclip --batch-size 8 --steps 5
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from ace_lora.errors import UserInputError, main_guard
from ace_lora.params import HelpFormatter, add_config_arg, add_device_args, add_model_args, parse_with_config

# torch and the model code are imported inside the functions that use them: --help answers at once,
# and the parent process, which only starts one process per variant, loads no model.

VARIANTS = ("ace", "full")
REPORT = ("Heart size is normal. The mediastinal and hilar contours are unremarkable. There is mild pulmonary "
          "edema with small bilateral pleural effusions and bibasilar atelectasis. No pneumothorax. Support "
          "devices are unchanged in position. Impression: mild edema, small effusions, atelectasis.")


def synthetic_batch(size: int, tokenize, batch_size: int):
    import torch
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, size, size, generator=generator)  # (B, 3, H, W)
    ids = tokenize([REPORT] * batch_size)  # (B, L)
    labels = torch.randint(0, 2, (batch_size, 14), generator=generator).float()
    return images, ids, labels


def image_size(clip) -> int:
    size = clip.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def ace_steps(args, device):
    """A callable that runs one ACE-LoRA training step."""
    import torch

    from ace_lora.model.factory import build_model
    from ace_lora.model.loss import create_loss
    from ace_lora.train.distributed import single_process
    from ace_lora.train.step import train_step, warmup_cosine_schedule
    model = build_model(args.model, device=device).train()
    batch = synthetic_batch(image_size(model.clip), model.tokenize, args.batch_size)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4, weight_decay=1e-2)
    scheduler = warmup_cosine_schedule(optimizer, 0, 10_000)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    context = single_process(str(device))
    return lambda: train_step(model, batch, optimizer, scheduler, scaler, device=device, precision=args.precision,
                              loss_fn=create_loss("label_guided"), gather_negatives=False, context=context)


def full_steps(args, device):
    """A callable that runs one full fine-tuning step."""
    import torch

    from ace_lora.model.backbone import load_backbone
    from ace_lora.model.loss import label_guided_info_nce
    from ace_lora.runtime import autocast
    backbone = load_backbone(args.model)
    clip = backbone.clip.to(device).train()
    clip.requires_grad_(True)
    images, ids, _ = synthetic_batch(image_size(clip), backbone.tokenizer, args.batch_size)
    images, ids = images.to(device), ids.to(device)
    optimizer = torch.optim.AdamW(clip.parameters(), lr=1e-5, weight_decay=1e-2)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, args.precision):
            out = clip(images, ids)
        image_emb, text_emb, scale = ((out["image_features"], out["text_features"], out["logit_scale"])
                                      if isinstance(out, dict) else out[:3])
        loss = label_guided_info_nce(image_emb, text_emb, scale, None)
        loss.backward()
        optimizer.step()
        return loss.item()
    return step


def peak_memory_mb(device) -> float:
    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def run_variant(args) -> dict:
    """Time one variant in this process."""
    import torch
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    step = ace_steps(args, device) if args.variant == "ace" else full_steps(args, device)
    times = []
    for i in range(args.warmup_steps + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= args.warmup_steps:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    return {"variant": args.variant, "step_s": step_s, "images_per_s": args.batch_size / step_s,
            "peak_mb": peak_memory_mb(device)}


def run_in_subprocess(args, variant: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--model", args.model, "--batch-size", str(args.batch_size),
               "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps), "--device", args.device,
               "--precision", args.precision, "--threads", str(args.threads), "--variant", variant]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise UserInputError(f"the {variant} benchmark failed: {lines[-1] if lines else 'no output'}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@main_guard
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_config_arg(parser)
    add_model_args(parser)
    parser.add_argument("--batch-size", type=int, default=8, help="images (and reports) per step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (the median is reported)")
    parser.add_argument("--warmup-steps", type=int, default=1, help="untimed steps first (allocations, caches)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads per variant process (0: torch's default); on a shared machine 1 "
                             "gives steadier timings")
    add_device_args(parser)
    parser.add_argument("--variant", choices=VARIANTS,
                        help="run only this variant in this process and print its JSON (used internally)")
    args = parse_with_config(parser, argv)
    if args.batch_size < 2 or args.steps < 1:
        raise UserInputError("--batch-size must be >= 2 (contrastive loss) and --steps >= 1")
    from ace_lora.runtime import resolve_device, resolve_precision
    device = resolve_device(args.device)
    args.device, args.precision = str(device), resolve_precision(args.precision, device)
    if args.variant:
        print(json.dumps(run_variant(args)))
        return 0
    results = {variant: run_in_subprocess(args, variant) for variant in VARIANTS}
    for r in results.values():
        print(f"{r['variant']:>4}: {r['step_s']:.3f} s/step, {r['images_per_s']:.1f} images/s, "
              f"peak {r['peak_mb']:.0f} MB")
    ace, full = results["ace"], results["full"]
    print(json.dumps({"ace_step_s": ace["step_s"], "full_step_s": full["step_s"],
                      "ratio": ace["step_s"] / full["step_s"], "ace_peak_mb": ace["peak_mb"],
                      "full_peak_mb": full["peak_mb"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
