"""benchmarks/bench_train.py on the tiny model: every variant runs in its own process and the summary is consistent."""
import json
import os
import sys

import pytest

from tests.conftest import error_exit_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import bench_train  # noqa: E402


@pytest.mark.slow
def test_bench_reports_every_variant_and_the_hypergraphs_share(tiny_model_name, capsys):
    bench_train.main(["--model", tiny_model_name, "--batch-size", "4", "--steps", "2", "--warmup-steps", "1",
                      "--device", "cpu", "--threads", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert [line.split(":")[0].strip() for line in lines[:3]] == ["ace", "lora", "full"]
    assert summary["ratio"] == pytest.approx(summary["ace_step_s"] / summary["full_step_s"], rel=1e-12)
    assert summary["hgnn_time_share"] == pytest.approx(1 - summary["lora_step_s"] / summary["ace_step_s"], rel=1e-12)
    assert summary["hgnn_memory_share"] == pytest.approx(1 - summary["lora_peak_mb"] / summary["ace_peak_mb"],
                                                         rel=1e-12)
    # the hypergraphs alone are a part of the ACE-LoRA step (on 197 + 32 tokens, far from all of it)
    assert 0 < summary["hgnn_s"] < summary["ace_step_s"]
    assert summary["hgnn_time_share_alone"] == pytest.approx(summary["hgnn_s"] / summary["ace_step_s"], rel=1e-12)


def test_bench_flags_are_checked(capsys):
    line = error_exit_line(capsys, bench_train.main, ["--image-size", "224"])
    assert line == "error: --image-size goes with --architecture"
