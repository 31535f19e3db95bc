"""Throughput of the zero-shot evaluator against a one-image-at-a-time loop (the released scripts' way).

Both score the same generated greyscale JPEGs with the same model, precision and class embeddings
(CheXpert 5x200 protocol), and both are timed end to end: class embeddings, image loading,
preprocessing, encoding, scoring. The report (one JSON object) is written to --output and printed as
the last line of output.

On a tiny model (the tests' one) the evaluator's DataLoader worker start-up dominates its time, so
the speed-up there says little; measure with the real model and enough images.

    python benchmarks/bench_eval.py --model local-dir:/path/biomedclip --checkpoint ACE_LoRA.pt \\
        --images 512 --batch-size 64 --num-workers 8
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ace_lora.data.labels import CHEXPERT_5X200_CLASSES
from ace_lora.errors import UserInputError, main_guard
from ace_lora.params import HelpFormatter, add_config_arg, add_model_args, add_runtime_args, parse_with_config

# torch and the model code are imported inside the functions that use them: --help answers at once.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_config_arg(parser)
    add_model_args(parser)
    parser.add_argument("--checkpoint", help="ACE-LoRA weights (released or training checkpoint); omit for the bare "
                                             "BiomedCLIP baseline")
    parser.add_argument("--images", type=int, default=64, help="number of synthetic images to score")
    parser.add_argument("--image-size", type=int, default=512, help="side of the generated square JPEGs, in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    parser.add_argument("--output", default="results/bench_eval.json",
                        help="JSON file to write the report to (default: results/bench_eval.json)")
    add_runtime_args(parser, batch_size=64)
    return parser


def write_synthetic_set(folder: Path, n_images: int, size: int, seed: int) -> Path:
    """n greyscale JPEGs and a CSV with Path and the five CheXpert 5x200 class columns."""
    rng = np.random.default_rng(seed)
    names, rows = [], []
    for i in range(n_images):
        name = f"image_{i:05d}.jpg"
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(folder / name, quality=90)
        names.append(name)
        rows.append([float(i % 5 == c) for c in range(5)])
    csv = folder / "images.csv"
    pd.concat([pd.DataFrame({"Path": names}), pd.DataFrame(rows, columns=CHEXPERT_5X200_CLASSES)], axis=1).to_csv(
        csv, index=False)
    return csv


def released_style_loop(model, paths, device, precision) -> np.ndarray:
    """Class embeddings once, then one image at a time: load, preprocess, encode, score."""
    import torch

    from ace_lora.data.images import load_image
    from ace_lora.evaluation.tasks import TASKS
    from ace_lora.evaluation.zero_shot import class_embeddings, score, temperature
    from ace_lora.runtime import autocast
    task = TASKS["chexpert"]
    probabilities = []
    with torch.no_grad():
        classes = class_embeddings(model, task, device)  # (C, D)
        scale = temperature(model, "base")
        for path in paths:
            image = model.preprocess(load_image(path)).unsqueeze(0).to(device)  # (1, 3, H, W)
            with autocast(device, precision):
                embedding = model.encode_image(image)  # (1, D)
            probabilities.append(score(embedding.float() @ classes.T, task.scorings[0], scale).cpu())
    return torch.cat(probabilities).numpy()


def timed(fn):
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    value = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return value, time.perf_counter() - start


@main_guard
def main(argv=None) -> int:
    args = parse_with_config(build_parser(), argv)
    if args.images < 1 or args.image_size < 16:
        raise UserInputError("--images must be >= 1 and --image-size >= 16")
    if os.path.isdir(args.output):
        raise UserInputError(f"--output {args.output} is a folder; give a file name")
    from ace_lora.evaluation.zero_shot import evaluate
    from ace_lora.model.factory import load_model_for_eval
    from ace_lora.runtime import runtime_device
    args, device = runtime_device(args)
    model = load_model_for_eval(args.model, args.checkpoint, device=device)
    with tempfile.TemporaryDirectory() as folder:
        csv = write_synthetic_set(Path(folder), args.images, args.image_size, args.seed)
        paths = [str(Path(folder) / name) for name in pd.read_csv(csv)["Path"]]
        released_style_loop(model, paths[:2], device, args.precision)  # warm-up (kernels, allocator, caches)
        loop_probabilities, loop_seconds = timed(lambda: released_style_loop(model, paths, device, args.precision))
        result, engine_seconds = timed(lambda: evaluate(
            model, "chexpert", str(csv), batch_size=args.batch_size, num_workers=args.num_workers, device=device,
            precision=args.precision, n_bootstrap=0, progress=False))
    report = {
        "images": args.images, "image_size": args.image_size, "batch_size": args.batch_size,
        "num_workers": args.num_workers, "device": str(device), "precision": args.precision,
        "loop_images_per_second": args.images / loop_seconds,
        "evaluator_images_per_second": args.images / engine_seconds,
        "speedup": loop_seconds / engine_seconds,
        "max_abs_probability_difference": float(np.abs(result.probabilities - loop_probabilities).max()),
    }
    print(f"batch-size-1 loop: {report['loop_images_per_second']:.1f} images/s ({loop_seconds:.2f} s)")
    print(f"evaluator (batch {args.batch_size}, {args.num_workers} workers): "
          f"{report['evaluator_images_per_second']:.1f} images/s ({engine_seconds:.2f} s)")
    print(f"speed-up: {report['speedup']:.2f}x; max |probability difference|: "
          f"{report['max_abs_probability_difference']:.2e}")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.output}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
