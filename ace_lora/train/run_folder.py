"""A training run's output folder: refuse to mix or destroy runs. A folder that holds a run (any of RUN_FILES) is
only used again to continue it (`--resume`) or when `--overwrite` says to start over (its run files are then
removed first). The run holds the folder's lock (ace_lora.folder_lock) for its lifetime.
"""
import os
import shutil
from typing import List

from ace_lora.errors import UserInputError

# What a run writes; any of them means the folder holds a run.
RUN_FILES = ("config.yaml", "metrics.jsonl", "steps.jsonl", "training_curves.png", "ACE-LoRA_weights_last.pt",
             "ACE-LoRA_weights_best.pt", "checkpoints", "demo_metrics.json", "tensorboard")


def run_files_in(folder: str) -> List[str]:
    return [name for name in RUN_FILES if os.path.lexists(os.path.join(folder, name))]


def check_run_folder(folder: str, resume: bool, overwrite: bool) -> None:
    """Refuse a new run in a folder that holds another one (nothing is touched)."""
    present = run_files_in(folder) if os.path.isdir(folder) else []
    if present and not resume and not overwrite:
        raise UserInputError(f"--output-dir {folder} holds a run ({', '.join(present)}): continue it with --resume "
                             "latest, start over with --overwrite, or choose another --output-dir")


def clear_run_files(folder: str) -> None:
    """--overwrite: remove the previous run's files (only those a run writes)."""
    for name in run_files_in(folder):
        path = os.path.join(folder, name)
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
