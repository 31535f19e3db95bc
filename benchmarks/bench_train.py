#!/usr/bin/env python3
"""Training speed and memory: ACE-LoRA, LoRA alone (no hypergraph) and full fine-tuning of the same backbone.

- ace: the training step of train.py (ace_lora.train.step.train_step; LoRA q/k/v in all layers, ACE-HGNN on
  both towers, the model's loss: label-guided InfoNCE, or the sigmoid loss for a SigLIP model).
- lora: the same step without the two hypergraphs (--apply-gnn-encoders none): 1 - lora/ace is the share of the
  step time (and of the peak memory) the hypergraphs take.
- full: every backbone parameter trainable, plain CLIP loss on the model's pooled embeddings.
All see the same random images and the same tokenized report (padded to the full context, as in training). Each
variant runs in its own fresh process, so that peak memory is its own: CUDA reports
torch.cuda.max_memory_allocated; the CPU reports the process's peak resident set size (ru_maxrss: weights,
Python runtime and the allocator's cache included, so a share of it understates the hypergraphs'). Step time
is the median over --steps timed steps after --warmup-steps untimed ones.

--architecture medsiglip-448 or plip builds that model with random weights in memory (ace_lora.model.architectures;
no download), --image-size runs it at another resolution (MedSigLIP's towers at 224 pixels: 256 patches instead of
1024). The last line printed is one JSON object: <variant>_step_s and <variant>_peak_mb for each variant run,
ratio = ace/full, hgnn_time_share and hgnn_memory_share = 1 - lora/ace, and hgnn_s: the two hypergraphs alone
(forward and backward on tokens of the step's shapes), with hgnn_time_share_alone = hgnn_s / ace_step_s (steadier
than the difference of two noisy step times).
Example: python benchmarks/bench_train.py --architecture medsiglip-448 --variants ace lora --batch-size 2
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

ARCHITECTURES = ("medsiglip-448", "plip")  # ace_lora.model.architectures.ARCHITECTURES (torch-free here)

# torch and the model code are imported inside the functions that use them: --help answers at once,
# and the parent process, which only starts one process per variant, loads no model.

VARIANTS = ("ace", "lora", "full")
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
    if hasattr(clip, "config"):  # a transformers model
        return clip.config.vision_config.image_size
    size = clip.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def backbone_of(args):
    from ace_lora.model.architectures import random_backbone
    from ace_lora.model.backbone import load_backbone
    return random_backbone(args.architecture, args.image_size) if args.architecture else load_backbone(args.model)


def ace_steps(args, device, hypergraph: bool = True):
    """A callable that runs one training step of ACE-LoRA (or of LoRA alone, without the hypergraphs)."""
    import torch

    from ace_lora.model.config import AceLoRAConfig
    from ace_lora.model.loss import create_loss
    from ace_lora.model.model import AceLoRAModel
    from ace_lora.train.distributed import single_process
    from ace_lora.train.step import train_step, warmup_cosine_schedule
    config = AceLoRAConfig(apply_gnn_encoders="both" if hypergraph else "none")
    model = AceLoRAModel(backbone_of(args), config).to(device).train()
    loss = create_loss(None, has_logit_bias=model.logit_bias is not None)
    model.use_loss(loss)
    batch = synthetic_batch(image_size(model.clip), model.tokenize, args.batch_size)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4, weight_decay=1e-2)
    scheduler = warmup_cosine_schedule(optimizer, 0, 10_000)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    context = single_process(str(device))
    step = lambda: train_step(model, batch, optimizer, scheduler, scaler, device=device,  # noqa: E731
                              precision=args.precision, loss_fn=loss, gather_negatives=False, context=context)
    step.hypergraphs = hypergraphs_step(model, batch, device)
    return step


def hypergraphs_step(model, batch, device):
    """A callable that runs the two hypergraphs alone, forward and backward, on tokens of the step's shapes
    (B, N, D) and (B, L, D)."""
    import torch
    images, ids, _ = batch
    with torch.no_grad():  # the shapes, once
        shapes = [(hgnn, tokens.shape[1:], attention.shape[1:])
                  for hgnn, (tokens, attention) in ((model.image_hgnn, model.image_tokens(images[:1].to(device))),
                                                    (model.text_hgnn, model.text_tokens(ids[:1].to(device))))]

    def run() -> None:
        for hgnn, (n, d), (m,) in shapes:
            x = torch.nn.functional.normalize(torch.randn(len(images), n, d, device=device), dim=-1).requires_grad_()
            hgnn(x, torch.randn(len(images), m, device=device)).sum().backward()
    return run


def full_steps(args, device):
    """A callable that runs one full fine-tuning step."""
    import torch

    from ace_lora.model.loss import label_guided_info_nce
    from ace_lora.runtime import autocast
    backbone = backbone_of(args)
    clip = backbone.clip.to(device).train()
    clip.requires_grad_(True)
    images, ids, _ = synthetic_batch(image_size(clip), backbone.tokenizer, args.batch_size)
    images, ids = images.to(device), ids.to(device)
    optimizer = torch.optim.AdamW(clip.parameters(), lr=1e-5, weight_decay=1e-2)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, args.precision):
            if hasattr(clip, "config"):  # a transformers model: its own pooled, projected embeddings
                out = clip(input_ids=ids, pixel_values=images)
                image_emb, text_emb, scale = out.image_embeds, out.text_embeds, clip.logit_scale.exp()
            else:
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
    step = full_steps(args, device) if args.variant == "full" else ace_steps(args, device, args.variant == "ace")
    times = [timed(step, device) for _ in range(args.warmup_steps + args.steps)][args.warmup_steps:]
    step_s = statistics.median(times)
    result = {"variant": args.variant, "step_s": step_s, "images_per_s": args.batch_size / step_s,
              "peak_mb": peak_memory_mb(device)}
    if args.variant == "ace":  # the hypergraphs timed alone, as a second, less noisy measure of their share
        result["hgnn_s"] = statistics.median(timed(step.hypergraphs, device) for _ in range(max(3, args.steps)))
    return result


def timed(work, device) -> float:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def run_in_subprocess(args, variant: str) -> dict:
    model = ["--architecture", args.architecture] if args.architecture else ["--model", args.model]
    command = [sys.executable, os.path.abspath(__file__), *model, "--image-size", str(args.image_size or 0),
               "--batch-size", str(args.batch_size),
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
    parser.add_argument("--architecture", choices=ARCHITECTURES,
                        help="instead of --model: this medical model's architecture with random weights, built in "
                             "memory (ace_lora.model.architectures)")
    parser.add_argument("--image-size", type=int, default=0,
                        help="with --architecture: the image size (0: the architecture's own)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="the variants to run, each in its own process")
    add_device_args(parser)
    parser.add_argument("--variant", choices=VARIANTS,
                        help="run only this variant in this process and print its JSON (used internally)")
    args = parse_with_config(parser, argv)
    if args.batch_size < 2 or args.steps < 1:
        raise UserInputError("--batch-size must be >= 2 (contrastive loss) and --steps >= 1")
    if args.image_size and not args.architecture:
        raise UserInputError("--image-size goes with --architecture")
    from ace_lora.io import with_values
    from ace_lora.runtime import resolve_device, resolve_precision
    device = resolve_device(args.device)
    args = with_values(args, device=str(device), precision=resolve_precision(args.precision, device))
    if args.variant:
        print(json.dumps(run_variant(args)))
        return 0
    results = {variant: run_in_subprocess(args, variant) for variant in args.variants}
    for r in results.values():
        print(f"{r['variant']:>4}: {r['step_s']:.3f} s/step, {r['images_per_s']:.1f} images/s, "
              f"peak {r['peak_mb']:.0f} MB")
    print(json.dumps(summary(results)))
    return 0


def summary(results: dict) -> dict:
    """Each variant's step time and peak memory; ace/full; the hypergraphs' shares (1 - lora/ace)."""
    out = {}
    for variant, r in results.items():
        out[f"{variant}_step_s"], out[f"{variant}_peak_mb"] = r["step_s"], r["peak_mb"]
    if "ace" in results and "full" in results:
        out["ratio"] = results["ace"]["step_s"] / results["full"]["step_s"]
    if "ace" in results:
        out["hgnn_s"] = results["ace"]["hgnn_s"]
        out["hgnn_time_share_alone"] = results["ace"]["hgnn_s"] / results["ace"]["step_s"]
    if "ace" in results and "lora" in results:
        out["hgnn_time_share"] = 1 - results["lora"]["step_s"] / results["ace"]["step_s"]
        out["hgnn_memory_share"] = 1 - results["lora"]["peak_mb"] / results["ace"]["peak_mb"]
    return out


if __name__ == "__main__":
    sys.exit(main())
