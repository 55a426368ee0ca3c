#!/usr/bin/env python3
"""Train and evaluate configs on the same data, schedule and seeds; compare accuracy and cost.

    python tools/compare.py --config-file configs/maskrcnn_R50_FPN.yaml configs/maskrcnnpp_R50.yaml \\
        --output output/compare --seeds 0 1 2 SOLVER.MAX_ITER 5000

Trailing KEY VALUE pairs apply to every run. Each config and seed trains in its own
tools/train_net.py process into DIR/runs/<config>/seed<s> (see maskrcnnpp/analysis/runs.py), one
after the other, so a killed comparison loses at most the run in progress: calling the command
again reuses finished runs and resumes the others from their last checkpoint. Then the trained
models are benchmarked interleaved, and DIR/compare.md, .csv, .json and .png are written: mean +-
std over seeds, costs, paired t-tests against the first config, accuracy against speed, curves.
A model that predicts boxes only (RetinaNet, MODEL.MASK_ON False) has box AP and no mask metrics:
they show as n/a, and box AP is then the accuracy plotted.
"""

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time

import numpy as np
from matplotlib.figure import Figure
from tabulate import tabulate
from tqdm import tqdm

from maskrcnnpp import cli
from maskrcnnpp.analysis.runs import (
    LOG_FILE,
    RESULT_FILE,
    RunFailed,
    collect_run,
    plan_runs,
    read_metrics_log,
)
from maskrcnnpp.analysis.speed import BenchmarkSettings, benchmark
from maskrcnnpp.analysis.stats import PAIRED_TEST, mean_std, paired_t_test
from maskrcnnpp.io_utils import atomic_path, write_csv, write_json, write_text

TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_net.py")
POLL_SECONDS = 2.0
# Side of the benchmark's image for configs tested at native size (INPUT.MIN_SIZE_TEST 0): a
# mid-sized DSB2018 image.
NATIVE_BENCHMARK_SIZE = 512

# (key of nuclei_metrics.json, column title, format): accuracy, as mean +- std over seeds. The
# mask metrics are also reported per image type; box AP is the one metric of every model.
MASK_METRICS = (
    ("mask_AP", "mask AP", ".2f"),
    ("mask_AP50", "AP50", ".2f"),
    ("mask_AP75", "AP75", ".2f"),
    ("iou", "IoU", ".4f"),
    ("dice", "Dice", ".4f"),
    ("dsb_score", "DSB score", ".4f"),
    ("aji", "AJI", ".4f"),
    ("pq", "PQ", ".4f"),
)
ACCURACY_METRICS = MASK_METRICS + (("box_AP", "box AP", ".2f"),)
# (key, column title, scale, format): costs, one value per config.
COST_COLUMNS = (
    ("model_params", "params (M)", 1e-6, ".2f"),
    ("model_flops", "GFLOPs", 1e-9, ".1f"),
    ("train_s_per_iter", "train s/iter", 1, ".3f"),
    ("ms_per_image", "infer ms/image", 1, ".1f"),
    ("peak_memory_mb", "infer peak MB", 1, ".0f"),
    ("run_minutes", "run min", 1, ".1f"),
)
# Per image type, beside the accuracy: how many images and nuclei the type has in the test set.
TYPE_COUNTS = (("num_images", "images", "d"), ("num_true", "nuclei", "d"))


def figure_metric(runs):
    """The accuracy plotted against inference time: mask AP, or box AP where a config predicts no
    masks (MODEL.MASK_ON False, as RetinaNet's), since only box AP compares every model then."""
    return "mask_AP" if all(run.cfg.MODEL.MASK_ON for run in runs) else "box_AP"


