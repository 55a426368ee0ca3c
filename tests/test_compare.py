"""tools/compare.py on two tiny configs x two seeds: trains, tabulates, t-tests, plots, reuses."""
import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.stats
from conftest import REPO, TINY_TRAINING, load_tool, run_tool

from maskrcnnpp.analysis.comparison import ACCURACY_METRICS, summarize
from maskrcnnpp.analysis.comparison_report import _csv_rows, _figure, format_markdown, shell_words
from maskrcnnpp.analysis.runs import RunFailed, plan_runs, read_metrics_log
from maskrcnnpp.errors import UserInputError
from maskrcnnpp.machine import label as machine_label
from maskrcnnpp.training import CONCURRENT_RUNS_ENV, concurrent_run_env

compare_tool = load_tool("compare")
compare = compare_tool.compare

QUICKSTART = os.path.join(REPO, "configs", "quickstart_synthetic.yaml")
DENSE_QUICKSTART = os.path.join(REPO, "configs", "quickstart_synthetic_dense.yaml")
CONFIG_NAMES = ["quickstart_synthetic", "quickstart_synthetic_dense"]
SEEDS = [0, 1]
COLUMNS = (
    ["config", "num_seeds"]
    + [f"{key}_{stat}" for key, _, _ in ACCURACY_METRICS for stat in ("mean", "std")]
    + ["model_params", "model_flops", "train_s_per_iter", "ms_per_image", "peak_memory_mb",
       "run_minutes"]
    + [f"{key}_p_value" for key, _, _ in ACCURACY_METRICS]
)


@pytest.fixture(scope="module")
def setup(tiny_nuclei, tmp_path_factory):
    """The configs (the quickstart and its dense-neck twin) and the overrides of the comparison.

    TINY_TRAINING without its SEED (the comparison sets it per run), for 3 iterations: the third
    is the first that detectron2 times.
    """
    folder = tmp_path_factory.mktemp("compare")
    seed = TINY_TRAINING.index("SEED")
    tiny = TINY_TRAINING[:seed] + TINY_TRAINING[seed + 2:]
    opts = [*tiny, *tiny_nuclei["opts"], "SOLVER.MAX_ITER", "3"]
    return {"configs": [QUICKSTART, DENSE_QUICKSTART], "opts": opts, "output": folder / "out"}


