"""Run-folder rules: which files make a run and what --overwrite removes."""

import pytest

from ace_lora.errors import UserInputError
from ace_lora.train.run_folder import check_run_folder, clear_run_files, run_files_in


def test_a_folder_with_run_files_holds_a_run_and_overwrite_removes_only_those(tmp_path):
    check_run_folder(str(tmp_path / "absent"), resume=False, overwrite=False)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "demo_data").mkdir()
    check_run_folder(str(tmp_path), resume=False, overwrite=False)  # no run files: a fresh folder
    (tmp_path / "steps.jsonl").write_text("{}\n")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"x")
    assert run_files_in(str(tmp_path)) == ["steps.jsonl", "checkpoints"]
    with pytest.raises(UserInputError, match=r"holds a run \(steps.jsonl, checkpoints\): continue it with --resume"):
        check_run_folder(str(tmp_path), resume=False, overwrite=False)
    check_run_folder(str(tmp_path), resume=True, overwrite=False)
    check_run_folder(str(tmp_path), resume=False, overwrite=True)
    clear_run_files(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_data", "notes.txt"]