def train(run, position, total, num_gpus):
    """Train and evaluate ``run`` in a child process, showing its iteration; resumes if it can."""
    command = [
        sys.executable, TRAIN_SCRIPT, "--config-file", run.config_file, "--resume",
        "--num-gpus", str(num_gpus), *run.opts, "SEED", str(run.seed), "OUTPUT_DIR",
        run.output_dir,
    ]
    os.makedirs(run.output_dir, exist_ok=True)
    max_iter = run.cfg.SOLVER.MAX_ITER
    with open(run.path(LOG_FILE), "a") as log, tqdm(
        total=max_iter, desc=run.describe(position, total), unit="iter"
    ) as progress:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        while True:
            try:
                child.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            # the final evaluation is logged one iteration past the last
            done = min(max(read_metrics_log(run.path("metrics.json")), default=-1) + 1, max_iter)
            progress.update(done - progress.n)
            if done >= max_iter:
                progress.set_postfix_str("evaluating")
            if child.returncode is not None:
                break
    run_wall_seconds = time.perf_counter() - started
    if child.returncode != 0:
        with open(run.path(LOG_FILE)) as f:
            tail = "".join(f.readlines()[-15:])
        raise RunFailed(
            f"{run.describe(position, total)} failed (exit code {child.returncode}); its output is "
            f"in {run.path(LOG_FILE)}. Last lines:\n{tail}"
        )
    return run_wall_seconds


def run_all(runs, num_gpus):
    """Each run's collected result, training the runs that have none."""
    curve_metric = figure_metric(runs)
    results = []
    for position, run in enumerate(runs, start=1):
        if run.finished:
            tqdm.write(f"{run.describe(position, len(runs))} - finished earlier, reused")
            with open(run.path(RESULT_FILE)) as f:
                stored = json.load(f)
            # Collected again from the run's folder where it still holds the evaluator's files,
            # so that a run made by an earlier version reports what this one does (per-type
            # metrics); its measured wall time is kept.
            try:
                result = {**stored, **collect_run(run, curve_metric)}
            except RunFailed:
                result = stored
        else:
            wall_seconds = train(run, position, len(runs), num_gpus)
            # wall_seconds: training and final evaluation, this call
            result = {**collect_run(run, curve_metric), "wall_seconds": wall_seconds}
        write_json(result, run.path(RESULT_FILE), indent=2)
        results.append(result)
    return results


def summarize(runs, run_results, measured):
    """Per config: mean +- std of the metrics over seeds, costs, speed, and paired t-tests."""
    configs = list(dict.fromkeys(run.name for run in runs))
    seeds = list(dict.fromkeys(run.seed for run in runs))
    speed = {result["config"]: result for result in measured["results"]}
    rows = []
    for name in configs:
        seed_results = [r for r in run_results if r["config"] == name]
        per_seed = {  # None where a metric does not apply (mask AP of RetinaNet) or is NaN
            key: [r["metrics"].get(key) for r in seed_results] for key, _, _ in ACCURACY_METRICS
        }
        step_times = [r["train_s_per_iter"] for r in seed_results if r["train_s_per_iter"]]
        wall_times = [r["wall_seconds"] for r in seed_results if r.get("wall_seconds")]
        bench = speed[name]
        row = {
            "config": name,
            "config_file": next(run.config_file for run in runs if run.name == name),
            "num_seeds": len(seed_results),
            "predicts_masks": not any("mask_metrics" in r["metrics"] for r in seed_results),
            "per_seed": per_seed,
            "mean": {}, "std": {},
            "model_params": bench["model_params"],
            "model_flops": bench["model_flops"],
            "train_s_per_iter": float(np.mean(step_times)) if step_times else None,
            "run_minutes": float(np.mean(wall_times)) / 60 if wall_times else None,
            "mean_by_type": _mean_by_type(seed_results),
            "ms_per_image": bench["ms_per_image"],
            "latency_ms": bench["latency_ms"],
            "peak_memory_mb": bench["peak_memory_mb"],
            "detections_per_image": bench["detections_per_image"],
            "runs": seed_results,
        }
        for key, _, _ in ACCURACY_METRICS:
            row["mean"][key], row["std"][key] = mean_std(per_seed[key])
        rows.append(row)
    test_available = len(seeds) >= 2
    for row in rows[1:]:
        row["paired_t_test"] = (
            {key: paired_t_test(row["per_seed"][key], rows[0]["per_seed"][key])
             for key, _, _ in ACCURACY_METRICS} if test_available else None
        )
    first_cfg = runs[0].cfg
    return {
        "configs": [{"name": row["config"], "config_file": row["config_file"]} for row in rows],
        "seeds": seeds,
        "overrides": runs[0].opts,
        "dataset": first_cfg.DATASETS.TEST[0],
        "max_iter": first_cfg.SOLVER.MAX_ITER,
        "figure_metric": figure_metric(runs),
        "paired_t_test": {
            "against": rows[0]["config"],
            "test": PAIRED_TEST,
            "available": test_available and len(rows) > 1,
            "reason": None if test_available else
            f"needs at least 2 seeds per config, got {len(seeds)}",
        },
        "benchmark": {key: measured[key] for key in ("settings", "machine", "memory_method")},
        "results": rows,
    }


