"""Command line shared by the zero-shot scripts: each `zero_shot_eval_ace_lora_<task>.py` calls `run(task, argv)`.

The flags are the same for every data set (plus `--nih-scoring` for NIH); the work is done by
`ace_lora.evaluation.zero_shot.evaluate`.
"""
import argparse
from typing import Optional, Sequence

from ace_lora.errors import UserInputError
from ace_lora.evaluation.tasks import NIH_PROMPT_NAMES, get_task
from ace_lora.evaluation.zero_shot import LOGIT_SCALES, ZeroShotResult, evaluate, format_summary, write_outputs
from ace_lora.factory import load_model_for_eval
from ace_lora.io import prepare_output_dir, write_resolved_config
from run_utils import (add_config_arg, add_model_args, add_runtime_args, check_runtime_args, parse_with_config,
                       runtime_device)


def build_parser(task_name: str) -> argparse.ArgumentParser:
    task = get_task(task_name)
    parser = argparse.ArgumentParser(
        description=f"Zero-shot {task.title}: classes {', '.join(task.class_names)}; prompts "
                    f"{' / '.join(repr(t.format('{c}')) for t in task.templates)}. Writes predictions.csv, "
                    f"metrics.json, roc.png" + ("" if task.multilabel else ", confusion_matrix.png") + ".")
    add_config_arg(parser)
    model = parser.add_argument_group("model")
    add_model_args(model)
    model.add_argument("--checkpoint", help="ACE-LoRA weights: the released ACE_LoRA.pt or a training checkpoint; "
                                            "omit to evaluate the bare BiomedCLIP baseline")
    model.add_argument("--logit-scale", choices=LOGIT_SCALES, default="base",
                       help="softmax temperature: 'base' = the backbone's exp(logit_scale), as the released "
                            "scripts; 'learned' = the checkpoint's learned scale")
    if len(task.scorings) > 1:
        model.add_argument(f"--{task.name}-scoring", dest="scoring", choices=task.scorings, default=task.scorings[0],
                           help="'released': per image (exp(c) - min) / (max - min) over the class cosines c "
                                "(the released protocol); 'cosine': the cosines themselves")
    if task.name == "nih":
        model.add_argument("--nih-prompt-names", choices=tuple(NIH_PROMPT_NAMES), default="raw",
                           help="what names the findings in the prompts: 'raw' = the data set's labels "
                                "('Pleural_Thickening'), as the released evaluation (default); 'readable' = "
                                "underscores as spaces ('Pleural Thickening')")
    data = parser.add_argument_group("data")
    data.add_argument("--csv", help=f"test CSV with columns {', '.join(task.required_columns)}")
    data.add_argument("--data-root", help="folder that relative image paths start from (default: the CSV's folder)")
    data.add_argument("--skip-unreadable", action="store_true",
                      help="count and skip missing or unreadable images (NaN rows in predictions.csv) "
                           "instead of stopping at the first")
    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", default=f"results/{task.name}",
                        help=f"folder for the result files (default: results/{task.name})")
    output.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs (0 = none)")
    output.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    add_runtime_args(parser.add_argument_group("runtime"), batch_size=64)
    return parser


def run(task_name: str, argv: Optional[Sequence[str]] = None) -> ZeroShotResult:
    """Parse `argv`, evaluate, write the result files and print a summary table."""
    args = parse_with_config(build_parser(task_name), argv)
    if not args.csv:
        raise UserInputError("--csv is required (on the command line or as 'csv:' in --config)")
    if args.bootstrap < 0:
        raise UserInputError(f"--bootstrap must be >= 0 (0: no intervals), got {args.bootstrap}")
    check_runtime_args(args)
    device = runtime_device(args)
    prepare_output_dir(args.output_dir)  # a bad --output-dir fails now, not after the evaluation
    model = load_model_for_eval(args.model, args.checkpoint, device=device)
    task = get_task(task_name, getattr(args, "nih_prompt_names", "raw"))
    result = evaluate(model, task, args.csv, args.data_root, batch_size=args.batch_size,
                      num_workers=args.num_workers, device=device, precision=args.precision,
                      logit_scale=args.logit_scale, scoring=getattr(args, "scoring", None),
                      skip_unreadable=args.skip_unreadable, n_bootstrap=args.bootstrap, seed=args.seed)
    write_resolved_config(args, args.output_dir)
    paths = write_outputs(result, args.output_dir, vars(args))
    print(f"wrote {', '.join(paths.values())}")
    print(format_summary(result))
    return result
