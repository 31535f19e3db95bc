"""Command line shared by the zero-shot scripts: each `zero_shot_eval_ace_lora_<task>.py` calls `run(task, argv)`.

The flags (ace_lora.params.zero_shot_parser) are the same for every data set (plus `--nih-scoring` for
NIH); the work is done by `ace_lora.evaluation.zero_shot.evaluate`.
"""
from typing import Optional, Sequence

from ace_lora.errors import UserInputError
from ace_lora.evaluation.tasks import get_task
from ace_lora.io import prepare_output_dir, write_resolved_config
from ace_lora.params import check_runtime_args, parse_with_config
from ace_lora.params.evaluation import zero_shot_parser


def run(task_name: str, argv: Optional[Sequence[str]] = None):
    """Parse `argv`, evaluate, write the result files and print a summary table; returns the ZeroShotResult."""
    args = parse_with_config(zero_shot_parser(task_name), argv)
    if not args.csv:
        raise UserInputError("--csv is required (on the command line or as 'csv:' in --config)")
    if args.bootstrap < 0:
        raise UserInputError(f"--bootstrap must be >= 0 (0: no intervals), got {args.bootstrap}")
    check_runtime_args(args)
    # After parsing, so that --help needs no torch:
    from ace_lora.evaluation.zero_shot import evaluate, format_summary, write_outputs
    from ace_lora.factory import load_model_for_eval
    from ace_lora.runtime import runtime_device
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
