"""Every command line of the project: the YAML-defaults mechanism, the common model/runtime flags, the
training flags shared by train.py and train_multi_gpu.py, the zero-shot and the dense benchmark flags.

A YAML file given with `--config` supplies defaults (keys are flag names with '-' or '_'); flags on
the command line override it. This module imports no torch, so `--help` answers at once.
"""
import argparse
from typing import Optional, Sequence

from .config import BIOMEDCLIP_HUB, GNN_CHOICES, LORA_PARAMS, LORA_POSITIONS, LOSS_CHOICES
from .data.labels import UNCERTAIN_POLICIES
from .dense.tasks import DENSE_TASKS, FEATURE_KINDS, SPLITS
from .errors import UserInputError
from .io import read_yaml_mapping
from .methods import METHOD_DEFAULTS, METHODS
from .evaluation.tasks import LOGIT_SCALES, NIH_PROMPT_NAMES, TASKS, get_task

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every script's --help: its docstring as written, and each flag's default after its help (unless the
    help already says what the default is, or there is none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.nargs == 0 or action.default in (None,
                                                                                                     argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"
# Flag defaults of a --demo run unless given on the command line or in --config (chosen for a robust,
# < 3 minute CPU run).
DEMO_DEFAULTS = dict(output_dir="demo_output", epochs=12, batch_size=25, lr=2e-3, warmup_epochs=1, num_workers=0,
                     val_before_training=True, log_every_steps=1)


def parse_with_config(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse argv; values from `--config FILE.yaml` become defaults that explicit flags override.

    YAML values get the same checks as flags (type conversion, choices, one value vs a list), with
    errors that name the file and key: argparse itself never checks defaults.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        values = _read_config(known.config)
        actions = {a.dest: a for a in parser._actions}
        unknown = sorted(set(values) - set(actions))
        if unknown:
            raise UserInputError(f"{known.config}: unknown keys {', '.join(unknown)}")
        parser.set_defaults(**{k: _checked_value(actions[k], v, known.config, k) for k, v in values.items()})
    return parser.parse_args(argv)


def parse_with_demo_defaults(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]],
                             demo_defaults: dict) -> argparse.Namespace:
    """`parse_with_config`; when --demo is on (as a flag or in --config), `demo_defaults` replace the
    parser's defaults first, so explicit flags and config values still win."""
    args = parse_with_config(parser, argv)
    if not args.demo:
        return args
    parser.set_defaults(**demo_defaults)
    return parse_with_config(parser, argv)


def _read_config(path: str) -> dict:
    values = read_yaml_mapping(path, "config file")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def _checked_value(action: argparse.Action, value, path: str, key: str):
    """A YAML value converted and validated as argparse would a command-line value."""
    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            raise UserInputError(f"{path}: {key} must be true or false, got {value!r}")
        return value
    if value is None:
        return None
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    if isinstance(value, list) != many:
        raise UserInputError(f"{path}: {key} takes {'a list' if many else 'one value'}, got {value!r}")
    items = []
    for item in (value if many else [value]):
        if action.type is not None:
            try:
                item = action.type(str(item))
            except (TypeError, ValueError) as err:
                raise UserInputError(f"{path}: {key} has an invalid value {item!r}") from err
        if action.choices is not None and item not in action.choices:
            raise UserInputError(f"{path}: {key}={item!r} is not one of {', '.join(map(str, action.choices))}")
        items.append(item)
    return items if many else items[0]


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file whose keys (flag names) set defaults; explicit flags win")


def add_model_args(group) -> None:
    group.add_argument("--model", default=BIOMEDCLIP_HUB,
                       help="open_clip model: hf-hub:ID (needs network once) or local-dir:PATH (offline; "
                            "see README 'A local BiomedCLIP folder')")


def add_device_args(group) -> None:
    group.add_argument("--device", default="auto", help="'auto' (CUDA if available, else CPU), 'cpu', 'cuda', 'cuda:1'")
    group.add_argument("--precision", default="auto", choices=PRECISIONS,
                       help="autocast precision; 'auto' = bf16 on CUDA, fp32 on CPU")


def add_runtime_args(group, batch_size: int = 64) -> None:
    add_device_args(group)
    group.add_argument("--batch-size", type=int, default=batch_size, help="images per batch (per GPU)")
    group.add_argument("--num-workers", type=int, default=4, help="DataLoader worker processes")


def check_runtime_args(args: argparse.Namespace) -> None:
    """--batch-size >= 1 and --num-workers >= 0, checked before any model is loaded."""
    if args.batch_size < 1:
        raise UserInputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise UserInputError(f"--num-workers must be >= 0, got {args.num_workers}")


# ---- training (train.py and train_multi_gpu.py share one command line) ----------------------


def add_training_args(parser: argparse.ArgumentParser, distributed: bool) -> None:
    """Every flag of the training scripts, grouped by concern."""
    add_config_arg(parser)
    model = parser.add_argument_group("model")
    add_model_args(model)
    model.add_argument("--method", default="ace_lora", choices=METHODS,
                       help="what trains (README 'Baselines and ablations'): ace_lora, lora (LoRA only), full "
                            "(every backbone weight, lr 1e-5), the peft methods dora / ia3 / loha / vera, peft "
                            "(--peft-config), bare (nothing: the zero-shot backbone, for --dry-run and sweeps)")
    model.add_argument("--peft-config", metavar="FILE",
                       help="with --method peft: a peft config as JSON (any peft tuner for Linear layers)")
    model.add_argument("--init-from", metavar="PATH",
                       help="start from the trained tensors of a weight file (e.g. the released ACE_LoRA.pt) or one of "
                            "our checkpoints; fresh optimiser, schedule and step counter; the LoRA/ACE-HGNN flags must "
                            "match the file")
    model.add_argument("--dry-run", action="store_true",
                       help="build the model, print 'trainable parameters: N' and exit (no data needed)")
    model.add_argument("--demo", action="store_true",
                       help="train on a synthetic data set generated in <output-dir>/demo_data with a tiny random "
                            "model (offline, CPU, < 3 min); replaces --model, --train-csv and the validation flags")

    lora = parser.add_argument_group("LoRA and ACE-HGNN")
    lora.add_argument("--lora-r", type=int, default=4, help="LoRA rank r")
    lora.add_argument("--lora-alpha", type=float, default=1.0, help="LoRA alpha; the update is scaled by alpha/sqrt(r)")
    lora.add_argument("--lora-dropout", type=float, default=0.1, help="dropout on the LoRA input")
    lora.add_argument("--params", nargs="+", default=["q", "k", "v"], choices=LORA_PARAMS,
                      help="attention projections that get LoRA (q k v, optionally o)")
    lora.add_argument("--position", default="all", choices=LORA_POSITIONS,
                      help="which layers of each tower get LoRA (bottom/mid/up = thirds, half-*, top = last, "
                           "top3 = last three)")
    lora.add_argument("--topk", type=int, default=5, help="hyperedge size: top-k related tokens per token")
    lora.add_argument("--hidden-features", type=int, default=128, help="hidden width of the ACE-HGNN adapters")
    lora.add_argument("--apply-gnn-encoders", default="both", choices=GNN_CHOICES,
                      help="towers that get the ACE-HGNN adapters; none = LoRA only (the CLIP-LoRA baseline)")
    lora.add_argument("--loss", default="label_guided", choices=LOSS_CHOICES,
                      help="label_guided: same-label pairs are not negatives (needs labels); clip: plain InfoNCE. "
                           "Independent of the hypergraph (--apply-gnn-encoders)")

    data = parser.add_argument_group("data and runtime")
    data.add_argument("--train-csv", help="training CSV: image_path, report, the 14 CheXpert labels, optional split")
    data.add_argument("--data-root", help="folder that relative image paths start from (default: the CSV's folder)")
    data.add_argument("--label-csv", help="CheXpert label CSV (mimic-cxr-2.0.0-chexpert.csv) joined on study_id, "
                                          "when the training CSV has no label columns")
    data.add_argument("--split", default="train",
                      help="train on the rows whose `split` column has this value (ignored without that column)")
    data.add_argument("--uncertain-policy", default="zeros", choices=UNCERTAIN_POLICIES,
                      help="uncertain (-1) labels become 0 (released method) or 1")
    add_runtime_args(data, batch_size=64)

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=40, help="training epochs (the schedule spans all of them)")
    optim.add_argument("--max-steps", type=int,
                       help="stop after this many optimizer steps in total (the schedule still spans --epochs)")
    optim.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    optim.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay")
    optim.add_argument("--betas", type=float, nargs=2, default=[0.9, 0.999], help="AdamW betas")
    optim.add_argument("--warmup-epochs", type=float, default=1.0,
                       help="linear warm-up length in epochs, then cosine decay to 0 (updated every step)")
    optim.add_argument("--seed", type=int, default=1, help="seed for Python, NumPy, torch and the data order")
    optim.add_argument("--gather-negatives", action="store_true",
                       help="DDP: all-gather embeddings so each rank's loss uses the whole global batch as negatives"
                            + ("" if distributed else " (no effect in train.py's single process)"))

    logs = parser.add_argument_group("logging and checkpoints")
    logs.add_argument("--output-dir", default="runs/ace_lora", help="folder for checkpoints, metrics and figures")
    logs.add_argument("--save-every-steps", type=int, default=0,
                      help="also write checkpoints/last.pt every N steps (0: only at the end of each epoch)")
    logs.add_argument("--log-every-steps", type=int, default=20,
                      help="append the mean loss and the learning rate to steps.jsonl every N steps")
    logs.add_argument("--resume",
                      help="continue a run: a resume checkpoint, 'latest' (= <output-dir>/checkpoints/last.pt) or "
                           "'auto' (latest if it exists, else a new run; for requeued cluster jobs). Every setting that "
                           "shapes the run must be the same")
    logs.add_argument("--overwrite", action="store_true",
                      help="start a new run in an --output-dir that holds another one (its run files are deleted)")
    logs.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm progress bars")
    logs.add_argument("--tensorboard", action="store_true",
                      help="also write loss, learning rate, logit scale, throughput and every validation metric as "
                           "TensorBoard scalars to <output-dir>/tensorboard")
    logs.add_argument("--wandb", metavar="PROJECT", help="also log the same numbers to this Weights & Biases project "
                                                         "(needs the wandb package)")

    val = parser.add_argument_group("validation")
    val.add_argument("--val-dataset", choices=sorted(TASKS),
                     help="zero-shot data set evaluated after every epoch; best.pt = highest AUROC on it")
    val.add_argument("--val-csv", help="CSV of the validation data set (the layout its zero_shot_eval script reads)")
    val.add_argument("--val-data-root", help="folder that the validation CSV's image paths start from")
    val.add_argument("--eval-datasets", nargs="+", default=[], metavar="TASK:CSV[:ROOT]",
                     help="more evaluations logged after every epoch: a zero-shot data set or 'retrieval' (a CSV of "
                          "images and reports), e.g. chexpert:chexpert_5x200.csv:/data retrieval:mimic_test.csv:/data")
    val.add_argument("--val-before-training", action="store_true",
                     help="also evaluate before the first step (epoch 0 in metrics.jsonl)")