@pytest.fixture(scope="module")
def compared(setup):
    result = run_tool(
        "compare.py", "--config-file", *setup["configs"], "--output", setup["output"],
        "--seeds", *SEEDS, "--image-size", "128", "--repeats", "2", *setup["opts"],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(setup["output"] / "compare.json") as f:
        return result, json.load(f)


def run_folders(output):
    return [output / "runs" / name / f"seed{seed}" for name in CONFIG_NAMES for seed in SEEDS]


@pytest.mark.slow
def test_comparison_tabulates_every_config_with_its_costs(compared, setup):
    result, report = compared
    assert "run 4/4: quickstart_synthetic_dense seed 1" in result.stderr  # the progress display
    with open(setup["output"] / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS
    assert [row["config"] for row in rows] == CONFIG_NAMES
    for row, summary in zip(rows, report["results"]):
        assert row["num_seeds"] == "2"
        assert 0 <= float(row["mask_AP_mean"]) <= 100 and float(row["mask_AP_std"]) >= 0
        for key in ("model_params", "model_flops", "train_s_per_iter", "ms_per_image",
                    "peak_memory_mb", "run_minutes"):
            assert float(row[key]) > 0, key
        assert float(row["mask_AP_mean"]) == pytest.approx(summary["mean"]["mask_AP"])
    markdown = (setup["output"] / "compare.md").read_text()
    for title in ("mask AP", "AP50", "IoU", "Dice", "DSB score", "AJI", "PQ", "infer ms/image",
                  " ± ", "Paired t-test against quickstart_synthetic", "compare.png",
                  "Per image type (mean over seeds)"):
        assert title in markdown, title
    # the tiny set's types, each with its own metrics (the synthetic images are of two types)
    types = {kind for row in report["results"] for kind in row["mean_by_type"]}
    assert types and types <= {"fluorescence", "he_stained"}
    png = (setup["output"] / "compare.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000


@pytest.mark.slow
def test_per_seed_results_are_the_evaluator_files_and_feed_the_t_test(compared, setup):
    _, report = compared
    for row in report["results"]:
        for seed, run in zip(SEEDS, row["runs"]):
            metrics_file = (setup["output"] / "runs" / row["config"] / f"seed{seed}" / "inference"
                            / "tiny_nuclei" / "nuclei_metrics.json")
            final = json.loads(metrics_file.read_text())
            assert run["metrics"]["mask_AP"] == final["mask_AP"]
            assert run["train_s_per_iter"] > 0 and run["loss_curve"] and run["eval_curve"]
            assert run["wall_seconds"] > 0
            assert run["machine"].endswith(f"{os.cpu_count()} CPU threads")  # trained here
            assert run["metrics_by_type"].keys() == final["by_type"].keys()
        assert row["per_seed"]["aji"] == [run["metrics"]["aji"] for run in row["runs"]]
    baseline, dense = report["results"]
    assert report["paired_t_test"]["available"] and "paired_t_test" not in baseline
    test = dense["paired_t_test"]["mask_AP"]
    ours, theirs = dense["per_seed"]["mask_AP"], baseline["per_seed"]["mask_AP"]
    assert test["mean_difference"] == pytest.approx(np.mean(ours) - np.mean(theirs))
    expected = scipy.stats.ttest_rel(ours, theirs).pvalue
    assert test["p"] == (None if np.isnan(expected) else pytest.approx(expected))


@pytest.mark.slow
def test_a_rerun_reuses_the_finished_runs(compared, setup, capsys):
    before = {
        folder: (os.path.getmtime(folder / "model_final.pth"), (folder / "train.log").read_text())
        for folder in run_folders(setup["output"])
    }
    # a run whose result file an earlier version wrote, without the per-type metrics
    older = sorted(before)[0] / "run_result.json"
    stored = json.loads(older.read_text())
    by_type = stored.pop("metrics_by_type")
    older.write_text(json.dumps(stored))
    report = compare(setup["configs"], setup["output"], SEEDS, setup["opts"], image_size=128,
                     repeats=1)
    assert capsys.readouterr().out.count("finished earlier, reused") == 4
    assert by_type and json.loads(older.read_text())["metrics_by_type"] == by_type
    after = {
        folder: (os.path.getmtime(folder / "model_final.pth"), (folder / "train.log").read_text())
        for folder in run_folders(setup["output"])
    }
    assert after == before  # nothing trained, nothing launched
    assert report["results"][1]["per_seed"] == compared[1]["results"][1]["per_seed"]


@pytest.mark.slow
def test_runs_made_with_other_overrides_are_not_reused(compared, setup):
    with pytest.raises(UserInputError, match="SOLVER.BASE_LR was 0.02, now 0.01.*another --output"):
        plan_runs(setup["configs"], SEEDS, [*setup["opts"], "SOLVER.BASE_LR", "0.01"],
                  setup["output"])


@pytest.mark.slow
def test_committed_results_without_checkpoints_rebuild_the_report_and_new_seeds_add_to_it(
        compared, setup, tmp_path, capsys):
    """A comparison folder as it is committed (each run's results and config, no checkpoints):
    the report is rebuilt without training, keeping the earlier benchmark; another seed trains
    only its own runs, whose models the benchmark then measures."""
    committed = tmp_path / "committed"
    shutil.copytree(setup["output"], committed,
                    ignore=shutil.ignore_patterns("*.pth", "last_checkpoint", "inference"))
    earlier = json.loads((committed / "compare.json").read_text())
    report = compare(setup["configs"], committed, SEEDS, setup["opts"], image_size=128,
                     repeats=1)
    assert capsys.readouterr().out.count("finished earlier, reused") == 4
    assert not list(committed.rglob("*.pth"))  # nothing trained
    assert report["results"][1]["per_seed"] == compared[1]["results"][1]["per_seed"]
    assert report["benchmark"]["reused_from"] == "the earlier compare.json of this folder"
    assert ([row["ms_per_image"] for row in report["results"]]
            == [row["ms_per_image"] for row in earlier["results"]])
    assert "The benchmark is kept from the earlier compare.json" in (committed / "compare.md").read_text()

    report = compare(setup["configs"], committed, [*SEEDS, 2], setup["opts"], image_size=128,
                     repeats=1)
    assert capsys.readouterr().out.count("finished earlier, reused") == 4
    assert sorted(p.parent.name for p in committed.rglob("model_final.pth")) == ["seed2", "seed2"]
    assert report["seeds"] == [0, 1, 2] and report["benchmark"]["reused_from"] is None
    assert report["results"][1]["per_seed"]["mask_AP"][:2] == compared[1]["results"][1]["per_seed"]["mask_AP"]


@pytest.mark.slow
def test_committed_results_without_checkpoints_or_an_earlier_benchmark_report_accuracy_alone(
        compared, setup, tmp_path, capsys):
    """Committed results whose folder lost its compare.json too: the report is rebuilt from the
    runs' results, its speed columns n/a with the reason and the way to measure them."""
    committed = tmp_path / "committed"
    shutil.copytree(setup["output"], committed,
                    ignore=shutil.ignore_patterns("*.pth", "last_checkpoint", "inference", "compare.*"))
    report = compare(setup["configs"], committed, SEEDS, setup["opts"])
    assert "benchmark: none, the runs of quickstart_synthetic, quickstart_synthetic_dense keep no model_final.pth" in capsys.readouterr().out
    assert not list(committed.rglob("*.pth"))  # nothing trained
    assert report["results"][1]["per_seed"] == compared[1]["results"][1]["per_seed"]
    assert report["benchmark"]["settings"] is None
    assert all(row[key] is None for row in report["results"]
               for key in ("model_params", "model_flops", "ms_per_image", "peak_memory_mb"))
    markdown = (committed / "compare.md").read_text()
    assert ("Inference speed, memory, params and GFLOPs: n/a, not measured: the runs of "
            "quickstart_synthetic, quickstart_synthetic_dense keep no model_final.pth") in markdown
    assert "add a seed (--seeds ... N) to train one model per config." in markdown
    with open(committed / "compare.csv") as f:
        assert {row["ms_per_image"] for row in csv.DictReader(f)} == {""}
    assert (committed / "compare.png").stat().st_size > 0


def test_runs_train_seed_by_seed_so_a_stopped_comparison_leaves_whole_seeds(setup, tmp_path, monkeypatch):
    runs = plan_runs(setup["configs"], [0, 1, 2], setup["opts"], tmp_path)
    order = []

    def record(pending, total, num_gpus, jobs, curve_metric):
        order.extend((position, run.name, run.seed) for position, run in pending)
        return {run.output_dir: {} for _, run in pending}, []

    monkeypatch.setattr(compare_tool, "train_runs", record)
    compare_tool.run_all(runs, num_gpus=1)
    assert order == [(1, "quickstart_synthetic", 0), (4, "quickstart_synthetic_dense", 0),
                     (2, "quickstart_synthetic", 1), (5, "quickstart_synthetic_dense", 1),
                     (3, "quickstart_synthetic", 2), (6, "quickstart_synthetic_dense", 2)]


def test_an_unfinished_run_without_its_checkpoints_trains_again_from_the_start(
        setup, tmp_path, monkeypatch, capsys):
    """A run folder that came to another machine with its log but not its checkpoints is cleared
    before it trains, so that its metrics.json and train.log hold the new training only; one
    whose last_checkpoint is there resumes and keeps its files."""
    lost, stopped = plan_runs([QUICKSTART], [0, 1], setup["opts"], tmp_path)
    for run in (lost, stopped):
        os.makedirs(run.output_dir)
        for name, text in (("metrics.json", '{"iteration": 2119}\n'), ("config.yaml", run.cfg.dump()),
                           ("train.log", "$ train_net.py --resume\n")):
            with open(run.path(name), "w") as f:
                f.write(text)
    with open(stopped.path("last_checkpoint"), "w") as f:
        f.write("model_0001999.pth")
    folders_when_trained = {}

    def record(pending, total, num_gpus, jobs, curve_metric):
        for _, run in pending:
            folders_when_trained[run.seed] = sorted(os.listdir(run.output_dir))
        return {run.output_dir: {} for _, run in pending}, []

    monkeypatch.setattr(compare_tool, "train_runs", record)
    compare_tool.run_all([lost, stopped], num_gpus=1)
    assert folders_when_trained == {
        0: [], 1: ["config.yaml", "last_checkpoint", "metrics.json", "train.log"]}
    assert capsys.readouterr().out.splitlines() == [
        f"{lost.describe(1, 2)} - its earlier training left metrics.json but no checkpoint here: "
        "trained again from step 0"]


def test_a_run_resumed_after_a_stop_has_no_wall_time(setup, tmp_path):
    """Its last call timed only the part of its training after the stop; a run one call trained
    keeps its time, and so does one whose train.log was not kept (committed results)."""
    runs = plan_runs([QUICKSTART], [0, 1, 2], setup["opts"], tmp_path)
    for run, calls in zip(runs, (1, 2, None)):
        os.makedirs(run.output_dir)
        with open(run.path("run_result.json"), "w") as f:
            json.dump({"config": run.name, "seed": run.seed, "wall_seconds": 100.0}, f)
        if calls:
            with open(run.path("train.log"), "w") as f:
                f.write("$ train_net.py --resume\n[12/07 02:00:00] d2 INFO: iter 5\n" * calls)
    results = compare_tool.run_all(runs, num_gpus=1)
    assert [result["wall_seconds"] for result in results] == [100.0, None, 100.0]
    assert json.loads((tmp_path / "runs" / "quickstart_synthetic" / "seed1" / "run_result.json")
                      .read_text())["wall_seconds"] is None
    assert [run.training_calls for run in runs] == [1, 2, 0]


def test_a_resumed_run_log_drops_what_the_stopped_call_logged_past_its_checkpoint(tmp_path):
    """The stopped call logged up to iteration 79 and its checkpoint was at 49: the resumed call
    logs 59 and 79 again, and the log reads as one run whose latest iteration is the resumed
    call's, evaluation included; a line being written is skipped."""
    lines = [{"iteration": 19, "total_loss": 2.0}, {"iteration": 39, "total_loss": 1.5},
             {"iteration": 59, "total_loss": 1.2}, {"iteration": 59, "segm/AP": 10.0},
             {"iteration": 79, "total_loss": 0.9},
             {"iteration": 59, "total_loss": 1.1}]
    log = tmp_path / "metrics.json"
    log.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"iteration": 7')
    assert read_metrics_log(log) == {19: {"iteration": 19, "total_loss": 2.0},
                                     39: {"iteration": 39, "total_loss": 1.5},
                                     59: {"iteration": 59, "total_loss": 1.1}}
    with open(log, "a") as f:
        f.write('9, "total_loss": 1.0}\n{"iteration": 79, "segm/AP": 12.0}\n')
    assert read_metrics_log(log)[79] == {"iteration": 79, "total_loss": 1.0, "segm/AP": 12.0}
    assert max(read_metrics_log(log)) == 79 and len(read_metrics_log(log)) == 4


def test_a_reused_run_keeps_the_machine_that_trained_it(setup, tmp_path):
    """Collected again from its folder (its metrics as this version reads them), a finished run
    keeps the machine its run_result.json names, or none: not the machine that reuses it."""
    runs = plan_runs([QUICKSTART], [0, 1], setup["opts"], tmp_path)
    for run, machine in zip(runs, ("AMD EPYC (AVX512), 2 CPU threads", None)):
        evaluation = os.path.join(run.output_dir, "inference", run.cfg.DATASETS.TEST[0])
        os.makedirs(evaluation)
        with open(os.path.join(evaluation, "nuclei_metrics.json"), "w") as f:
            json.dump({"mask_AP": 50.0 + run.seed}, f)
        with open(run.path("metrics.json"), "w") as f:
            f.write(json.dumps({"iteration": 19, "total_loss": 1.0, "time": 0.5}) + "\n")
        stored = {"config": run.name, "seed": run.seed, "metrics": {}, "wall_seconds": 100.0}
        with open(run.path("run_result.json"), "w") as f:
            json.dump({**stored, "machine": machine} if machine else stored, f)
    results = compare_tool.run_all(runs, num_gpus=1)
    assert [result["metrics"] for result in results] == [{"mask_AP": 50.0}, {"mask_AP": 51.0}]
    assert [result.get("machine") for result in results] == ["AMD EPYC (AVX512), 2 CPU threads", None]
    assert "machine" not in json.loads((tmp_path / "runs" / "quickstart_synthetic" / "seed1"
                                        / "run_result.json").read_text())


def test_the_comparison_sets_seeds_itself(setup, tmp_path):
    with pytest.raises(UserInputError, match="sets SEED for each run"):
        plan_runs(setup["configs"], SEEDS, [*setup["opts"], "SEED", "3"], tmp_path)


def fake_results(runs, metrics):
    """(run results, benchmark) of ``runs`` as if trained and measured, the i-th run's
    nuclei_metrics.json being ``metrics(i, run)``."""
    run_results = [
        {"config": run.name, "seed": run.seed, "train_s_per_iter": 0.5, "loss_curve": [[0, 1.0]],
         "eval_curve": [[0, 1.0]], "metrics": metrics(index, run)}
        for index, run in enumerate(runs)
    ]
    speed = {"model_params": 1e7, "model_flops": 1e9, "ms_per_image": 20.0, "peak_memory_mb": 50.0,
             "detections_per_image": 30.0,
             "latency_ms": {"median": 20.0, "p25": 19.0, "p75": 21.0, "min": 18.0, "max": 22.0}}
    measured = {
        "settings": {"image_size": 128, "repeats": 1}, "machine": {"device": "cpu"},
        "memory_method": "CPU", "results": [{"config": run.name, **speed} for run in runs],
    }
    return run_results, measured


def test_one_seed_says_the_t_test_is_not_available(setup, tmp_path):
    runs = plan_runs(setup["configs"], [0], setup["opts"], tmp_path)
    report = summarize(runs, *fake_results(
        runs, lambda index, run: {key: 10.0 + index for key, _, _ in ACCURACY_METRICS}))
    assert not report["paired_t_test"]["available"]
    assert report["results"][1]["paired_t_test"] is None
    assert report["results"][1]["std"]["mask_AP"] is None
    markdown = format_markdown(report)
    assert "Not available: the test needs at least 2 seeds per config, got 1" in markdown
    dense_row = next(line for line in markdown.splitlines() if line.startswith("| quickstart_synthetic_dense"))
    assert "| 11.00 " in dense_row and "±" not in dense_row  # a mean, no spread


def test_runs_evaluated_before_a_metric_existed_show_it_as_not_available(setup, tmp_path):
    runs = plan_runs(setup["configs"], [0, 1], setup["opts"], tmp_path)
    older = {key: 10.0 for key, _, _ in ACCURACY_METRICS if key not in ("accuracy@0.5", "f1@0.5")}
    run_results, measured = fake_results(runs, lambda index, run: dict(older))
    for result in run_results:
        result["metrics_by_type"] = {"fluorescence": {"num_images": 2, "num_true": 9, **older}}
    report = summarize(runs, run_results, measured)
    fpn = report["results"][0]
    assert fpn["mean"]["mask_AP"] == 10.0 and fpn["mean"]["f1@0.5"] is None
    assert fpn["mean_by_type"]["fluorescence"]["f1@0.5"] is None
    assert report["results"][1]["paired_t_test"]["accuracy@0.5"]["p"] is None
    lines = format_markdown(report).splitlines()
    header = next(line for line in lines if line.startswith("| config "))
    fpn_row = next(line for line in lines if line.startswith("| quickstart_synthetic "))
    cells = dict(zip(*(map(str.strip, line.strip("|").split("|")) for line in (header, fpn_row))))
    assert (cells["mask AP"], cells["accuracy@0.5"], cells["F1@0.5"]) == ("10.00 ± 0.00", "n/a", "n/a")


def test_each_run_is_listed_with_the_machine_that_trained_it(setup, tmp_path):
    """Step times of runs from other sessions and machines do not compare: the report names each
    run's machine, or says that a run collected before machines were recorded has none."""
    runs = plan_runs(setup["configs"], [0, 1], setup["opts"], tmp_path)
    run_results, measured = fake_results(
        runs, lambda index, run: {key: 10.0 + index for key, _, _ in ACCURACY_METRICS})
    run_results[0].update(machine="AMD EPYC (AVX512), 2 CPU threads", wall_seconds=600.0)
    run_results[1].update(machine="NVIDIA H200", train_s_per_iter=0.1, wall_seconds=None)
    run_results[2]["machine"] = "AMD EPYC (AVX2), 2 CPU threads"
    markdown = format_markdown(summarize(runs, run_results, measured))
    table = markdown.split("## Runs")[1].splitlines()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table
            if line.startswith("| quickstart")]
    assert rows == [
        ["quickstart_synthetic", "0", "10.00", "0.500", "10.0", "AMD EPYC (AVX512), 2 CPU threads"],
        ["quickstart_synthetic", "1", "11.00", "0.100", "n/a", "NVIDIA H200"],
        ["quickstart_synthetic_dense", "0", "12.00", "0.500", "n/a", "AMD EPYC (AVX2), 2 CPU threads"],
        ["quickstart_synthetic_dense", "1", "13.00", "0.500", "n/a", "not recorded"],
    ]
    assert "each run's machine under Runs" in markdown


def test_a_machine_is_named_by_its_gpu_or_by_its_cpu_with_instructions_and_threads():
    cpu = {"device": "cpu", "cpu": "AMD EPYC", "cpu_capability": "AVX2", "cpu_count": 2}
    assert machine_label(cpu) == "AMD EPYC (AVX2), 2 CPU threads"
    assert machine_label({**cpu, "device": "NVIDIA H200"}) == "NVIDIA H200"


def test_overrides_are_shown_as_they_would_be_typed():
    tokens = ["DATASETS.TRAIN", "('dsb2018_train',)", "SOLVER.MAX_ITER", "600", "X", 'it"s']
    words = shell_words(tokens)
    assert words.startswith("DATASETS.TRAIN \"('dsb2018_train',)\" SOLVER.MAX_ITER 600")
    assert shlex.split(words) == tokens


def test_the_other_configs_are_tested_against_each_other(setup, tmp_path):
    """FPN, dense and wide FPN: besides each against FPN, the wide FPN against the dense neck.
    Worked by hand: mask AP differences wide - dense over seeds 0-2 are -1, +1, -2; mean -0.67,
    sd 1.528, t = -0.756 (p = 0.529 with 2 degrees of freedom), 95 % CI -0.67 +- 4.303 * 0.882."""
    wide = os.path.join(REPO, "configs", "maskrcnn_R18_FPN_wide_cpu.yaml")
    runs = plan_runs([QUICKSTART, DENSE_QUICKSTART, wide], [0, 1, 2], setup["opts"], tmp_path)
    mask_ap = {"quickstart_synthetic": [10.0, 11.0, 12.0],
               "quickstart_synthetic_dense": [12.0, 12.0, 15.0],
               "maskrcnn_R18_FPN_wide_cpu": [11.0, 13.0, 13.0]}
    report = summarize(runs, *fake_results(runs, lambda index, run: {
        key: mask_ap[run.name][run.seed] for key, _, _ in ACCURACY_METRICS}))
    (pair,) = report["other_pairs"]
    assert (pair["config"], pair["against"]) == ("maskrcnn_R18_FPN_wide_cpu",
                                                 "quickstart_synthetic_dense")
    test = pair["paired_t_test"]["mask_AP"]
    assert test["mean_difference"] == pytest.approx(-2 / 3)
    assert test["ci95"] == pytest.approx([-4.4612, 3.1279], abs=1e-4)
    assert test["p"] == pytest.approx(0.5286, abs=1e-4)
    row = next(line for line in format_markdown(report).split("## Paired t-tests between the other "
                                                              "configs")[1].splitlines()
               if line.startswith("| maskrcnn_R18_FPN_wide_cpu "))
    assert "| quickstart_synthetic_dense | p=0.529 (-0.67; -4.46 to +3.13) |" in row
    two = plan_runs([QUICKSTART, DENSE_QUICKSTART], [0, 1, 2], setup["opts"], tmp_path)
    report = summarize(two, *fake_results(two, lambda index, run: {
        key: mask_ap[run.name][run.seed] for key, _, _ in ACCURACY_METRICS}))
    assert report["other_pairs"] == [] and "between the other configs" not in format_markdown(report)


def test_a_box_only_detector_is_compared_on_box_ap(setup, tmp_path):
    """RetinaNet has box AP and no mask metrics: n/a and a note, t-tests on box AP alone, and
    box AP plotted for every config."""
    configs = [QUICKSTART, os.path.join(REPO, "configs", "retinanet_R50_FPN.yaml")]
    runs = plan_runs(configs, SEEDS, setup["opts"], tmp_path)

    def metrics(index, run):
        if run.name == "retinanet_R50_FPN":
            return {"box_AP": 30.0 + 2 * run.seed, "num_images": 4, "max_dets": 1000,
                    "mask_metrics": "not applicable: the model predicts boxes only"}
        masks = {key: 10.0 + run.seed for key, _, _ in ACCURACY_METRICS}
        return {**masks, "box_AP": 20.0 + run.seed}

    report = summarize(runs, *fake_results(runs, metrics))
    assert report["figure_metric"] == "box_AP"
    mask_rcnn, retinanet = report["results"]
    assert mask_rcnn["predicts_masks"] and not retinanet["predicts_masks"]
    assert retinanet["mean"]["mask_AP"] is None and retinanet["mean"]["box_AP"] == 31.0
    assert retinanet["paired_t_test"]["mask_AP"]["p"] is None
    assert retinanet["paired_t_test"]["box_AP"]["mean_difference"] == pytest.approx(10.5)
    markdown = format_markdown(report)
    assert "n/a: the mask metrics do not apply to retinanet_R50_FPN, which predict" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| retinanet_R50_FPN"))
    assert "| n/a " in row and "31.00 ± 1.41" in row
    assert _csv_rows(report)[1]["mask_AP_mean"] is None
    _figure(report)  # box AP for both


def test_the_figure_shows_every_seed_and_the_paired_interval(setup, tmp_path):
    # FPN 30, 31, 32 and dense 31, 33, 32 mask AP over seeds 0-2: differences 1, 2, 0, mean 1,
    # sd 1, 95 % CI 1 -+ t(0.975, 2) / sqrt(3) = 1 -+ 4.303 / 1.732 = -1.48 to +3.48.
    runs = plan_runs(setup["configs"], [0, 1, 2], setup["opts"], tmp_path)
    mask_ap = {("quickstart_synthetic", 0): 30.0, ("quickstart_synthetic", 1): 31.0,
               ("quickstart_synthetic", 2): 32.0, ("quickstart_synthetic_dense", 0): 31.0,
               ("quickstart_synthetic_dense", 1): 33.0, ("quickstart_synthetic_dense", 2): 32.0}
    report = summarize(runs, *fake_results(runs, lambda index, run: {
        key: mask_ap[run.name, run.seed] for key, _, _ in ACCURACY_METRICS}))
    panels = {axes.get_title(): axes for axes in _figure(report).axes}
    seeds = panels["mask AP of every seed (lines join a seed's runs)"]
    points = sorted(tuple(xy) for collection in seeds.collections for xy in collection.get_offsets())
    assert points == [(0, 30), (0, 31), (0, 32), (1, 31), (1, 32), (1, 33)]
    assert len(seeds.lines) == 3  # one line per seed joins its two runs
    differences = panels["paired differences: each seed, mean and 95 % CI"]
    assert [text.get_text() for text in differences.texts] == ["+1.00 [-1.48, +3.48]"]


def test_the_figure_of_one_seed_shows_its_differences_and_why_there_is_no_interval(setup, tmp_path):
    # Seed 0 only: FPN 58.59, dense 58.60 mask AP; the difference, +0.01, is plotted and labelled.
    runs = plan_runs(setup["configs"], [0], setup["opts"], tmp_path)
    mask_ap = {"quickstart_synthetic": 58.59, "quickstart_synthetic_dense": 58.60}
    report = summarize(runs, *fake_results(runs, lambda index, run: {
        key: mask_ap[run.name] for key, _, _ in ACCURACY_METRICS}))
    panels = {axes.get_title(): axes for axes in _figure(report).axes}
    differences = panels["paired differences: each seed, mean and 95 % CI"]
    points = [tuple(xy) for collection in differences.collections for xy in collection.get_offsets()]
    assert points == [(1, pytest.approx(0.01))]
    assert [text.get_text() for text in differences.texts] == ["+0.01: 1 seed, no CI"]


def processes_naming(folder):
    """The ids of the processes whose command line names ``folder`` (from /proc)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if str(folder).encode() in f.read():
                    found.append(int(pid))
        except OSError:  # ended meanwhile
            pass
    return found


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the processes from /proc")
def test_a_stopped_comparison_stops_its_training(setup, tmp_path):
    """SIGTERM to compare.py ends the train_net.py it runs (and its process group) too, instead
    of leaving it to train on, orphaned."""
    run_folder = tmp_path / "out" / "runs" / "quickstart_synthetic" / "seed0"
    command = [sys.executable, os.path.join(REPO, "tools", "compare.py"), "--config-file",
               QUICKSTART, "--output", tmp_path / "out", *setup["opts"], "SOLVER.MAX_ITER", "100000"]
    comparison = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={"DETECTRON2_DATASETS": os.path.join(REPO, "datasets"), **os.environ})
    try:
        deadline = time.monotonic() + 300
        while not (run_folder / "config.yaml").exists():  # written by the training itself
            assert comparison.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        assert processes_naming(run_folder)
        comparison.send_signal(signal.SIGTERM)
        assert comparison.wait(timeout=15) == 128 + signal.SIGTERM
        assert processes_naming(run_folder) == []
    finally:
        comparison.kill()


@pytest.mark.slow
def test_jobs_train_runs_at_once_and_a_failed_run_leaves_the_others(setup, tmp_path, monkeypatch,
                                                                   capsys):
    """--jobs 2: both seeds train at once, told so (their data loaders share the cores); seed 1
    fails, seed 0 is kept, and the next call trains seed 1 alone."""
    tool = load_tool("compare")
    wrapper = tmp_path / "train_or_fail.py"
    wrapper.write_text(
        "import os, runpy, sys\n"
        "seed = sys.argv[sys.argv.index('SEED') + 1]\n"
        "out = sys.argv[sys.argv.index('OUTPUT_DIR') + 1]\n"
        f"open(os.path.join(out, 'concurrent_runs.txt'), 'w').write(os.environ['{CONCURRENT_RUNS_ENV}'])\n"
        "if seed == '1' and os.environ.get('FAIL_SEED_1'):\n"
        "    sys.exit(3)\n"
        f"sys.argv[0] = {os.path.join(REPO, 'tools', 'train_net.py')!r}\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    monkeypatch.setattr(tool, "TRAIN_SCRIPT", str(wrapper))
    monkeypatch.setenv("FAIL_SEED_1", "1")
    output = tmp_path / "out"
    with pytest.raises(RunFailed, match=r"1 of 2 runs failed; the others are kept.*seed 1 failed "
                                        r"\(exit code 3\)"):
        tool.compare([QUICKSTART], output, [0, 1], setup["opts"], jobs=2, image_size=128,
                     repeats=1)
    seed0, seed1 = (output / "runs" / "quickstart_synthetic" / f"seed{s}" for s in (0, 1))
    assert (seed0 / "run_result.json").is_file() and not (seed1 / "run_result.json").exists()
    assert (seed0 / "concurrent_runs.txt").read_text() == "2"
    assert "error: run 2/2: quickstart_synthetic seed 1 failed" in capsys.readouterr().out
    monkeypatch.delenv("FAIL_SEED_1")
    report = tool.compare([QUICKSTART], output, [0, 1], setup["opts"], jobs=2, image_size=128,
                          repeats=1)
    assert capsys.readouterr().out.count("finished earlier, reused") == 1
    assert report["results"][0]["num_seeds"] == 2


@pytest.mark.parametrize("jobs, user_threads, threads", [
    (1, None, None),  # one run: torch's own choice, all cores
    (2, None, "8"), (6, None, "2"), (32, None, "1"),  # 16 cores shared by the runs
    (2, "3", "3"),  # the user's OMP_NUM_THREADS stands
])
def test_concurrent_runs_share_the_cores_for_torch_threads(jobs, user_threads, threads, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    if user_threads:
        monkeypatch.setenv("OMP_NUM_THREADS", user_threads)
    env = concurrent_run_env(jobs)
    assert env[CONCURRENT_RUNS_ENV] == str(jobs) and env.get("OMP_NUM_THREADS") == threads


def test_jobs_must_be_at_least_one(setup, tmp_path):
    with pytest.raises(UserInputError, match="--jobs 0: train at least 1 run at a time"):
        load_tool("compare").compare([QUICKSTART], tmp_path, [0], setup["opts"], jobs=0)