def _mean_by_type(seed_results):
    """{image type: {metric: mean over seeds}} of the runs' per-type results."""
    types = dict.fromkeys(kind for r in seed_results for kind in r.get("metrics_by_type", {}))
    return {
        kind: {key: mean_std([r["metrics_by_type"][kind][key] for r in seed_results])[0]
               for key, _, _ in MASK_METRICS + TYPE_COUNTS}
        for kind in types
        if all(kind in r.get("metrics_by_type", {}) for r in seed_results)
    }


def _show(value, value_format, scale=1):
    return "n/a" if value is None or math.isnan(value) else format(value * scale, value_format)


def shell_words(tokens):
    """The tokens as one shell command line, values like ('a',) in double rather than escaped
    single quotes, so it reads as it would be typed."""
    def quote(token):
        if shlex.quote(token) == token or any(c in token for c in '"$`\\!'):
            return shlex.quote(token)
        return f'"{token}"'

    return " ".join(quote(token) for token in tokens)


def format_markdown(report):
    """compare.md: the table of mean +- std and costs, the t-tests, the figure."""
    bench = report["benchmark"]["settings"]
    machine = report["benchmark"]["machine"]["device"]
    seeds = report["seeds"]
    lines = [
        f"# Comparison of {', '.join(c['name'] for c in report['configs'])}",
        "",
        f"Trained for {report['max_iter']} iterations with seeds {seeds} and overrides "
        f"`{shell_words(report['overrides']) or 'none'}`; evaluated on `{report['dataset']}`. "
        "Accuracy: mean ± std over seeds. Inference: median ms per image at "
        f"{bench['image_size']}x{bench['image_size']} px on {machine} (trained weights of the "
        f"first seed, {bench['repeats']} repeats, configs interleaved); peak memory: "
        f"{report['benchmark']['memory_method']}. Train s/iter: median step time of the "
        "training logs; run min: wall time of a run's training and final evaluation, mean over "
        "the runs trained by this comparison's calls.",
        "",
    ]
    headers = ["config"] + [title for _, title, _ in ACCURACY_METRICS]
    headers += [title for _, title, _, _ in COST_COLUMNS]
    body = []
    for row in report["results"]:
        cells = [row["config"]]
        for key, _, value_format in ACCURACY_METRICS:
            cell = _show(row["mean"][key], value_format)
            if row["std"][key] is not None:
                cell += f" ± {_show(row['std'][key], value_format)}"
            cells.append(cell)
        cells += [
            _show(row[key], value_format, scale) for key, _, scale, value_format in COST_COLUMNS
        ]
        body.append(cells)
    lines += [tabulate(body, headers=headers, tablefmt="pipe", disable_numparse=True), ""]
    box_only = [row["config"] for row in report["results"] if not row["predicts_masks"]]
    if box_only:
        lines += [f"n/a: the mask metrics do not apply to {', '.join(box_only)}, which predict "
                  "boxes only; box AP compares every config.", ""]

    test = report["paired_t_test"]
    lines += [f"## Paired t-test against {test['against']}", ""]
    if len(report["results"]) < 2:
        lines.append("Not applicable: a single config.")
    elif not test["available"]:
        lines.append(f"Not available: the test {test['reason']}; run with --seeds 0 1 2.")
    else:
        lines.append(f"{test['test']}. Cells: p-value (mean difference to {test['against']}).")
        lines.append("")
        body = []
        for row in report["results"][1:]:
            cells = [row["config"]]
            for key, _, value_format in ACCURACY_METRICS:
                result = row["paired_t_test"][key]
                if result["mean_difference"] is None:
                    cells.append("n/a")
                    continue
                p = "undefined" if result["p"] is None else f"p={result['p']:.3f}"
                cells.append(f"{p} ({format(result['mean_difference'], '+' + value_format)})")
            body.append(cells)
        headers = ["config"] + [title for _, title, _ in ACCURACY_METRICS]
        lines.append(tabulate(body, headers=headers, tablefmt="pipe", disable_numparse=True))
        lines.append("")
        lines.append("p is undefined where every seed gives the same difference.")
    typed = [row for row in report["results"] if row.get("mean_by_type")]
    if typed:
        lines += ["", "## Per image type (mean over seeds)", ""]
        headers = ["config", "image type"] + [title for _, title, _ in TYPE_COUNTS + MASK_METRICS]
        body = [
            [row["config"], kind]
            + [_show(round(values[key]) if value_format == "d" else values[key], value_format)
               for key, _, value_format in TYPE_COUNTS + MASK_METRICS]
            for row in typed
            for kind, values in row["mean_by_type"].items()
        ]
        lines.append(tabulate(body, headers=headers, tablefmt="pipe", disable_numparse=True))
    lines += ["", "![accuracy, speed and training curves](compare.png)", ""]
    return "\n".join(lines)