def parse_training_args(argv: Optional[Sequence[str]], description: str, distributed: bool) -> argparse.Namespace:
    """The training command line; with --demo, DEMO_DEFAULTS replace the defaults (flags and config still win)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_training_args(parser, distributed)
    method = parse_with_config(parser, argv).method
    parser.set_defaults(**METHOD_DEFAULTS.get(method, {}))  # explicit flags and --config still win
    return parse_with_demo_defaults(parser, argv, DEMO_DEFAULTS)


def evaluation_parser(description: str):
    """A parser with --config and the model group of every script that evaluates or applies a model:
    --model and --checkpoint. Returns (parser, model group)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_config_arg(parser)
    model = parser.add_argument_group("model")
    add_model_args(model)
    model.add_argument("--checkpoint", help="ACE-LoRA weights: the released .pt, a training checkpoint or an export "
                                            "folder; omit for the bare BiomedCLIP backbone")
    return parser, model


# ---- zero-shot evaluation (every zero_shot_eval/zero_shot_eval_ace_lora_<task>.py) ---------------


def zero_shot_parser(task_name: str) -> argparse.ArgumentParser:
    """The command line of zero_shot_eval/zero_shot_eval_ace_lora_<task>.py."""
    task = get_task(task_name)
    parser, model = evaluation_parser(
        f"Zero-shot {task.title}: classes {', '.join(task.class_names)}; prompts "
        f"{' / '.join(repr(t.format('{c}')) for t in task.templates)}. Writes predictions.csv, "
        f"metrics.json, roc.png" + ("" if task.multilabel else ", confusion_matrix.png") + ".")
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
                        help="folder for the result files")
    output.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs (0 = none)")
    output.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    add_runtime_args(parser.add_argument_group("runtime"), batch_size=64)
    return parser


