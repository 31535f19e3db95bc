"""Shared fixtures. The repository root is put on sys.path so tests import `ace_lora` and the scripts."""
import os
import subprocess
import sys
from collections import Counter

import pytest
from filelock import FileLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SHARED = os.path.join(os.path.dirname(ROOT), "shared")


def pytest_configure(config):
    """Each pytest-xdist worker, and every program its tests start, computes on one CPU thread: with one
    worker per core, more threads only oversubscribe the cores (measured: two workers of two threads each
    were slower than one process)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch
        torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """The files with the most `slow` tests first, the order inside each file kept: pytest-xdist gives each
    worker whole files in this order, and a long file started last would leave the other workers idle."""
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])


IGNORED_IN_CHECKOUT = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", "venv", ".venv"}


def checkout_entries() -> set:
    """Every file and folder of the checkout, less git's and Python's own."""
    entries = set()
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in IGNORED_IN_CHECKOUT and not d.endswith(".egg-info")]
        entries.update(os.path.relpath(os.path.join(folder, name), ROOT) for name in dirs + files)
    return entries


@pytest.fixture(scope="session", autouse=True)
def nothing_is_written_into_the_checkout():
    """Tests write into their temporary folders only: a script run with a default output folder (results/...)
    would leave it in the user's checkout."""
    before = checkout_entries()
    yield
    written = sorted(checkout_entries() - before)
    assert not written, f"tests wrote into the checkout: {', '.join(written[:5])}"


@pytest.fixture(scope="session")
def shared_dir():
    """The read-only shared/ folder beside the repository (parity fixture, released checkpoint)."""
    if not os.path.isdir(os.path.join(SHARED, "parity")):
        pytest.skip(f"shared/ folder not found at {SHARED}: parity and released-checkpoint tests need it")
    return SHARED


@pytest.fixture(scope="session")
def fake_biomedclip_dir(shared_dir, tmp_path_factory):
    """Full-size BiomedCLIP architecture with seeded random weights (750 MB, 12 s), built once per test run:
    pytest-xdist workers share one copy in the run's temporary folder, the first to need it builds it."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = tmp_path_factory.getbasetemp().parent  # the run's folder, above every worker's own
    else:
        root = tmp_path_factory.getbasetemp()
    out, done = root / "fake_biomedclip", root / "fake_biomedclip.done"
    with FileLock(str(root / "fake_biomedclip.lock")):
        if not done.is_file():
            script = os.path.join(shared_dir, "parity", "make_fake_biomedclip.py")
            subprocess.run([sys.executable, script, str(out)], check=True, capture_output=True)
            done.touch()
    return str(out)


@pytest.fixture(scope="session")
def tiny_model_name(tmp_path_factory):
    """A tiny random BiomedCLIP-architecture model folder (`local-dir:` name)."""
    from ace_lora.model.tiny_model import write_tiny_biomedclip

    words = ("a chest x-ray image of findings suggesting no finding pneumonia pneumothorax atelectasis "
             "cardiomegaly consolidation edema pleural effusion there is")
    return write_tiny_biomedclip(str(tmp_path_factory.mktemp("tiny_biomedclip")), words.split())


def error_exit_line(capsys, main, argv, progress_lines: bool = False) -> str:
    """Run an entry point's `main(argv)`, expect exit status 2 and one `error: ...` line on stderr (after a
    progress bar when `progress_lines`), no traceback; returns that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    if progress_lines:
        errors = [line for line in err if "error" in line.lower() or "Traceback" in line]
        assert len(errors) == 1 and err[-1].startswith("error: "), err
    else:
        assert len(err) == 1 and err[0].startswith("error: "), err
    return err[-1]


def tiny_model_with_lora_updates(model_name: str):
    """A tiny ACE-LoRA model whose LoRA B matrices are random (seed 0), so that LoRA changes its outputs."""
    import torch

    from ace_lora.model.config import AceLoRAConfig
    from ace_lora.model.factory import build_model
    torch.manual_seed(0)
    model = build_model(model_name, AceLoRAConfig())
    for layers in (model.text_lora, model.vision_lora):
        for parts in layers.values():
            for factors in parts.values():
                torch.nn.init.normal_(factors.lora_B, std=0.05)
    return model


TINY_WORDS = ("a chest x-ray image of findings suggesting no finding pneumonia pneumothorax atelectasis cardiomegaly "
              "consolidation edema pleural effusion there is").split()


@pytest.fixture(scope="session")
def tiny_transformers(tmp_path_factory):
    """Tiny random transformers folders, {"clip": "hf:...", "siglip": "hf:..."}: PLIP's (CLIPModel) and
    MedSigLIP's (SiglipModel) layouts, with word-level tokenizers and the models' own image processors."""
    from ace_lora.model.tiny_model import TRANSFORMERS_LAYOUTS, write_tiny_transformers
    return {layout: write_tiny_transformers(str(tmp_path_factory.mktemp(f"tiny_hf_{layout}")), TINY_WORDS, layout)
            for layout in TRANSFORMERS_LAYOUTS}
