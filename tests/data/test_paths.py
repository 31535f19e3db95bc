"""Where CSV image paths point: relative to --data-root, by default the CSV's own folder."""
import os

import pytest

from ace_lora.data.paths import data_root_for, index_siim_images, resolve_path
from ace_lora.errors import UserInputError


def test_relative_paths_start_at_the_csv_s_folder_unless_a_root_is_given(tmp_path):
    csv = tmp_path / "splits" / "test.csv"
    assert data_root_for(str(csv)) == str(tmp_path / "splits")
    assert data_root_for(str(csv), "/data/nih") == "/data/nih"
    assert resolve_path("images/a.png", "/data/nih") == os.path.join("/data/nih", "images/a.png")
    assert resolve_path("/abs/a.png", "/data/nih") == "/abs/a.png"
    assert resolve_path("~/a.png", "/data") == os.path.expanduser("~/a.png")


def test_siim_images_are_found_anywhere_below_the_root_png_first(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/1.2.3.dcm", "a/b/1.2.3.png", "a/4.5.dcm", "a/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert index_siim_images(str(tmp_path)) == {"1.2.3": str(tmp_path / "a/b/1.2.3.png"),
                                                 "4.5": str(tmp_path / "a/4.5.dcm")}
    (tmp_path / "4.5.dcm").write_bytes(b"x")
    with pytest.raises(UserInputError, match="image 4.5 is there twice"):
        index_siim_images(str(tmp_path))
    with pytest.raises(UserInputError, match="image folder not found"):
        index_siim_images(str(tmp_path / "absent"))