# ---- dense benchmarks (zero_shot_eval/segmentation_siim.py, detection_rsna.py) -------------------


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
    args = parse_with_demo_defaults(parser, argv, task.demo_defaults)
    for name in ("epochs", "patience", "batch_size", "encode_batch_size", "head_channels", "head_convs", "bootstrap",
                 "num_workers"):
        minimum = 0 if name in ("epochs", "bootstrap", "num_workers") else 1
        if getattr(args, name, minimum) < minimum:
            raise UserInputError(f"--{name.replace('_', '-')} must be >= {minimum}, got {getattr(args, name)}")
    if not 0 < args.train_fraction <= 1:
        raise UserInputError(f"--train-fraction must be in (0, 1], got {args.train_fraction}")
    if args.features == "auto":
        args.features = "hgnn" if args.zero_shot else "last-layer"
    return args


# ---- prediction on your own images (predict.py) ----------------------------------------------------


def predict_parser(description: str) -> argparse.ArgumentParser:
    """The command line of predict.py."""
    parser, model = evaluation_parser(description)
    model.add_argument("--logit-scale", choices=LOGIT_SCALES, default="base",
                       help="softmax temperature: the backbone's exp(logit_scale), as the evaluation scripts, or "
                            "the learned one")
    data = parser.add_argument_group("images and classes")
    data.add_argument("inputs", nargs="*", help="image files, folders (searched recursively) or glob patterns")
    data.add_argument("--csv", help="a CSV that lists the images (in --column)")
    data.add_argument("--column", default="Path", help="the --csv column with the image paths")
    data.add_argument("--data-root", help="folder that relative --csv paths start from (default: the CSV's folder)")
    data.add_argument("--classes", nargs="+", required=True,
                      help="class names, or one text file (.txt) with a name per line")
    data.add_argument("--templates", nargs="+",
                      help="prompt templates with {} for the class name, or a .txt file with one per line "
                           "(default: the chest X-ray ensemble 'a chest X-ray image of {}.' / "
                           "'Findings suggesting {}.')")
    data.add_argument("--skip-unreadable", action="store_true",
                      help="list unreadable files in unreadable.csv and go on, instead of stopping at the first")
    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", default="results/predict",
                        help="folder for predictions.csv, unreadable.csv and config.yaml")
    output.add_argument("--heatmaps", metavar="DIR", help="also write one similarity-map overlay PNG per image "
                                                          "and class to DIR")
    output.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    runtime = parser.add_argument_group("runtime")
    add_device_args(runtime)
    runtime.add_argument("--batch-size", type=int, default=32, help="images per batch")
    return parser


