"""The zero-shot evaluation command line, shared by every `zero_shot_eval/zero_shot_eval_ace_lora_<task>.py`
(the released script names, kept) and by `ace-lora-zero-shot TASK ...`.

The flags (ace_lora.params.evaluation.zero_shot_parser) are the same for every data set (plus the
scoring flag where a task has two); the work is done by `ace_lora.evaluation.zero_shot.evaluate`.
Importing this module loads no torch, so `--help` answers at once.
"""
import sys
from typing import Optional, Sequence

from ace_lora.errors import UserInputError, main_guard
from ace_lora.evaluation.tasks import TASKS, get_task
from ace_lora.io import check_output_dir, prepare_output_dir, write_resolved_config
from ace_lora.params import check_runtime_args, parse_with_config
from ace_lora.params.evaluation import zero_shot_parser


def run_zero_shot(task_name: str, argv: Optional[Sequence[str]] = None):
    """Parse `argv`, evaluate, write the result files and print a summary table; returns the ZeroShotResult."""
    args = parse_with_config(zero_shot_parser(task_name), argv)
    if not args.csv:
        raise UserInputError("--csv is required (on the command line or as 'csv:' in --config)")
    if args.bootstrap < 0:
        raise UserInputError(f"--bootstrap must be >= 0 (0: no intervals), got {args.bootstrap}")
    check_runtime_args(args)
    # After parsing, so that --help needs no torch:
    from ace_lora.data.images import set_max_image_pixels
    from ace_lora.evaluation.zero_shot import evaluate, format_summary, write_outputs
    from ace_lora.factory import load_model_for_eval
    from ace_lora.runtime import runtime_device
    set_max_image_pixels(args.max_image_pixels)
    device = runtime_device(args)
    check_output_dir(args.output_dir)  # a bad --output-dir fails now; the folder is made only for results
    model = load_model_for_eval(args.model, args.checkpoint, device=device)
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
