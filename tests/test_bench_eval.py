"""The evaluation benchmark runs end to end on the tiny model and reports comparable throughputs."""
import json

import pytest

from benchmarks import bench_eval

REPORT_KEYS = {"images", "image_size", "batch_size", "num_workers", "device", "precision", "loop_images_per_second",
               "evaluator_images_per_second", "speedup", "max_abs_probability_difference"}


def test_bench_eval_reports_speedup_over_the_batch_size_1_loop(tiny_model_name, capsys, tmp_path):
    output = tmp_path / "reports" / "bench.json"
    # 64 images: enough that the evaluator's one-off costs (its first DataLoader, lazy imports) are amortised.
    assert bench_eval.main(["--model", tiny_model_name, "--images", "64", "--batch-size", "16", "--num-workers", "0",
                            "--image-size", "96", "--device", "cpu", "--output", str(output)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report) == REPORT_KEYS
    assert json.loads(output.read_text()) == report  # results are files
    assert report["images"] == 64 and report["batch_size"] == 16
    # Both paths score the same images with the same model: they must agree, not only be timed.
    assert report["max_abs_probability_difference"] < 1e-5
    assert report["speedup"] == pytest.approx(report["evaluator_images_per_second"] / report["loop_images_per_second"])
