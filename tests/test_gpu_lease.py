"""scripts/gpu_lease.sh: its dry run on the CPU goes through every step of the GPU lease and
gathers at most 8 files; a step past its limit is stopped and the next one runs; a missing GPU
or kit is one line before anything starts."""
import json
import os
import subprocess
import tarfile

import pytest
import torch
from conftest import REPO

from maskrcnnpp.machine import cpu_name

LEASE = os.path.join(REPO, "scripts", "gpu_lease.sh")
STEPS = ("setup", "cuda_tests", "benchmark", "compare")


def lease(*args, timeout=1500):
    return subprocess.run(["bash", LEASE, *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def step_results(summary):
    """{step: result} from summary.md's table."""
    rows = [line.split("|")[1:-1] for line in summary.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): cells[3].strip() for cells in rows[1:]}


@pytest.mark.slow
def test_the_dry_run_goes_through_every_step_and_gathers_at_most_8_files(tmp_path):
    run = lease("--dry-run", "--out", tmp_path / "out")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    files = sorted(os.listdir(tmp_path / "out"))
    assert files == ["benchmark_128.json", "benchmark_64.json", "compare.json", "compare.md",
                     "compare.png", "logs.tar.gz", "runs.tar.gz", "summary.md"]
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert step_results(summary) == {step: "ok" for step in STEPS}
    assert "torch " + torch.__version__ in summary
    report = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert [config["name"] for config in report["configs"]] == ["maskrcnn_R50_FPN", "maskrcnnpp_R50"]
    assert report["seeds"] == [0] and report["max_iter"] == 3
    benchmark = json.loads((tmp_path / "out" / "benchmark_64.json").read_text())
    # benchmark.py names a config by its file name (overrides appended), compare.py by its stem
    assert [row["config"] for row in benchmark["results"]] == ["maskrcnn_R50_FPN.yaml",
                                                               "maskrcnnpp_R50.yaml"]
    with tarfile.open(tmp_path / "out" / "runs.tar.gz") as runs:
        names = runs.getnames()
    for config in ("maskrcnn_R50_FPN", "maskrcnnpp_R50"):
        assert f"runs/{config}/seed0/metrics.json" in names, names
    with tarfile.open(tmp_path / "out" / "logs.tar.gz") as logs:
        assert {f"logs/{step}.log" for step in STEPS} <= set(logs.getnames())


def test_a_step_past_its_limit_is_stopped_and_the_next_step_runs(tmp_path):
    limits = [argument for step in STEPS for argument in ("--limit", f"{step}=1")]
    run = lease("--dry-run", "--out", tmp_path / "out", *limits, timeout=300)
    assert run.returncode == 1, run.stdout[-4000:] + run.stderr[-2000:]
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert step_results(summary) == {step: "stopped at its limit (1 s)" for step in STEPS}
    assert f"CPU: {cpu_name()} | {os.cpu_count()} threads" in summary
    assert "[lease] gather: ok" in run.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
@pytest.mark.parametrize("args, message", [
    ([], "gpu_lease: error: no GPU: python3's torch sees no CUDA device. Run with --dry-run to "
         "rehearse on the CPU."),
    (["--kit", "nothing"], "gpu_lease: error: the kit lacks nothing/wheels; build the kit with bash "
                           "scripts/make_gpu_kit.sh nothing"),
    (["--dry-run", "--limit", "compare=soon"], "gpu_lease: error: --limit compare=soon: give whole "
                                               "seconds, e.g. compare=120."),
])
def test_what_stops_the_lease_before_it_starts(tmp_path, args, message):
    kit = tmp_path / "kit"
    (kit / "wheels").mkdir(parents=True)
    (kit / "dsb2018" / "annotations").mkdir(parents=True)
    for name in ("train.json", "val.json"):
        (kit / "dsb2018" / "annotations" / name).write_text("{}")
    (kit / "dsb2018" / "images").mkdir()
    (kit / "detectron2-0.tar.gz").write_bytes(b"")
    run = lease(*(args or ["--kit", kit]), "--out", tmp_path / "out", timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "out").exists()
