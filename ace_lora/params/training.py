"""The training command line, shared by train.py and train_multi_gpu.py."""
import argparse
from typing import Optional, Sequence

from ace_lora.data.labels import UNCERTAIN_POLICIES
from ace_lora.evaluation.tasks import TASKS
from ace_lora.model.config import LOSS_KINDS, add_setting_args
from ace_lora.model.methods import METHODS, get_method
from ace_lora.params import (
    HelpFormatter,
    add_config_arg,
    add_image_cache_args,
    add_model_args,
    add_runtime_args,
    parse_with_config,
)

# Flag defaults of a --demo run unless given on the command line or in --config (chosen for a robust,
# < 3 minute CPU run).
# the tiny random architectures --demo can train (model/tiny_model.py)
DEMO_MODELS = ("biomedclip", "openclip", "hf-siglip", "hf-clip")
DEFAULT_LR = 1e-3
DEMO_DEFAULTS = dict(output_dir="demo_output", epochs=12, batch_size=25, lr=2e-3, warmup_epochs=1, num_workers=0,
                     val_before_training=True, log_every_steps=1)


def add_training_args(parser: argparse.ArgumentParser, distributed: bool) -> None:
    """Every flag of the training scripts, grouped by concern."""
    add_config_arg(parser)
    model = parser.add_argument_group("model")
    add_model_args(model)
    model.add_argument("--method", default="ace_lora", choices=METHODS,
                       help="what trains (docs/reproducing.md): ace_lora, lora (LoRA only), full "
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
    model.add_argument("--demo-model", choices=DEMO_MODELS, default="biomedclip",
                       help="the tiny model of --demo: BiomedCLIP's architecture (timm ViT + BERT), OpenAI CLIP's "
                            "(open_clip's own ViT and causal text transformer), or a transformers SiglipModel "
                            "(MedSigLIP's layout) or CLIPModel (PLIP's)")

    lora = parser.add_argument_group("LoRA and ACE-HGNN")
    add_setting_args(lora)  # declared once, with the model config (ace_lora.model.config)
    lora.add_argument("--loss", default="auto", choices=("auto", *LOSS_KINDS),
                      help="auto: label_guided, or label_guided_siglip for a SigLIP-trained model (one with a logit "
                           "bias); label_guided: same-label pairs are not negatives (needs labels); clip: plain "
                           "InfoNCE; siglip / label_guided_siglip: the sigmoid loss (label-equal pairs positive). "
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
    add_image_cache_args(data, "train")
    data.add_argument("--fast-decode", action="store_true",
                      help="decode JPEGs at the smallest DCT scale of at least twice the input size (PIL draft): "
                           "several times faster, but the inputs differ slightly from the exact ones the release "
                           "trained on (docs/data.md); off by default")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=40, help="training epochs (the schedule spans all of them)")
    optim.add_argument("--max-steps", type=int,
                       help="stop after this many optimizer steps in total (the schedule still spans --epochs)")
    optim.add_argument("--lr", type=float, default=DEFAULT_LR, help="peak AdamW learning rate")
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
                           "'auto' (latest if it exists, else a new run; for requeued cluster jobs). Every setting "
                           "that shapes the run must be the same")
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
    return parse_with_config(parser, argv, early=("method", "demo"), layered_defaults=lambda early: {
        **get_method(early.method).defaults, **(DEMO_DEFAULTS if early.demo else {})})


