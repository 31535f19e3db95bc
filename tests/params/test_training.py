"""The training command line: demo defaults are flags, the input-pipeline flags and their defaults."""
import pytest

from ace_lora.errors import UserInputError
from ace_lora.params import MAX_DEFAULT_WORKERS, default_num_workers
from ace_lora.params.training import DEMO_DEFAULTS, parse_training_args


def test_demo_defaults_apply_and_flags_win():
    demo = parse_training_args(["--demo"], "", distributed=False)
    assert all(getattr(demo, k) == v for k, v in DEMO_DEFAULTS.items())
    assert parse_training_args(["--demo", "--epochs", "2"], "", distributed=False).epochs == 2


def test_input_pipeline_flags(monkeypatch, tmp_path):
    args = parse_training_args(["--train-csv", "x.csv"], "", distributed=False)
    assert args.image_cache is None and not args.image_cache_rebuild and not args.fast_decode
    assert args.num_workers == default_num_workers()
    args = parse_training_args(["--train-csv", "x.csv", "--image-cache", str(tmp_path), "--image-cache-rebuild",
                                "--fast-decode"], "", distributed=False)
    assert args.image_cache == str(tmp_path) and args.image_cache_rebuild and args.fast_decode


def test_default_workers_follow_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(12)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_num_workers() == 11
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four training processes share the node's CPUs
    assert default_num_workers() == 2
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(128)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert default_num_workers() == MAX_DEFAULT_WORKERS
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert default_num_workers() == 0  # one CPU: decode in the training process itself


def test_negative_workers_are_refused():
    from ace_lora.params import check_runtime_args
    with pytest.raises(UserInputError, match="--num-workers must be >= 0"):
        check_runtime_args(parse_training_args(["--num-workers", "-1"], "", distributed=False))
