"""CSV reading and the one row-numbering convention of every message."""
import numpy as np
import pandas as pd
import pytest

from ace_lora.data.tables import read_table, row_name, row_number, shown_value
from ace_lora.errors import UserInputError


def test_rows_count_data_rows_from_one_and_values_show_plainly():
    table = pd.DataFrame({"Path": ["a.png", "b.png"]})
    assert row_number(0) == 1 and row_name(table, 1, "Path") == "row 2 (Path b.png)"
    assert shown_value(np.int64(2)) == "2" and shown_value("yes") == "'yes'"


def test_read_table_strips_column_names_and_names_what_is_missing(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("ImageId, EncodedPixels\n1,-1\n")
    assert list(read_table(str(csv), ("ImageId", "EncodedPixels")).columns) == ["ImageId", "EncodedPixels"]
    with pytest.raises(UserInputError, match=r"t.csv: missing column\(s\) 'Label' \(found: ImageId, EncodedPixels\)"):
        read_table(str(csv), ("Label",))
    with pytest.raises(UserInputError, match="nope.csv: file not found"):
        read_table(str(tmp_path / "nope.csv"), ())
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(UserInputError, match="empty.csv: not a readable CSV file"):
        read_table(str(empty), ())
