"""On a GPU: mixed-precision training stays finite, the dense backbone computes on CUDA what it
computes on the CPU, two processes train over NCCL, and the benchmark measures CUDA and AMP.
Every test here skips where torch sees no GPU (CPU CI)."""
import copy
import json
import math
import os

import pytest
import torch
from conftest import REPO, TINY_TRAINING, run_tool

from maskrcnnpp.config_loader import build_cfg
from detectron2.modeling import build_backbone

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")]

QUICKSTART = "configs/quickstart_synthetic.yaml"
DENSE = os.path.join(REPO, "configs", "quickstart_synthetic_dense.yaml")


def losses_of(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        entries = [json.loads(line) for line in f]
    return [entry["total_loss"] for entry in entries if "total_loss" in entry]


def test_amp_training_iterations_give_finite_losses(tiny_nuclei, tmp_path):
    result = run_tool(
        "train_net.py", "--config-file", QUICKSTART, *TINY_TRAINING, *tiny_nuclei["opts"],
        "MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True", "SOLVER.MAX_ITER", "20",
        "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "config.yaml") as f:
        assert "AMP:\n    ENABLED: true" in f.read()
    losses = losses_of(tmp_path)
    assert len(losses) >= 1 and all(math.isfinite(loss) for loss in losses)


def test_dense_backbone_computes_the_same_on_cuda_as_on_the_cpu():
    cfg = build_cfg(DENSE, ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    cpu = build_backbone(cfg).eval()
    cuda = copy.deepcopy(cpu).cuda()
    image = torch.randn(2, 3, 160, 224)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        expected, got = cpu(image), cuda(image.cuda())
    for name, value in expected.items():
        error = (got[name].cpu() - value).norm() / value.norm()
        assert error < 1e-4, f"{name}: relative error {error:.2e}"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_processes_train_over_nccl(tiny_nuclei, tmp_path):
    result = run_tool(
        "train_net.py", "--config-file", QUICKSTART, "--num-gpus", "2", "--dist-url", "auto",
        *TINY_TRAINING, *tiny_nuclei["opts"], "MODEL.DEVICE", "cuda", "SOLVER.MAX_ITER", "4",
        "OUTPUT_DIR", tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "World size: 2" in log and "nccl" in log.lower()
    assert os.path.isfile(tmp_path / "model_final.pth")


def test_benchmark_measures_cuda_with_amp(tmp_path):
    out = tmp_path / "benchmark.json"
    result = run_tool(
        "benchmark.py", "--config-file", QUICKSTART, DENSE, "--device", "cuda", "--amp",
        "--image-size", "256", "--warmup", "2", "--repeats", "5", "--train-repeats", "3",
        "--out", out,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["settings"]["amp"] and report["machine"]["device"] == torch.cuda.get_device_name()
    assert report["machine"]["cuda"] == torch.version.cuda and report["machine"]["driver"]
    assert report["memory_method"].startswith("CUDA")
    for measured in report["results"]:
        assert measured["images_per_s"] > 0 and measured["train_images_per_s"] > 0
        assert measured["peak_memory_mb"] > 0
