"""Where a CSV's image paths point: the one rule every reader uses.

Relative paths in a CSV start at `--data-root`, which defaults to the CSV's own folder (the prepared
CSVs write their paths relative to themselves); absolute paths are used as they are.
"""
import os
from typing import Dict, Optional

from ace_lora.errors import UserInputError

SIIM_IMAGE_SUFFIXES = (".png", ".dcm")  # in order of preference when both exist for one ImageId
RSNA_IMAGE_DIR = "stage_2_train_images"  # the download's image folder, next to stage_2_train_labels.csv


def data_root_for(csv_path: str, data_root: Optional[str] = None) -> str:
    """`data_root`, or the folder that holds `csv_path` when it is None."""
    return os.path.dirname(os.path.abspath(csv_path)) if data_root is None else data_root


def resolve_path(path: str, data_root: str) -> str:
    """A relative path joined to `data_root`; an absolute path as it is."""
    path = os.path.expanduser(str(path))
    return path if os.path.isabs(path) else os.path.join(data_root, path)


def index_siim_images(image_dir: str) -> Dict[str, str]:
    """ImageId -> path of `<ImageId>.png` or `.dcm` anywhere under `image_dir` (one walk; PNG wins)."""
    if not os.path.isdir(image_dir):
        raise UserInputError(f"{image_dir}: image folder not found")
    found = {}
    for folder, subfolders, files in os.walk(image_dir):
        subfolders.sort()
        for file_name in sorted(files):
            stem, suffix = os.path.splitext(file_name)
            if suffix.lower() not in SIIM_IMAGE_SUFFIXES:
                continue
            path = os.path.join(folder, file_name)
            if stem in found:
                if os.path.splitext(found[stem])[1].lower() == suffix.lower():
                    raise UserInputError(f"{image_dir}: image {stem} is there twice: {found[stem]} and {path}")
                if suffix.lower() != SIIM_IMAGE_SUFFIXES[0]:
                    continue
            found[stem] = path
    return found
