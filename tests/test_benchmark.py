"""tools/benchmark.py on the CPU: every field measured, configs interleaved, ratios to the first."""
import json

import pytest
from conftest import REPO, run_tool

from maskrcnnpp.analysis.speed import BenchmarkSettings
from maskrcnnpp.cli import split_overrides
from maskrcnnpp.errors import UserInputError
from maskrcnnpp.machine import label as machine_label

QUICKSTART = f"{REPO}/configs/quickstart_synthetic.yaml"


@pytest.mark.slow
def test_benchmark_measures_two_configs_on_the_cpu(tmp_path):
    dense = f"{REPO}/configs/quickstart_synthetic_dense.yaml"
    out = tmp_path / "benchmark.json"
    result = run_tool(
        "benchmark.py", "--config-file", QUICKSTART, dense, "--device", "cpu",
        "--image-size", "128", "--warmup", "1", "--repeats", "2", "--train-repeats", "1",
        "--detections", "20", "--out", out, "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ms/image" in result.stdout and "ratios to first" in result.stdout
    report = json.loads(out.read_text())
    assert report["settings"]["image_size"] == 128 and report["machine"]["device"] == "cpu"
    assert f"{machine_label(report['machine'])}, torch " in result.stdout  # what was measured on
    assert report["memory_method"].startswith("CPU: growth of the peak resident set size")
    first, second = report["results"]
    assert [first["config"], second["config"]] == ["quickstart_synthetic.yaml",
                                                   "quickstart_synthetic_dense.yaml"]
    for measured in (first, second):
        latency = measured["latency_ms"]
        spread = [latency[key] for key in ("min", "p25", "median", "p75", "max")]
        assert 0 < spread[0] and spread == sorted(spread)
        assert measured["ms_per_image"] == latency["median"]  # batch of one
        assert measured["images_per_s"] == pytest.approx(1000 / latency["median"])
        assert measured["detections_per_image"] == 20  # random weights: fixed detections
        assert measured["model_params"] > 1e6 and measured["model_flops"] > 1e8
        assert measured["train_step_s"] > 0
        assert measured["peak_memory_mb"] > 0 and measured["train_peak_memory_mb"] > 0
    for key in ("ms_per_image", "train_step_s", "model_flops", "peak_memory_mb"):
        assert first[f"{key}_ratio"] == 1.0
        assert second[f"{key}_ratio"] == pytest.approx(second[key] / first[key])
    assert second["neck_flops"] > first["neck_flops"]  # the dense grid costs more than FPN


def test_the_data_loader_is_timed_as_one_worker_on_one_thread(tmp_path):
    out = tmp_path / "loader.json"
    result = run_tool("benchmark.py", "--config-file", QUICKSTART, "--data-loader", "3",
                      "--out", out, "INPUT.NUCLEI_AUG.NAMES", "['scaled_crop', 'hflip']",
                      "INPUT.NUCLEI_AUG.CROP_SIZE", "64", "INPUT.MIN_SIZE_TRAIN", "(0,)")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["batches"] == 3 and report["images"] == 6  # IMS_PER_BATCH 2
    assert report["torch_threads"] == 1  # as PyTorch runs each loader worker
    assert report["images_per_second_per_worker"] == pytest.approx(6 / report["seconds"])
    assert report["crop_size"] == 64 and report["augmentations"] == ["scaled_crop", "hflip"]
    assert "images/s per worker process" in result.stdout


def test_overrides_are_split_from_options_that_take_several_values():
    options, overrides = split_overrides(
        ["--config-file", "a.yaml", "B.YAML", "--out", "OUT", "SOLVER.MAX_ITER", "2", "SEED", "1"]
    )
    assert options == ["--config-file", "a.yaml", "B.YAML", "--out", "OUT"]
    assert overrides == ["SOLVER.MAX_ITER", "2", "SEED", "1"]
    with pytest.raises(UserInputError, match="put KEY VALUE pairs last"):
        split_overrides(["--config-file", "a.yaml", "SOLVER.MAX_ITER", "2", "--amp"])


@pytest.mark.parametrize(
    "settings, message",
    [
        (BenchmarkSettings(amp=True), "lacks the bfloat16 instructions"),
        (BenchmarkSettings(repeats=0), "repeats=0 is too small"),
        (BenchmarkSettings(device="tpu"), "device='tpu' is not valid"),
    ],
)
def test_bad_settings_are_explained(settings, message, cpu_without_bfloat16):
    with pytest.raises(UserInputError, match=message):
        settings.check()
