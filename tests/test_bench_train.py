"""benchmarks/bench_train.py on the tiny model: both variants run and the JSON summary is consistent."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import bench_train  # noqa: E402


@pytest.mark.slow
def test_bench_reports_both_variants(tiny_model_name, capsys):
    bench_train.main(["--model", tiny_model_name, "--batch-size", "4", "--steps", "2", "--warmup-steps", "1",
                      "--device", "cpu"])
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert set(summary) == {"ace_step_s", "full_step_s", "ratio", "ace_peak_mb", "full_peak_mb"}
    assert all(value > 0 for value in summary.values())
    assert abs(summary["ratio"] - summary["ace_step_s"] / summary["full_step_s"]) < 1e-9
    assert lines[0].strip().startswith("ace:") and lines[1].strip().startswith("full:")
