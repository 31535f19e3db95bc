#!/usr/bin/env python3
"""Classify your own images with ACE-LoRA (or bare BiomedCLIP): zero-shot, with your own class names.

Examples:
  python predict.py scans/ --classes pneumonia "pleural effusion" "no finding" --checkpoint ACE_LoRA.pt \
      --model local-dir:/models/biomedclip --output-dir results/my_scans
  python predict.py --csv my_images.csv --column file --classes classes.txt --heatmaps results/heatmaps
  python predict.py "slides/**/*.png" --classes "benign colon" "colon adenocarcinoma" \
      --templates "an H&E image of {}." "a histopathology image of {}."

Writes predictions.csv (path, one probability column per class, predicted), unreadable.csv when
--skip-unreadable skipped files, config.yaml, and with --heatmaps one overlay PNG per image and class
(listed in heatmaps.csv). A folder that holds a previous prediction is refused unless --overwrite.
The Python API is `ace_lora.load(...)` (ace_lora/predict.py).
"""
import sys
from pathlib import Path

from ace_lora.errors import UserInputError, main_guard
from ace_lora.params import parse_with_config
from ace_lora.params.evaluation import predict_parser


@main_guard
def main(argv=None) -> int:
    args = parse_with_config(predict_parser(__doc__), argv)
    if args.batch_size < 1 or args.num_workers < 0:
        raise UserInputError(f"--batch-size must be >= 1 and --num-workers >= 0, got {args.batch_size}, "
                             f"{args.num_workers}")
    from ace_lora.data.images import set_max_image_pixels
    from ace_lora.io import check_output_dir, write_resolved_config  # after parsing: --help needs no torch
    from ace_lora.predict import (
        check_class_columns,
        check_prediction_folder,
        collect_images,
        load,
        predict_files,
        read_names,
    )
    set_max_image_pixels(args.max_image_pixels)
    classes = read_names(args.classes, "class")
    check_class_columns(classes)
    templates = read_names(args.templates, "template") if args.templates else None
    paths, skipped = collect_images(args.inputs, args.csv, args.column, args.data_root)
    if skipped:
        print(f"skipped {len(skipped)} file(s) in the folders that are neither images nor DICOM (e.g. {skipped[0]})",
              file=sys.stderr)
    check_output_dir(args.output_dir)
    check_prediction_folder(args.output_dir, args.overwrite)
    if args.heatmaps:
        check_output_dir(args.heatmaps, flag="--heatmaps")
    predictor = load(args.checkpoint, model=args.model, device=args.device, precision=args.precision,
                     batch_size=args.batch_size, logit_scale=args.logit_scale)
    pixels = None
    if args.image_cache:
        from ace_lora.data.image_cache import open_or_build
        pixels = open_or_build(args.image_cache, paths, predictor.model.eval_pixels, rebuild=args.image_cache_rebuild,
                               csv=args.csv or "", num_workers=args.num_workers, skip_unreadable=args.skip_unreadable,
                               progress=args.progress)
    summary = predict_files(predictor, paths, classes, templates, args.output_dir, args.heatmaps,
                            args.skip_unreadable, args.progress, pixels=pixels)
    write_resolved_config(args, args.output_dir)
    skipped = f", {summary['n_unreadable']} unreadable listed in unreadable.csv" if summary["n_unreadable"] else ""
    print(f"predicted {summary['n_predicted']} of {summary['n_images']} images{skipped}; "
          f"wrote {Path(args.output_dir) / 'predictions.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
