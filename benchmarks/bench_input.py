#!/usr/bin/env python3
"""Input-pipeline speed per CPU core: the released decode path, this project's on-the-fly path, the image
cache (reading and building) and the optional fast (DCT draft) decode, on images of MIMIC-CXR's and
RSNA's formats generated here.

- release: PIL open, convert RGB, torchvision Resize((S, S), bicubic), ToTensor, Normalize (the released
  training); for DICOM, pydicom's pixel_array through the same steps (the released RSNA scripts).
- project: the training transform's worker half (data/transforms.py): the one image loader, greyscale kept
  as one channel through the resize, uint8 out; the model normalises on its device. Its tensors, once
  normalised, are checked to equal the released ones exactly (`identical`).
- cache: batches of --batch-size read from an image cache of those images to device-ready uint8 (the
  build is timed too, on one core: `cache_build_img_s`).
- fast decode: JPEGs decoded at the smallest DCT scale of at least 2S (PIL draft), with the largest and
  mean absolute difference of its uint8 pixels to the exact ones.

Everything runs in this process on one thread (torch.set_num_threads(1)): per-core figures; N DataLoader
workers give about N times as much. The last line printed is the JSON report, also written to --output.

    python benchmarks/bench_input.py --images 16 --dicoms 8
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from ace_lora.errors import UserInputError, main_guard
from ace_lora.io import write_json
from ace_lora.params import HelpFormatter, add_config_arg, parse_with_config

# BiomedCLIP's (OpenAI CLIP's) normalisation; the benchmark needs no model.
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
MIN_SECONDS = 1.0  # each cache-read measurement repeats passes until it has run this long


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_config_arg(parser)
    parser.add_argument("--images", type=int, default=16, help="MIMIC-size greyscale JPEGs to generate")
    parser.add_argument("--jpeg-size", default="2544x3056", help="their W x H (MIMIC-CXR-JPG's typical size)")
    parser.add_argument("--quality", type=int, default=95, help="their JPEG quality")
    parser.add_argument("--dicoms", type=int, default=8, help="8-bit monochrome DICOMs to generate (RSNA's format)")
    parser.add_argument("--dicom-size", type=int, default=1024, help="their side, in pixels")
    parser.add_argument("--size", type=int, default=224, help="the model's input side S")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch read from the cache")
    parser.add_argument("--repeats", type=int, default=2,
                        help="passes over the images per decode path, after an untimed warm-up image; the fastest "
                             "pass counts (the usual guard against a busy machine)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    parser.add_argument("--keep-images", metavar="DIR",
                        help="write the images and a training CSV (train.csv) to DIR and keep them (e.g. for "
                             "benchmarks/gpu_check.sh) instead of a temporary folder")
    parser.add_argument("--write-only", action="store_true",
                        help="with --keep-images: only write the images and train.csv (a training set for "
                             "benchmarks/gpu_check.sh), measure nothing")
    parser.add_argument("--processes", type=int, default=1, help="processes that write the images")
    parser.add_argument("--output", default="results/bench_input.json", help="JSON file for the report")
    return parser


def xray_like(rng, width: int, height: int) -> np.ndarray:
    """A smooth greyscale image with fine noise: compresses and decodes like a radiograph, not like noise."""
    from PIL import Image
    coarse = rng.integers(40, 220, (12, 10), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.float32)
    return np.clip(smooth + rng.normal(0, 6, (height, width)), 0, 255).astype(np.uint8)


def _write_jpeg(job) -> str:
    from PIL import Image
    path, seed, width, height, quality = job
    Image.fromarray(xray_like(np.random.default_rng(seed), width, height)).save(path, quality=quality)
    return path


def write_images(folder: str, args, width: int, height: int) -> tuple:
    """The JPEGs (written by --processes processes), the DICOMs, and train.csv listing the JPEGs."""
    from multiprocessing import Pool

    from ace_lora.data.labels import CHEXPERT_LABELS
    from ace_lora.data.synthetic import write_dicom
    jobs = [(os.path.join(folder, f"mimic_{i:04d}.jpg"), args.seed * 1_000_003 + i, width, height, args.quality)
            for i in range(args.images)]
    if args.processes > 1:
        with Pool(args.processes) as pool:
            jpegs = pool.map(_write_jpeg, jobs)
    else:
        jpegs = [_write_jpeg(job) for job in jobs]
    rng = np.random.default_rng(args.seed)
    dicoms = [write_dicom(os.path.join(folder, f"rsna_{i:04d}.dcm"), xray_like(rng, args.dicom_size, args.dicom_size))
              for i in range(args.dicoms)]
    with open(os.path.join(folder, "train.csv"), "w", encoding="utf-8") as f:
        f.write(",".join(["image_path", "report", *CHEXPERT_LABELS]) + "\n")
        for i, path in enumerate(jpegs):
            labels = ["1" if (i + c) % 5 == 0 else "0" for c in range(len(CHEXPERT_LABELS))]
            f.write(",".join([os.path.basename(path), "no acute cardiopulmonary process", *labels]) + "\n")
    return jpegs, dicoms


def per_second(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def fastest_pass(decode, n: int, repeats: int):
    """(outputs, seconds of the fastest of `repeats` passes of decode(i) over i < n), after one untimed call."""
    decode(0)
    best, outputs = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = [decode(i) for i in range(n)]
        best = min(best, time.perf_counter() - start)
    return outputs, best


def measure(paths, args) -> dict:
    """The figures of one image format."""
    import pydicom
    import torch
    from PIL import Image
    from torchvision import transforms as T

    from ace_lora.data import image_cache
    from ace_lora.data.images import is_dicom
    from ace_lora.data.transforms import InputSpec, PixelTransform, stack_pixels, train_steps

    size = args.size
    released = T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                          T.Normalize(MEAN, STD)])

    def release_open(path):
        if is_dicom(path):
            return Image.fromarray(pydicom.dcmread(path).pixel_array).convert("RGB")
        return Image.open(path).convert("RGB")

    reference, release_s = fastest_pass(lambda i: released(release_open(paths[i])), len(paths), args.repeats)
    spec, transform = InputSpec(size, MEAN, STD), PixelTransform("train", size, train_steps(size))
    decoded = image_cache.DecodedImages(paths, transform)
    pixels, project_s = fastest_pass(decoded.__getitem__, len(paths), args.repeats)
    identical = all(torch.equal(spec.normalise(p[None])[0], r) for p, r in zip(pixels, reference))

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        image_cache.build_cache(folder, paths, transform, progress=False)
        build_s = time.perf_counter() - start
        cached = image_cache.open_cache(folder, paths, transform)
        read, passes, start = 0, 0, time.perf_counter()
        while time.perf_counter() - start < MIN_SECONDS or passes == 0:
            for first in range(0, len(cached), args.batch_size):
                batch = stack_pixels([cached[i] for i in range(first, min(first + args.batch_size, len(cached)))])
                read += len(batch)
            passes += 1
        cache_s = time.perf_counter() - start
        identical = identical and all(torch.equal(cached[i], p) for i, p in enumerate(pixels))

    report = {"images": len(paths), "release_img_s": per_second(len(paths), release_s),
              "project_img_s": per_second(len(paths), project_s), "cache_img_s": per_second(read, cache_s),
              "cache_build_img_s": per_second(len(paths), build_s), "identical": identical}
    if not is_dicom(paths[0]):
        fast = image_cache.DecodedImages(paths, transform, fast_decode=True)
        drafted, fast_s = fastest_pass(fast.__getitem__, len(paths), args.repeats)
        report["fast_decode_img_s"] = per_second(len(paths), fast_s)
        differences = [(d.int() - p.int()).abs() for d, p in zip(drafted, pixels)]
        report["fast_decode_max_abs_diff"] = int(max(d.max() for d in differences))
        report["fast_decode_mean_abs_diff"] = float(np.mean([d.float().mean() for d in differences]))
    for key in [k for k in report if k.endswith("_img_s") and k != "release_img_s"]:
        report[key.replace("_img_s", "_vs_release")] = report[key] / report["release_img_s"]
    return report


def run(args, width: int, height: int) -> dict:
    """Write the images, measure each format; the report."""
    import torch
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep_images or scratch
        os.makedirs(folder, exist_ok=True)
        print(f"writing {args.images} {width}x{height} JPEGs and {args.dicoms} {args.dicom_size}x{args.dicom_size} "
              f"DICOMs to {folder}", flush=True)
        jpegs, dicoms = write_images(folder, args, width, height)
        if args.write_only:
            return {"written": len(jpegs) + len(dicoms), "folder": folder}
        report = {"size": args.size, "jpeg_size": f"{width}x{height}", "quality": args.quality,
                  "torch_threads": torch.get_num_threads(), **measure(jpegs, args)}
        if dicoms:
            report["dicom"] = {"dicom_size": args.dicom_size, **measure(dicoms, args)}
    return report


@main_guard
def main(argv=None) -> int:
    args = parse_with_config(build_parser(), argv)
    if min(args.images, args.size, args.batch_size, args.processes, args.repeats) < 1 or args.dicoms < 0:
        raise UserInputError("--images, --size, --batch-size, --processes and --repeats must be >= 1, --dicoms >= 0")
    if args.write_only and not args.keep_images:
        raise UserInputError("--write-only needs --keep-images DIR (where to write)")
    try:
        width, height = (int(v) for v in args.jpeg_size.lower().split("x"))
    except ValueError:
        raise UserInputError(f"--jpeg-size must be WxH, e.g. 2544x3056, not {args.jpeg_size!r}") from None
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = run(args, width, height)
    finally:
        torch.set_num_threads(threads)  # main() may run in a process that goes on (the tests)
    if args.write_only:
        print(json.dumps(report))
        return 0
    print(f"per core: release {report['release_img_s']:.1f} img/s, project {report['project_img_s']:.1f} img/s "
          f"({report['project_vs_release']:.2f}x), cache {report['cache_img_s']:.0f} img/s "
          f"({report['cache_vs_release']:.0f}x), cache build {report['cache_build_img_s']:.1f} img/s, fast decode "
          f"{report['fast_decode_img_s']:.1f} img/s (max |d| {report['fast_decode_max_abs_diff']})")
    write_json(args.output, report)  # atomic: a killed benchmark never leaves half a report
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
