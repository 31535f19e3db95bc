"""The command line of the dense benchmarks: zero_shot_eval/segmentation_siim.py and detection_rsna.py."""
import argparse
from typing import Optional, Sequence

from ace_lora.errors import UserInputError
from ace_lora.evaluation.dense.definitions import DENSE_TASKS, FEATURE_KINDS, SPLITS
from ace_lora.params import (
    HelpFormatter,
    add_config_arg,
    add_model_args,
    add_runtime_args,
    check_runtime_args,
    parse_with_config,
)


def dense_parser(task_name: str) -> argparse.ArgumentParser:
    """The command line of zero_shot_eval/segmentation_siim.py and detection_rsna.py."""
    task = DENSE_TASKS[task_name]
    layout = task.layout
    segmentation = task_name == "siim_segmentation"
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, description=(
        f"{task.title} on a frozen ACE-LoRA (or plain-LoRA, or bare BiomedCLIP) image encoder: a "
        + ("SETR-PUP-style decoder (focal + Dice loss)" if segmentation else "torchvision FCOS on a ViTDet simple "
           "feature pyramid") + f" trained on cached patch tokens, or --zero-shot similarity to '{task.class_name}'. "
        "Writes metrics.json, predictions.csv, figures and config.yaml to --output-dir."))
    add_config_arg(parser)

    model = parser.add_argument_group("model")
    add_model_args(model)
    model.add_argument("--checkpoint", help="ACE-LoRA weights (released format, plain-LoRA release or training "
                                            "checkpoint); omit for the bare BiomedCLIP encoder")
    model.add_argument("--features", choices=("auto",) + FEATURE_KINDS, default="auto",
                       help="patch tokens: 'last-layer' = projected last-layer tokens (MGCA/ViTDet protocol, most "
                            "spatial detail), 'hgnn' = ACE-HGNN refined normalised tokens; 'auto' = last-layer "
                            "for trained heads, hgnn for --zero-shot (the tokens aligned with text)")
    model.add_argument("--zero-shot", action="store_true",
                       help=f"no training: cosine similarity of the patch tokens to the '{task.class_name}' prompt "
                            "embedding, " + ("thresholded into masks" if segmentation else "connected regions above a "
                                             "threshold as boxes scored by their mean similarity")
                            + "; the threshold is chosen on the validation split")
    model.add_argument("--demo", action="store_true",
                       help="synthetic data (<output-dir>/demo_data) and a tiny random model, CPU, < 3 minutes; "
                            "replaces --model and the CSV flags")

    data = parser.add_argument_group("data")
    data.add_argument("--split-dir", help=f"folder with {layout.prefix}_{{train,val,test}}.csv from dataset_prep")
    for split in SPLITS:
        data.add_argument(f"--{split}-csv", help=f"{split} CSV ({', '.join(layout.columns)}); overrides --split-dir")
    data.add_argument("--data-root",
                      help="folder that relative image/mask paths start from (default: each CSV's folder)")
    data.add_argument("--train-fraction", type=float, default=1.0,
                      help="fraction of the training set used (0.01, 0.1, 1.0): a seeded subset drawn separately "
                           "from positive and negative images, ids saved to train_ids.csv")
    positive = "images with pneumothorax" if segmentation else "images with boxes"
    data.add_argument("--train-set", choices=("balanced", "full"), default="balanced" if segmentation else "full",
                      help=f"'balanced' = all {positive} plus as many seeded others"
                           + (" (MGCA protocol; default)" if segmentation else "") + ", 'full' = every training image"
                           + ("" if segmentation else " (default; dataset_prep's detection split is positives only)"))

    training = parser.add_argument_group("training (ignored with --zero-shot)")
    training.add_argument("--epochs", type=int, help="maximum epochs (default %(d)s, demo %(m)s)" % dict(
        d=task.defaults["epochs"], m=task.demo_defaults["epochs"]))
    training.add_argument("--lr", type=float,
                          help="AdamW peak learning rate, cosine decay (default %g)" % task.defaults["lr"])
    training.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    training.add_argument("--patience", type=int, help="stop after this many epochs without a better validation "
                                                       f"score (default {task.defaults['patience']})")
    training.add_argument("--head-channels", type=int, help="width of the " + (
        "decoder's first stage (halves every stage)" if segmentation else "feature pyramid and FCOS head")
        + f" (default {task.defaults['head_channels']})")
    if segmentation:
        training.add_argument("--focal-weight", type=float, default=10.0,
                              help="loss = focal_weight * focal + (1 - soft Dice) (MGCA's weight)")
    else:
        training.add_argument("--head-convs", type=int, help=f"conv layers per FCOS head branch (default "
                                                             f"{task.defaults['head_convs']})")
    training.add_argument("--seed", type=int, default=0, help="seed of the subsets, head initialisation, batch order "
                                                              "and bootstrap")

    runtime = parser.add_argument_group("runtime")
    add_runtime_args(runtime, batch_size=16)
    runtime.add_argument("--encode-batch-size", type=int, default=64,
                         help="images per batch through the frozen encoder (--batch-size is the head's)")
    runtime.add_argument("--feature-cache", help="folder to keep encoded features in between runs (keyed by model, "
                                                 "checkpoint, features and file list); default: memory only")

    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", default=f"results/{task_name}", help="folder for the result files")
    output.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs (0 = none)")
    output.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    return parser


def parse_dense_args(task_name: str, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Flags > --config > (demo) defaults. Missing values resolved, bad values a UserInputError."""
    task = DENSE_TASKS[task_name]
    parser = dense_parser(task_name)
    parser.set_defaults(**task.defaults)
    args = parse_with_config(parser, argv, early=("demo",),
                             layered_defaults=lambda early: task.demo_defaults if early.demo else {})
    check_runtime_args(args)
    for name in ("epochs", "patience", "encode_batch_size", "head_channels", "head_convs", "bootstrap"):
        minimum = 0 if name in ("epochs", "bootstrap") else 1
        if getattr(args, name, minimum) < minimum:
            raise UserInputError(f"--{name.replace('_', '-')} must be >= {minimum}, got {getattr(args, name)}")
    if not 0 < args.train_fraction <= 1:
        raise UserInputError(f"--train-fraction must be in (0, 1], got {args.train_fraction}")
    if args.features == "auto":
        args.features = "hgnn" if args.zero_shot else "last-layer"
    return args


