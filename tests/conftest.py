"""Shared fixtures. The repository root is put on sys.path so tests import `ace_lora` and the scripts."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SHARED = os.path.join(os.path.dirname(ROOT), "shared")


@pytest.fixture(scope="session")
def shared_dir():
    """The read-only shared/ folder beside the repository (parity fixture, released checkpoint)."""
    if not os.path.isdir(os.path.join(SHARED, "parity")):
        pytest.skip(f"shared/ folder not found at {SHARED}: parity and released-checkpoint tests need it")
    return SHARED


@pytest.fixture(scope="session")
def fake_biomedclip_dir(shared_dir, tmp_path_factory):
    """Full-size BiomedCLIP architecture with seeded random weights, built once per session."""
    out = tmp_path_factory.mktemp("fake_biomedclip")
    script = os.path.join(shared_dir, "parity", "make_fake_biomedclip.py")
    subprocess.run([sys.executable, script, str(out)], check=True, capture_output=True)
    return str(out)


@pytest.fixture(scope="session")
def tiny_model_name(tmp_path_factory):
    """A tiny random BiomedCLIP-architecture model folder (`local-dir:` name)."""
    from ace_lora.tiny_model import write_tiny_biomedclip

    words = ("a chest x-ray image of findings suggesting no finding pneumonia pneumothorax atelectasis "
             "cardiomegaly consolidation edema pleural effusion there is")
    return write_tiny_biomedclip(str(tmp_path_factory.mktemp("tiny_biomedclip")), words.split())