def _csv_rows(report):
    """compare.csv: one row per config, plain numbers (empty where not available)."""
    rows = []
    for row in report["results"]:
        flat = {"config": row["config"], "num_seeds": row["num_seeds"]}
        for key, _, _ in ACCURACY_METRICS:
            flat[f"{key}_mean"], flat[f"{key}_std"] = row["mean"][key], row["std"][key]
        flat.update({key: row[key] for key, _, _, _ in COST_COLUMNS})
        for key, _, _ in ACCURACY_METRICS:
            test = (row.get("paired_t_test") or {}).get(key, {})
            flat[f"{key}_p_value"] = test.get("p")
        rows.append(flat)
    return rows


def _figure(report):
    """Accuracy against inference time (error bars: std over seeds, latency quartiles), and the
    training-loss and validation-AP curves of every run."""
    figure = Figure(figsize=(16, 4.8), layout="constrained")
    accuracy, loss, evaluation = figure.subplots(1, 3)
    metric = report["figure_metric"]
    title = {key: title for key, title, _ in ACCURACY_METRICS}[metric]
    for index, row in enumerate(report["results"]):
        color = f"C{index}"
        latency = row["latency_ms"]
        if row["mean"][metric] is not None:
            accuracy.errorbar(
                row["ms_per_image"], row["mean"][metric], yerr=row["std"][metric] or 0,
                xerr=[[row["ms_per_image"] - latency["p25"]],
                      [latency["p75"] - row["ms_per_image"]]],
                fmt="o", capsize=4, color=color, label=row["config"],
            )
        for number, run in enumerate(row["runs"]):
            label = row["config"] if number == 0 else None
            if run["loss_curve"]:
                loss.plot(*zip(*run["loss_curve"]), ".-", markersize=3, color=color, alpha=0.7,
                          label=label)
            if run["eval_curve"]:
                evaluation.plot(*zip(*run["eval_curve"]), "o-", color=color, alpha=0.7, label=label)
    accuracy.set(xlabel="inference ms / image", ylabel=title, title=f"{title} against speed")
    loss.set(xlabel="iteration", ylabel="total loss", title="training loss")
    evaluation.set(xlabel="iteration", ylabel=title, title=f"validation {title}")
    for axes in (accuracy, loss, evaluation):
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    return figure


