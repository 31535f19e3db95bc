"""The input benchmark on small generated images: exact tensors, consistent ratios, the cache far ahead."""
import json

import pytest

from benchmarks import bench_input

RATIOS = ("project", "cache", "cache_build", "fast_decode")


def test_bench_input_reports_exact_paths_and_the_cache_ahead(tmp_path, capsys):
    output = tmp_path / "bench.json"
    kept = tmp_path / "images"
    assert bench_input.main(["--images", "4", "--jpeg-size", "300x360", "--dicoms", "2", "--dicom-size", "128",
                             "--size", "32", "--batch-size", "3", "--keep-images", str(kept),
                             "--output", str(output)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(output.read_text()) == report
    assert report["identical"] and report["dicom"]["identical"]  # the fast paths change no input value
    for name in RATIOS:
        assert report[f"{name}_vs_release"] == pytest.approx(report[f"{name}_img_s"] / report["release_img_s"])
    assert report["cache_img_s"] > 5 * report["project_img_s"]  # memory-speed reads beat decoding by far
    assert 0 <= report["fast_decode_max_abs_diff"] <= 255 and report["fast_decode_mean_abs_diff"] >= 0
    assert report["torch_threads"] == 1
    assert len(list(kept.glob("*.jpg"))) == 4 and (kept / "train.csv").read_text().startswith("image_path,report")


def test_bench_input_refuses_a_bad_size(capsys):
    with pytest.raises(SystemExit) as stopped:
        bench_input.main(["--jpeg-size", "big"])
    assert stopped.value.code == 2 and "--jpeg-size must be WxH" in capsys.readouterr().err
