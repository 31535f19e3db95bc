"""Where a CSV's image paths point: the one rule every reader uses.

Relative paths in a CSV start at `--data-root`, which defaults to the CSV's own folder (the prepared
CSVs write their paths relative to themselves); absolute paths are used as they are.
"""
import os
from typing import Optional


def data_root_for(csv_path: str, data_root: Optional[str] = None) -> str:
    """`data_root`, or the folder that holds `csv_path` when it is None."""
    return os.path.dirname(os.path.abspath(csv_path)) if data_root is None else data_root


def resolve_path(path: str, data_root: str) -> str:
    """A relative path joined to `data_root`; an absolute path as it is."""
    path = os.path.expanduser(str(path))
    return path if os.path.isabs(path) else os.path.join(data_root, path)