# ---- image-text retrieval (zero_shot_eval/retrieval.py) --------------------------------------------


def retrieval_parser(description: str) -> argparse.ArgumentParser:
    """The command line of zero_shot_eval/retrieval.py."""
    parser, _ = evaluation_parser(description)
    data = parser.add_argument_group("data")
    data.add_argument("--csv", required=True, help="CSV with one image and its report per row")
    data.add_argument("--data-root", help="folder that relative image paths start from (default: the CSV's folder)")
    data.add_argument("--image-column", help="column of image paths (default: Path, else image_path)")
    data.add_argument("--text-column", help="column of report texts (default: 'Report Impression', else report)")
    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", default="results/retrieval", help="folder for metrics.json and ranks.csv")
    output.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add_runtime_args(parser.add_argument_group("runtime"), batch_size=64)
    return parser


# ---- export (export.py) ---------------------------------------------------------------------------


def export_parser(description: str) -> argparse.ArgumentParser:
    """The command line of export.py."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_config_arg(parser)
    add_model_args(parser)
    parser.add_argument("--checkpoint", required=True,
                        help="what to export: the released .pt, ACE-LoRA_weights_*.pt or a checkpoints/*.pt")
    parser.add_argument("--output-dir", required=True, help="a new (or empty) folder for the export")
    parser.add_argument("--training-data", default="", help="what the model was trained on, for the model card")
    parser.add_argument("--metrics", help="a metrics.json (e.g. from zero_shot_eval) to list in the model card")
    parser.add_argument("--license", default="mit", help="licence identifier for the model card's metadata")
    return parser
