"""How messages name the rows of a CSV file: one convention everywhere (training, evaluation, data
preparation, dense splits).

"row N" counts data rows from 1: the header is not a row, so row 1 is the first line after the header
(a quoted cell spanning several lines, such as a CheXpert report, still makes one row).
"""
import numpy as np
import pandas as pd


def row_number(position: int) -> int:
    """The "row N" of the 0-based data row `position`."""
    return int(position) + 1


def row_name(table: pd.DataFrame, row: int, id_column: str) -> str:
    """'row N (<id column> X)' for the 0-based position `row`."""
    return f"row {row_number(row)} ({id_column} {table[id_column].iloc[row]})"


def shown_value(value) -> str:
    """repr of a cell value for messages, numpy scalars as plain Python values (2, not np.int64(2))."""
    return repr(value.item() if isinstance(value, np.generic) else value)
