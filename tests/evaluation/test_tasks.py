"""Zero-shot task definitions: label readers, prompt names and --eval-datasets specs."""
import numpy as np
import pandas as pd
import pytest

from ace_lora.data.labels import NIH_LABELS
from ace_lora.errors import UserInputError
from ace_lora.evaluation.tasks import TASKS, get_task, parse_eval_specs


def test_chexpert_labels_are_the_one_class_set_and_bad_values_are_named():
    task = TASKS["chexpert"]
    table = pd.DataFrame({name: [0, 0] for name in task.label_columns})
    table["Path"] = ["a.jpg", "b.jpg"]
    table.loc[0, "Edema"], table.loc[1, "Atelectasis"] = 1, 1
    np.testing.assert_array_equal(task.read_labels(table, "t.csv"), [3, 0])
    table["Edema"] = table["Edema"].astype(object)
    table.loc[1, "Edema"] = "yes"
    with pytest.raises(UserInputError, match=r"^t.csv: row 2 \(Path b.jpg\): Edema must be 0 or 1, not 'yes'$"):
        task.read_labels(table, "t.csv")


def test_nih_prompt_names_raw_as_released_or_readable():
    assert get_task("nih").prompt_names == NIH_LABELS and "Pleural_Thickening" in get_task("nih").prompt_names
    readable = get_task("nih", "readable")
    assert "Pleural Thickening" in readable.prompt_names and readable.class_names == NIH_LABELS
    with pytest.raises(UserInputError):
        get_task("imagenet")


def test_eval_specs_name_task_csv_and_optional_root():
    assert parse_eval_specs(["chexpert:c.csv", "rsna:r.csv:/data"]) == [("chexpert", "c.csv", None),
                                                                         ("rsna", "r.csv", "/data")]
    with pytest.raises(UserInputError, match="must be TASK:CSV"):
        parse_eval_specs(["imagenet:x.csv"])
    with pytest.raises(UserInputError, match="lists a task twice"):
        parse_eval_specs(["rsna:a.csv", "rsna:b.csv"])
