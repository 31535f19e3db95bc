#!/usr/bin/env python3
"""Image-to-text and text-to-image retrieval with ACE-LoRA or the bare BiomedCLIP baseline.

Reads a CSV with an image and its report per row: CheXpert 5x200 (Path, Report Impression; its five
class columns give class-aware Precision@K), a MIMIC-CXR test split from dataset_prep/mimic_cxr_prep.py
(image_path, report), or any CSV (--image-column, --text-column). Identical reports are one gallery
item and count as correct for each other (docs/evaluation.md, "Retrieval").

    python zero_shot_eval/retrieval.py --checkpoint ACE_LoRA.pt --csv chexpert_5x200.csv \
        --data-root /data/chexpert --output-dir results/retrieval_chexpert

Writes metrics.json (Recall@1/5/10, mean and median rank, Precision@K), ranks.csv (one row per query)
and config.yaml.
"""
import json
import os
import sys

from ace_lora.errors import main_guard
from ace_lora.params import check_runtime_args, parse_with_config
from ace_lora.params.evaluation import retrieval_parser


@main_guard
def main(argv=None) -> int:
    args = parse_with_config(retrieval_parser(__doc__), argv)
    check_runtime_args(args)
    # After parsing, so that --help needs no torch:
    from ace_lora.data.images import set_max_image_pixels
    from ace_lora.evaluation.retrieval import evaluate_retrieval
    from ace_lora.factory import load_model_for_eval
    from ace_lora.io import check_output_dir, prepare_output_dir, strict_json, write_resolved_config
    from ace_lora.runtime import runtime_device
    set_max_image_pixels(args.max_image_pixels)
    device = runtime_device(args)
    check_output_dir(args.output_dir)  # a bad --output-dir fails now; the folder is made only for results
    model = load_model_for_eval(args.model, args.checkpoint, device=device)
    result = evaluate_retrieval(model, args.csv, args.data_root, image_column=args.image_column,
                                text_column=args.text_column, batch_size=args.batch_size,
                                num_workers=args.num_workers, device=device, precision=args.precision,
                                image_cache=args.image_cache, image_cache_rebuild=args.image_cache_rebuild,
                                progress=args.progress)
    prepare_output_dir(args.output_dir)
    with open(os.path.join(args.output_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(strict_json({"metrics": result.metrics, "config": vars(args)}), f, indent=2, allow_nan=False,
                  default=str)
    result.ranks.to_csv(os.path.join(args.output_dir, "ranks.csv"), index=False)
    write_resolved_config(args, args.output_dir)
    m = result.metrics
    print(f"image->text R@1/5/10 {m['i2t_recall@1']:.3f}/{m['i2t_recall@5']:.3f}/{m['i2t_recall@10']:.3f}, "
          f"text->image R@1/5/10 {m['t2i_recall@1']:.3f}/{m['t2i_recall@5']:.3f}/{m['t2i_recall@10']:.3f} "
          f"({m['n_images']} images, {m['n_distinct_reports']} distinct reports); wrote {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
