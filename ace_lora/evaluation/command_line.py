"""The command lines that evaluate or apply a model, each a `main(argv=None) -> int` that the scripts call:
zero-shot (every `zero_shot_eval/zero_shot_eval_ace_lora_<task>.py`, the released script names, and
`ace-lora-zero-shot TASK ...`), retrieval, the dense benchmarks, predict.py and export.py.

The flags are defined in ace_lora.params (evaluation, dense); the work is done by the modules of
ace_lora.evaluation and ace_lora.model.export, imported after parsing: importing this module loads no torch, so
`--help` answers at once.
"""
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from ace_lora.errors import UserInputError, main_guard
from ace_lora.evaluation.tasks import TASKS, get_task
from ace_lora.io import check_output_dir, prepare_output_dir, strict_json, write_resolved_config
from ace_lora.params import check_runtime_args, parse_with_config
from ace_lora.params.dense import parse_dense_args
from ace_lora.params.evaluation import export_parser, predict_parser, retrieval_parser, zero_shot_parser


def run_zero_shot(task_name: str, argv: Optional[Sequence[str]] = None):
    """Parse `argv`, evaluate, write the result files and print a summary table; returns the ZeroShotResult."""
    args = parse_with_config(zero_shot_parser(task_name), argv)
    if not args.csv:
        raise UserInputError("--csv is required (on the command line or as 'csv:' in --config)")
    if args.bootstrap < 0:
        raise UserInputError(f"--bootstrap must be >= 0 (0: no intervals), got {args.bootstrap}")
    check_runtime_args(args)
    from ace_lora.evaluation.zero_shot import evaluate, format_summary, write_outputs  # after parsing: no torch
    args, device, model = model_to_evaluate(args)
    task = get_task(task_name, getattr(args, "nih_prompt_names", "raw"))
    result = evaluate(model, task, args.csv, args.data_root, batch_size=args.batch_size,
                      num_workers=args.num_workers, device=device, precision=args.precision,
                      logit_scale=args.logit_scale, scoring=getattr(args, "scoring", None),
                      skip_unreadable=args.skip_unreadable, n_bootstrap=args.bootstrap, seed=args.seed,
                      image_cache=args.image_cache, image_cache_rebuild=args.image_cache_rebuild,
                      progress=args.progress)
    prepare_output_dir(args.output_dir)
    write_resolved_config(args, args.output_dir)
    paths = write_outputs(result, args.output_dir, vars(args))
    print(f"wrote {', '.join(paths.values())}")
    print(format_summary(result))
    return result


def model_to_evaluate(args):
    """What zero-shot and retrieval do before evaluating: the image size limit, --device and --precision (a
    resolved copy of the flags), --output-dir checked (made only for results), the model in eval mode."""
    from ace_lora.data.images import set_max_image_pixels
    from ace_lora.model.factory import load_model_for_eval
    from ace_lora.runtime import runtime_device
    set_max_image_pixels(args.max_image_pixels)
    args, device = runtime_device(args)
    check_output_dir(args.output_dir)  # a bad --output-dir fails now, before the model loads
    return args, device, load_model_for_eval(args.model, args.checkpoint, device=device)


def task_main(task_name: str):
    """The `main(argv=None) -> int` of one task's script."""
    @main_guard
    def main(argv: Optional[Sequence[str]] = None) -> int:
        run_zero_shot(task_name, argv)
        return 0
    main.__doc__ = f"Zero-shot evaluation on {task_name} (see --help)."
    return main


USAGE = (f"usage: ace-lora-zero-shot {{{','.join(TASKS)}}} [flags]\n\nZero-shot classification on one data set, "
         "as its script zero_shot_eval/zero_shot_eval_ace_lora_<task>.py; `ace-lora-zero-shot TASK --help` lists "
         "the task's flags.")


@main_guard
def zero_shot_main(argv: Optional[Sequence[str]] = None) -> int:
    """`ace-lora-zero-shot TASK [flags]`: the task's script under one name."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if not argv or argv[0] not in TASKS:
        raise UserInputError(f"give the task first: ace-lora-zero-shot {{{','.join(TASKS)}}} [flags] (--help after "
                             "the task lists them)")
    run_zero_shot(argv[0], argv[1:])
    return 0


@main_guard
def retrieval_main(argv: Optional[Sequence[str]] = None) -> int:
    """zero_shot_eval/retrieval.py: image-text retrieval, metrics.json and ranks.csv."""
    args = parse_with_config(retrieval_parser(), argv)
    check_runtime_args(args)
    from ace_lora.evaluation.retrieval import evaluate_retrieval  # after parsing: --help needs no torch
    args, device, model = model_to_evaluate(args)
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


@main_guard
def predict_main(argv: Optional[Sequence[str]] = None) -> int:
    """predict.py: zero-shot classification of your own images into predictions.csv (and heatmaps)."""
    args = parse_with_config(predict_parser(), argv)
    check_runtime_args(args)
    from ace_lora.data.images import set_max_image_pixels
    from ace_lora.evaluation.predict import (
        check_class_columns,
        check_prediction_folder,
        collect_images,
        load,
        predict_files,
        read_names,
    )  # after parsing: --help needs no torch
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


@main_guard
def export_main(argv: Optional[Sequence[str]] = None) -> int:
    """export.py: a trained model as a folder others load without this repository's training code."""
    args = parse_with_config(export_parser(), argv)
    metrics = {}
    if args.metrics:
        try:
            with open(args.metrics, encoding="utf-8") as f:
                document = json.load(f)
        except (OSError, json.JSONDecodeError) as error:
            raise UserInputError(f"--metrics {args.metrics}: not a readable JSON file ({error})") from None
        values = document.get("metrics", document)
        metrics = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    from ace_lora.model.export import export_model  # after parsing: --help needs no torch
    from ace_lora.model.factory import load_model_for_eval
    model = load_model_for_eval(args.model, args.checkpoint, merge=False)
    paths = export_model(model, args.model, args.output_dir, source=args.checkpoint,
                         training_data=args.training_data, metrics=metrics, license_name=args.license)
    print(f"exported to {paths['folder']}: merged backbone {paths['weights']}, adapters {paths['adapters']}")
    return 0


def dense_main(task_name: str):
    """The `main(argv=None) -> int` of a dense benchmark's script (segmentation_siim.py, detection_rsna.py)."""
    @main_guard
    def main(argv: Optional[Sequence[str]] = None) -> int:
        args = parse_dense_args(task_name, argv)
        from ace_lora.evaluation.dense.benchmark import run  # after parsing: --help needs no torch
        run(task_name, args)
        return 0
    main.__doc__ = f"The {task_name} benchmark (see --help)."
    return main
