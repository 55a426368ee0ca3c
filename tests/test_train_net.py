"""tools/train_net.py end to end on tiny data: train, checkpoint, resume, evaluate, 2 processes."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, TINY_TRAINING, run_tool

from maskrcnnpp.config_loader import build_cfg
from maskrcnnpp.machine import cpu_bfloat16_missing_reason
from maskrcnnpp.training import data_loader_workers

QUICKSTART = "configs/quickstart_synthetic.yaml"


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def trained(tiny_nuclei, tmp_path_factory):
    """Three training iterations with the final evaluation; the run the other tests continue."""
    output_dir = str(tmp_path_factory.mktemp("train"))
    result = run_tool(
        "train_net.py", "--config-file", QUICKSTART, *TINY_TRAINING, *tiny_nuclei["opts"],
        "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", output_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir, result


@pytest.mark.slow
def test_training_writes_checkpoints_metrics_and_segm_ap(trained):
    output_dir, result = trained
    for name in ("model_0000001.pth", "model_final.pth", "last_checkpoint", "config.yaml"):
        assert os.path.isfile(os.path.join(output_dir, name)), name
    metrics = read_metrics(output_dir)
    losses = [m for m in metrics if "total_loss" in m]
    assert losses and losses[-1]["iteration"] == 2
    evaluated = [m for m in metrics if "segm/AP" in m]
    assert evaluated, "the final evaluation did not record segm AP"
    assert {"segm/AP50", "segm/AP75", "bbox/AP"} <= set(evaluated[-1])
    assert "copypaste: Task: segm" in result.stdout + result.stderr


@pytest.mark.slow
def test_resume_continues_from_the_saved_iteration(trained, tiny_nuclei):
    output_dir, _ = trained
    result = run_tool(
        "train_net.py", "--config-file", QUICKSTART, "--resume", *TINY_TRAINING, *tiny_nuclei["opts"],
        "SOLVER.MAX_ITER", "5", "SOLVER.CHECKPOINT_PERIOD", "100", "OUTPUT_DIR", output_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    iterations = [m["iteration"] for m in read_metrics(output_dir) if "total_loss" in m]
    # The first run logged iteration 2; the resumed one starts at 3 and logs 4, never 0 again.
    assert iterations == [2, 4]
    assert "Resuming at iteration 3: replaying the data loader's first 3 batches" in (
        result.stdout + result.stderr)


@pytest.mark.slow
def test_eval_only_reports_segm_ap(trained, tiny_nuclei, tmp_path):
    output_dir, _ = trained
    result = run_tool(
        "train_net.py", "--config-file", QUICKSTART, "--eval-only", *TINY_TRAINING, *tiny_nuclei["opts"],
        "MODEL.WEIGHTS", os.path.join(output_dir, "model_final.pth"), "OUTPUT_DIR", str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "Evaluation results for segm" in log
    assert os.path.isfile(tmp_path / "inference" / "tiny_nuclei" / "coco_instances_results.json")


@pytest.mark.slow
def test_two_cpu_processes_train_with_gloo(tiny_nuclei, tmp_path):
    result = run_tool(
        "train_net.py", "--config-file", QUICKSTART, "--num-gpus", "2", "--dist-url", "auto",
        *TINY_TRAINING, *tiny_nuclei["opts"], "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "World size: 2" in result.stdout + result.stderr
    assert os.path.isfile(tmp_path / "model_final.pth")


def test_data_loader_workers_default_to_the_cores_of_each_process():
    cfg = build_cfg(QUICKSTART)
    assert cfg.DATALOADER.NUM_WORKERS == -1
    assert data_loader_workers(cfg) == max(1, min(8, len(os.sched_getaffinity(0))))
    cfg.DATALOADER.NUM_WORKERS = 3
    assert data_loader_workers(cfg) == 3


@pytest.mark.slow
def test_the_gpu_recipe_trains_on_the_cpu(tiny_nuclei, tmp_path):
    # The R50 dense config as shipped (AMP, 16 images per step), shrunk in size and length only:
    # in bfloat16 autocast on a CPU with bfloat16 instructions, in float32 on another.
    result = run_tool(
        "train_net.py", "--config-file", "configs/maskrcnnpp_R50.yaml", *TINY_TRAINING,
        *tiny_nuclei["opts"], "SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    precision = ("in bfloat16 autocast (SOLVER.AMP.ENABLED)" if cpu_bfloat16_missing_reason(torch) is None
                 else "in float32 (SOLVER.AMP.ENABLED False: no bfloat16 instructions)")
    assert f"running on the CPU (MODEL.DEVICE cpu) {precision}" in result.stderr
    losses = [m["total_loss"] for m in read_metrics(tmp_path) if "total_loss" in m]
    assert losses and all(loss == loss for loss in losses)  # trained, and no NaN


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_weights_of_an_uninterrupted_run(tiny_nuclei, tmp_path):
    # Deterministic training (CPU, data loaded in the training process): a run killed right after
    # a checkpoint and resumed must end exactly where an uninterrupted one ends.
    opts = [*TINY_TRAINING, *tiny_nuclei["opts"], "SOLVER.MAX_ITER", "40",
            "SOLVER.CHECKPOINT_PERIOD", "4", "TEST.EVAL_PERIOD", "0"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    result = run_tool("train_net.py", "--config-file", QUICKSTART, *opts, "OUTPUT_DIR", whole)
    assert result.returncode == 0, result.stderr[-3000:]

    child = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", QUICKSTART,
         *opts, "OUTPUT_DIR", str(killed)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    checkpoint = killed / "model_0000003.pth"
    while not (checkpoint.exists() and "model_0000003" in _read(killed / "last_checkpoint")):
        assert child.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert not (killed / "model_final.pth").exists()

    result = run_tool("train_net.py", "--config-file", QUICKSTART, "--resume", *opts,
                      "OUTPUT_DIR", killed)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [m["iteration"] for m in read_metrics(killed) if "total_loss" in m][-1] == 39
    expected = torch.load(whole / "model_final.pth", weights_only=True)["model"]
    resumed = torch.load(killed / "model_final.pth", weights_only=True)["model"]
    assert expected.keys() == resumed.keys()
    different = [key for key in expected if not torch.equal(expected[key], resumed[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _read(path):
    return path.read_text() if path.exists() else ""


@pytest.mark.slow
def test_overwrite_replaces_the_earlier_run_whole(trained, tiny_nuclei, tmp_path):
    earlier = tmp_path / "earlier"
    shutil.copytree(trained[0], earlier)
    (earlier / "model_0000099.pth").write_bytes(b"a checkpoint of the earlier run")
    result = run_tool("train_net.py", "--config-file", QUICKSTART, "--overwrite", *TINY_TRAINING,
                      *tiny_nuclei["opts"], "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD",
                      "100", "OUTPUT_DIR", earlier)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (earlier / "model_0000099.pth").exists()
    assert not (earlier / "model_0000001.pth").exists()  # the earlier run's checkpoint of step 2
    iterations = [m["iteration"] for m in read_metrics(earlier) if "total_loss" in m]
    assert iterations == sorted(set(iterations)) and iterations[-1] == 1  # this run's steps only