def write_comparison(report, output_dir):
    """Write compare.md, compare.csv, compare.json and compare.png into ``output_dir``."""
    path = os.path.join(output_dir, "compare")
    write_json(report, path + ".json", indent=2)
    write_csv(_csv_rows(report), path + ".csv")
    write_text(format_markdown(report), path + ".md")
    with atomic_path(path + ".png") as tmp:
        _figure(report).savefig(tmp, format="png", dpi=110)


def _trained_cfg(run):
    """The run's config with its final weights, as a user would deploy it."""
    cfg = run.cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = run.path("model_final.pth")
    return cfg


def compare(config_files, output_dir, seeds=(0,), opts=(), *, num_gpus=1, image_size=None,
            repeats=None):
    """Train (or reuse) every config x seed, benchmark the trained models, write the comparison.

    Args:
        config_files (list[str]): configs; the first is the baseline of the t-tests and ratios.
        output_dir (str): the comparison folder (see the module docstring).
        seeds (list[int]): the seeds every config is trained with.
        opts (list[str]): KEY VALUE overrides applied to every run.
        num_gpus (int): passed to train_net.py.
        image_size (int or None): side of the benchmark's synthetic image; by default the first
            config's INPUT.MIN_SIZE_TEST, the scale its models are tested at (512 for configs
            tested at native size).
        repeats (int or None): timed inference calls per config; by default the device's.

    Returns:
        dict: the report written to compare.json.
    """
    runs = plan_runs(config_files, list(seeds), list(opts), output_dir)
    run_results = run_all(runs, num_gpus)
    named_cfgs = [(run.name, _trained_cfg(run)) for run in runs if run.seed == runs[0].seed]
    settings = BenchmarkSettings(
        device="cuda" if runs[0].cfg.MODEL.DEVICE.startswith("cuda") else "cpu",
        amp=runs[0].cfg.SOLVER.AMP.ENABLED,  # measured as trained
        image_size=image_size or runs[0].cfg.INPUT.MIN_SIZE_TEST or NATIVE_BENCHMARK_SIZE,
        repeats=repeats,
        train_repeats=0,
    )
    with tqdm(desc="benchmark of the trained models", unit="call") as progress:
        measured = benchmark(named_cfgs, settings, progress)
    report = summarize(runs, run_results, measured)
    write_comparison(report, output_dir)
    return report


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", nargs="+", required=True, metavar="CFG",
                        help="configs to compare; the first is the baseline of the t-tests")
    parser.add_argument("--output", required=True, metavar="DIR", help="comparison folder")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="seeds every config is trained with (default: 0)")
    parser.add_argument("--num-gpus", type=int, default=1, help="per run, as in train_net.py")
    parser.add_argument("--image-size", type=int,
                        help="side of the synthetic image of the speed benchmark "
                        "(default: INPUT.MIN_SIZE_TEST of the first config, or 512 for configs "
                        "tested at native size)")
    parser.add_argument("--repeats", type=int, help="timed inference calls per config "
                        "(default: as tools/benchmark.py, per device)")
    return cli.parse_with_overrides(parser, argv)


def main(argv):
    args = parse_args(argv)
    try:
        compare(args.config_file, args.output, args.seeds, args.opts, num_gpus=args.num_gpus,
                image_size=args.image_size, repeats=args.repeats)
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Wrote {os.path.join(args.output, 'compare')}.md, .csv, .json and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
