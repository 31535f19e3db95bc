"""Output folders, atomic writes, strict JSON and JSON lines."""
import json
import math
import os
import pickle

import numpy as np
import pytest
import torch

from ace_lora.errors import UserInputError
from ace_lora.io import (
    append_jsonl,
    atomic_save,
    check_output_dir,
    check_output_file,
    prepare_output_dir,
    read_jsonl,
    strict_json,
)


def test_atomic_save_gives_usual_permissions(tmp_path):
    path = tmp_path / "x.pt"
    atomic_save({"a": torch.zeros(1)}, str(path))
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_atomic_save_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "x.pt"
    atomic_save({"a": torch.ones(1)}, str(path))
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        atomic_save({"a": lambda: None}, str(path))  # not picklable: torch.save fails half-way
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]  # no temporary file left


def test_strict_json_replaces_non_finite_values_and_numpy_scalars():
    value = {"a": float("nan"), "b": [np.float32(1.5), math.inf], "c": np.int64(3), 4: (1, None)}
    assert strict_json(value) == {"a": None, "b": [1.5, None], "c": 3, "4": [1, None]}
    json.dumps(strict_json(value), allow_nan=False)


def test_output_checks_create_nothing_and_name_the_problem(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("x")
    check_output_dir(str(tmp_path / "new" / "deeper"))
    assert not (tmp_path / "new").exists()
    with pytest.raises(UserInputError, match="exists and is not a folder"):
        check_output_dir(str(taken))
    with pytest.raises(UserInputError, match=r"cannot create the folder \(.*taken is not a folder\)"):
        check_output_dir(str(taken / "sub"))
    with pytest.raises(UserInputError, match="is a folder; give a file name"):
        check_output_file(str(tmp_path))
    assert prepare_output_dir(str(tmp_path / "made")) and (tmp_path / "made").is_dir()


def test_jsonl_appends_records_and_reads_them_back(tmp_path):
    path = str(tmp_path / "log.jsonl")
    assert read_jsonl(path) == []
    append_jsonl(path, {"step": 1})
    append_jsonl(path, {"step": 2, "loss": 0.5})
    assert read_jsonl(path) == [{"step": 1}, {"step": 2, "loss": 0.5}]
    assert os.path.getsize(path) > 0
