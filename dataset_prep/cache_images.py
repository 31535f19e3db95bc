#!/usr/bin/env python3
"""Cache the images of a CSV once, as the exact uint8 pixels of the model's input transform, for training
(`train.py --image-cache DIR`) and evaluation (`--image-cache DIR` of the zero-shot scripts and predict.py).

Examples:
  python dataset_prep/cache_images.py --csv mimic_train.csv --transform train --output /scratch/mimic_cache \
      --model local-dir:/models/biomedclip --num-workers 16
  python dataset_prep/cache_images.py --csv rsna_test.csv --task rsna --transform eval --output /scratch/rsna_eval

Results from the cache equal those from the files bit for bit. Disk: S x S bytes per greyscale image (224 x 224
= 50 kB; x the CSV's rows: under 19 GB for MIMIC-CXR), three times that per colour image. The build runs
in chunks committed one at a time: after a kill, run the same command again to continue. docs/data.md has
the details (what is checked when a cache is opened, --rebuild, DDP).
"""
import argparse
import sys

from ace_lora.errors import UserInputError, main_guard
from ace_lora.params import (
    HelpFormatter,
    add_config_arg,
    add_max_image_pixels_arg,
    add_model_args,
    add_num_workers_arg,
    parse_with_config,
)

TRANSFORM_HELP = ("train: the whole image resized to the model's square input (train.py's transform); eval: the "
                  "model's own evaluation transform, resize + centre crop (the zero-shot scripts and predict.py)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_config_arg(parser)
    parser.add_argument("--csv",
                        help="the CSV whose images to cache: a training CSV (column image_path), or with --task a "
                             "zero-shot test CSV")
    parser.add_argument("--data-root", help="folder that relative image paths start from (default: the CSV's folder)")
    parser.add_argument("--task", help="the zero-shot data set the CSV is for (chexpert, rsna, siim, ...): its image "
                                       "column and path rules; omit for a training CSV")
    add_model_args(parser)
    parser.add_argument("--transform", choices=("train", "eval"), default="train", help=TRANSFORM_HELP)
    parser.add_argument("--fast-decode", action="store_true",
                        help="decode JPEGs at a reduced DCT scale, as train.py --fast-decode (not exact; such a "
                             "cache serves only runs with --fast-decode)")
    parser.add_argument("--output", help="the cache folder (created; a half-built one is continued, a damaged one "
                                         "repaired)")
    add_num_workers_arg(parser)
    parser.add_argument("--chunk-size", type=int, default=256,
                        help="images per committed chunk (what a killed build redoes at most)")
    parser.add_argument("--content-hash", action="store_true",
                        help="also record a blake2b hash of each file, so that a copied data set (new mtimes, same "
                             "content) still matches the cache")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="cache the other images and flag the unreadable ones (reading one later names it) "
                             "instead of stopping at the first")
    parser.add_argument("--rebuild", action="store_true",
                        help="rebuild the entries whose sources changed, or the whole cache when it holds other "
                             "images or another transform")
    parser.add_argument("--verify", metavar="DIR",
                        help="check every chunk of the cache DIR (sizes and checksums), name the damaged ones and "
                             "exit (1 when any is damaged; repair with this script's --rebuild); nothing else needed")
    add_max_image_pixels_arg(parser)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


def human_size(n_bytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.2f} {unit}"
    return f"{n_bytes} bytes"


@main_guard
def main(argv=None) -> int:
    args = parse_with_config(build_parser(), argv)
    if args.verify:
        return verify(args.verify)
    for flag, value in (("--csv", args.csv), ("--output", args.output)):
        if not value:
            raise UserInputError(f"{flag} is required (or --verify DIR)")
    from ace_lora.data.image_cache import build_cache, check_cache_folder, csv_image_paths
    from ace_lora.data.images import set_max_image_pixels
    from ace_lora.model.backbone import load_backbone  # after parsing: --help stays fast
    set_max_image_pixels(args.max_image_pixels)
    from ace_lora.data.transforms import pixel_transform
    check_cache_folder(args.output, "--output")
    if args.task:
        from ace_lora.evaluation.tasks import get_task
        paths = csv_image_paths(args.csv, args.data_root, get_task(args.task))
    else:
        paths = csv_image_paths(args.csv, args.data_root)
    transform = pixel_transform(load_backbone(args.model, device="cpu").preprocess, args.transform)
    manifest = build_cache(args.output, paths, transform, fast_decode=args.fast_decode, csv=args.csv,
                           chunk_size=args.chunk_size, num_workers=args.num_workers, content_hash=args.content_hash,
                           skip_unreadable=args.skip_unreadable, rebuild=args.rebuild, progress=args.progress)
    print(f"image cache {args.output}: {manifest['n_images']} images ({manifest['n_greyscale']} greyscale, "
          f"{manifest['n_unreadable']} unreadable), {human_size(manifest['bytes'])}, {args.transform} transform "
          f"at {transform.size}x{transform.size}")
    return 0


def verify(folder: str) -> int:
    from ace_lora.data.image_cache import verify_cache
    checked, damaged = verify_cache(folder)
    for problem in damaged:
        print(f"damaged: {problem}")
    if damaged:
        print(f"{len(damaged)} of {checked} chunks of {folder} are damaged: repair them with the command that built "
              f"the cache and --rebuild (python dataset_prep/cache_images.py --csv CSV --output {folder} --rebuild)")
        return 1
    print(f"{folder}: all {checked} chunks intact (their sizes, and their checksums where recorded)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
