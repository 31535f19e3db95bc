"""The command lines of the scripts that evaluate or apply a model: zero-shot, retrieval, predict, export."""
import argparse

from ace_lora.evaluation.tasks import LOGIT_SCALES, NIH_PROMPT_NAMES, get_task
from ace_lora.params import (
    HelpFormatter,
    add_config_arg,
    add_device_args,
    add_image_cache_args,
    add_model_args,
    add_num_workers_arg,
    add_runtime_args,
    evaluation_parser,
)

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
    add_image_cache_args(data, "eval")
    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", default=f"results/{task.name}",
                        help="folder for the result files")
    output.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs (0 = none)")
    output.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    output.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_runtime_args(parser.add_argument_group("runtime"), batch_size=64, precision="fp32")
    return parser


# ---- prediction on your own images (predict.py) ----------------------------------------------------


PREDICT_DESCRIPTION = """Classify your own images with ACE-LoRA (or bare BiomedCLIP): zero-shot, with your own class
names.

Examples:
  python predict.py scans/ --classes pneumonia "pleural effusion" "no finding" --checkpoint ACE_LoRA.pt \
      --model local-dir:/models/biomedclip --output-dir results/my_scans
  python predict.py --csv my_images.csv --column file --classes classes.txt --heatmaps results/heatmaps
  python predict.py "slides/**/*.png" --classes "benign colon" "colon adenocarcinoma" \
      --templates "an H&E image of {}." "a histopathology image of {}."

Writes predictions.csv (path, one probability column per class, predicted), unreadable.csv when
--skip-unreadable skipped files, config.yaml, and with --heatmaps one overlay PNG per image and class
(listed in heatmaps.csv). A folder that holds a previous prediction is refused unless --overwrite.
The Python API is `ace_lora.load(...)` (ace_lora/evaluation/predict.py).
"""


def predict_parser(description: str = PREDICT_DESCRIPTION) -> argparse.ArgumentParser:
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
    add_image_cache_args(data, "eval")
    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", default="results/predict",
                        help="folder for predictions.csv, unreadable.csv and config.yaml")
    output.add_argument("--heatmaps", metavar="DIR", help="also write one similarity-map overlay PNG per image "
                                                          "and class to DIR (listed in heatmaps.csv)")
    output.add_argument("--overwrite", action="store_true",
                        help="replace a previous prediction in --output-dir (its files and listed heatmaps)")
    output.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    runtime = parser.add_argument_group("runtime")
    add_device_args(runtime, precision="fp32")
    runtime.add_argument("--batch-size", type=int, default=32, help="images per batch")
    add_num_workers_arg(runtime)
    return parser


# ---- image-text retrieval (zero_shot_eval/retrieval.py) --------------------------------------------


RETRIEVAL_DESCRIPTION = """Image-to-text and text-to-image retrieval with ACE-LoRA or the bare BiomedCLIP baseline.

Reads a CSV with an image and its report per row: CheXpert 5x200 (Path, Report Impression; its five
class columns give class-aware Precision@K), a MIMIC-CXR test split from dataset_prep/mimic_cxr_prep.py
(image_path, report), or any CSV (--image-column, --text-column). Identical reports are one gallery
item and count as correct for each other (docs/evaluation.md, "Retrieval").

    python zero_shot_eval/retrieval.py --checkpoint ACE_LoRA.pt --csv chexpert_5x200.csv \
        --data-root /data/chexpert --output-dir results/retrieval_chexpert

Writes metrics.json (Recall@1/5/10, mean and median rank, Precision@K), ranks.csv (one row per query)
and config.yaml.
"""


def retrieval_parser(description: str = RETRIEVAL_DESCRIPTION) -> argparse.ArgumentParser:
    """The command line of zero_shot_eval/retrieval.py."""
    parser, _ = evaluation_parser(description)
    data = parser.add_argument_group("data")
    data.add_argument("--csv", required=True, help="CSV with one image and its report per row")
    data.add_argument("--data-root", help="folder that relative image paths start from (default: the CSV's folder)")
    data.add_argument("--image-column", help="column of image paths (default: Path, else image_path)")
    data.add_argument("--text-column", help="column of report texts (default: 'Report Impression', else report)")
    add_image_cache_args(data, "eval")
    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", default="results/retrieval", help="folder for metrics.json and ranks.csv")
    output.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add_runtime_args(parser.add_argument_group("runtime"), batch_size=64, precision="fp32")
    return parser


# ---- export (export.py) ---------------------------------------------------------------------------


EXPORT_DESCRIPTION = """Export a trained ACE-LoRA model to a folder: the backbone with LoRA merged (a plain open_clip
model folder), the ACE-HGNN adapters and learned scale (safetensors + JSON), and a model card.

    python export.py --model local-dir:/models/biomedclip --checkpoint runs/ace/ACE-LoRA_weights_best.pt \
        --output-dir exports/ace_lora_mimic --training-data "MIMIC-CXR train split" \
        --metrics results/chexpert/metrics.json

Load it with `ace_lora.load("exports/ace_lora_mimic")`, with --checkpoint exports/ace_lora_mimic in any
evaluation script, or the merged backbone alone with open_clip (docs/evaluation.md, "Export and share").
"""


def export_parser(description: str = EXPORT_DESCRIPTION) -> argparse.ArgumentParser:
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
