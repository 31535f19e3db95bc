"""`--demo`: train ACE-LoRA end to end on a synthetic data set with a tiny random model, offline, on a CPU
(ace_lora.train.launch runs it: prepare_demo, the training run, write_demo_metrics).

prepare_demo writes <output-dir>/demo_data (ace_lora/data/synthetic.py) and a tiny model (`--demo-model`:
BiomedCLIP-shaped, whose vocabulary covers the reports and the zero-shot prompts, or OpenAI-CLIP-shaped),
then points the run's flags at them: the
held-out split is the `chexpert` validation set, evaluated before training and after every epoch.
write_demo_metrics summarises AUROC and accuracy before and after training in demo_metrics.json.
"""
import argparse
import json
import os
from dataclasses import asdict
from typing import Tuple

from ace_lora.data.synthetic import DemoDataset, write_demo_dataset
from ace_lora.io import read_jsonl, with_values
from ace_lora.model.config import LOCAL_PREFIX, TRANSFORMERS_PREFIX
from ace_lora.model.tiny_model import write_tiny_biomedclip, write_tiny_openclip, write_tiny_transformers
from ace_lora.train.distributed import DistributedContext, barrier, broadcast_object
from ace_lora.train.loggers import METRICS_FILE
from ace_lora.train.run_state import RELEASED_NAME

DEMO_DATA = dict(n_train=600, n_test_per_class=20, image_size=64)
DEMO_DIR = "demo_data"
TINY_MODEL_DIRS = {"biomedclip": "tiny_biomedclip", "openclip": "tiny_openclip", "hf-siglip": "tiny_hf_siglip",
                   "hf-clip": "tiny_hf_clip"}  # --demo-model


def prepare_demo(args, context: DistributedContext) -> Tuple[argparse.Namespace, DemoDataset]:
    """Generate (rank 0) the demo data and model once per output folder; the flags with the data and model set."""
    root = os.path.abspath(os.path.join(args.output_dir, DEMO_DIR))
    settings_path = os.path.join(root, "settings.json")
    settings = {**DEMO_DATA, "seed": args.seed, "model": args.demo_model}
    model_dir = os.path.join(root, TINY_MODEL_DIRS[args.demo_model])
    data = None
    if context.is_main:
        previous = None
        if os.path.isfile(settings_path):
            with open(settings_path, encoding="utf-8") as f:
                previous = json.load(f)
        if previous is not None and previous.get("settings") == settings:
            data = DemoDataset(**previous["dataset"])
        else:
            print(f"writing the synthetic demo data set to {root}")
            data = write_demo_dataset(root, seed=args.seed, **DEMO_DATA)
            if args.demo_model == "openclip":  # its BPE tokenizer knows every English word
                write_tiny_openclip(model_dir, image_size=DEMO_DATA["image_size"], seed=args.seed)
            elif args.demo_model.startswith("hf-"):
                write_tiny_transformers(model_dir, data.vocabulary, args.demo_model[3:],
                                        image_size=DEMO_DATA["image_size"], seed=args.seed)
            else:
                write_tiny_biomedclip(model_dir, data.vocabulary, image_size=DEMO_DATA["image_size"], seed=args.seed)
            with open(settings_path, "w", encoding="utf-8") as f:
                json.dump({"settings": settings, "dataset": asdict(data)}, f, indent=1)
    data = broadcast_object(data, context)
    barrier(context)
    prefix = TRANSFORMERS_PREFIX if args.demo_model.startswith("hf-") else LOCAL_PREFIX
    return with_values(args, model=f"{prefix}{model_dir}", train_csv=data.train_csv, data_root=data.data_root,
                       label_csv=None, split="train", val_dataset="chexpert", val_csv=data.test_csv,
                       val_data_root=data.data_root), data


def write_demo_metrics(args, data: DemoDataset, seconds: float) -> dict:
    """demo_metrics.json: zero-shot AUROC/accuracy on the held-out split before and after training."""
    records = [r for r in read_jsonl(os.path.join(args.output_dir, METRICS_FILE)) if "val_auroc" in r]
    before = next((r for r in records if r["step"] == 0), {})
    after = records[-1] if records else {}
    summary = {
        "auroc_before": before.get("val_auroc"), "auroc_after": after.get("val_auroc"),
        "accuracy_before": before.get("val_accuracy"), "accuracy_after": after.get("val_accuracy"),
        "steps": after.get("step"), "epochs": after.get("epoch"), "seconds": seconds,
        "n_train": data.n_train, "n_test": data.n_test,
        "checkpoint": os.path.join(args.output_dir, RELEASED_NAME.format("last")),
    }
    with open(os.path.join(args.output_dir, "demo_metrics.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    shown = {k: "n/a" if summary[k] is None else f"{summary[k]:.3f}" for k in ("auroc_before", "auroc_after")}
    print(f"demo: zero-shot AUROC on the held-out split {shown['auroc_before']} before -> {shown['auroc_after']} "
          f"after training ({seconds:.0f} s); see {args.output_dir}")
    return summary
