"""Reading CSV files, and how messages name their rows: one convention everywhere (training,
evaluation, data preparation, dense splits).

"row N" counts data rows from 1: the header is not a row, so row 1 is the first line after the header
(a quoted cell spanning several lines, such as a CheXpert report, still makes one row).
"""
import os
from typing import Sequence

import numpy as np
import pandas as pd

from ace_lora.errors import UserInputError


def row_number(position: int) -> int:
    """The "row N" of the 0-based data row `position`."""
    return int(position) + 1


def row_name(table: pd.DataFrame, row: int, id_column: str) -> str:
    """'row N (<id column> X)' for the 0-based position `row`."""
    return f"row {row_number(row)} ({id_column} {table[id_column].iloc[row]})"


def shown_value(value) -> str:
    """repr of a cell value for messages, numpy scalars as plain Python values (2, not np.int64(2))."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def separator_hint(path: str) -> str:
    """' (the header looks ';'-separated ...)' when the first line splits on ';' or a tab but not on ',',
    the usual cause of pandas' 'Expected 1 fields in line N, saw 2'; '' otherwise."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            header = f.readline()
    except OSError:
        return ""
    for separator, name in ((";", "';'"), ("\t", "tab")):
        if separator in header and "," not in header:
            return (f" (the header looks {name}-separated: these files are comma-separated CSV; save it with "
                    "commas)")
    return ""


def read_table(path: str, required: Sequence[str], dtype=None) -> pd.DataFrame:
    """Read a CSV whose column names are stripped of spaces; raise if the file or a column is missing."""
    if not os.path.isfile(path):
        raise UserInputError(f"{path}: file not found")
    try:
        table = pd.read_csv(path, dtype=dtype)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UserInputError(f"{path}: not a readable CSV file ({str(error).splitlines()[0]})"
                             f"{separator_hint(path)}") from None
    table.columns = [str(name).strip() for name in table.columns]
    missing = [name for name in required if name not in table.columns]
    if missing:
        raise UserInputError(f"{path}: missing column(s) {', '.join(map(repr, missing))} "
                             f"(found: {', '.join(table.columns)}){separator_hint(path)}")
    return table
