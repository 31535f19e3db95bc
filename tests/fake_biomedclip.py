"""The full-size fake BiomedCLIP (random weights, real architecture) and the shared parity files.

`/work/shared`-style files live next to the repository (`<repo>/../shared`): the released checkpoint,
the parity fixture and the script that builds the fake model. Tests that need them are skipped with
the reason when they are absent. Import the fixture into the one test module that uses it: pytest
builds a session fixture once per module that defines or imports it.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
RELEASED_CHECKPOINT = os.path.join(SHARED, "checkpoints", "ACE_LoRA.pt")
PARITY_DIR = os.path.join(SHARED, "parity")
MAKE_FAKE = os.path.join(PARITY_DIR, "make_fake_biomedclip.py")


def require_shared(*paths: str) -> None:
    """Skip the calling test unless every path exists."""
    for path in paths:
        if not os.path.exists(path):
            pytest.skip(f"shared parity files not found: {path} (expected the shared folder at {SHARED})")


@pytest.fixture(scope="session")
def fake_biomedclip(tmp_path_factory) -> str:
    """`local-dir:` name of a freshly built full-size fake BiomedCLIP (~800 MB, ~15 s)."""
    require_shared(MAKE_FAKE, RELEASED_CHECKPOINT)
    out_dir = tmp_path_factory.mktemp("fake_biomedclip")
    subprocess.run([sys.executable, MAKE_FAKE, str(out_dir)], check=True, capture_output=True)
    return f"local-dir:{out_dir}"
