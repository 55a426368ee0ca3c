"""Train, evaluate and benchmark several configs on the same data, schedule and seeds, and tabulate.

An output folder ``DIR`` holds::

    DIR/runs/<config stem>/seed<s>/   one tools/train_net.py run (its OUTPUT_DIR): checkpoints,
                                      metrics.json, train.log (the child's output), and
                                      run_result.json, written once it trained and was evaluated
    DIR/compare.md, .csv, .json, .png the comparison

Runs go one after the other, each in a child process, so a killed comparison loses at most the
run in progress: the next call reuses the runs that have a run_result.json and resumes the others
from their last checkpoint (``--resume``). Reusing a run requires the same resolved config
(configs and overrides), checked against the ``config.yaml`` detectron2 wrote in its folder.
"""

import json
import math
import os
import shlex
import subprocess
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.stats
import yaml
from matplotlib.figure import Figure
from tabulate import tabulate
from tqdm import tqdm

from .benchmark import BenchmarkSettings, benchmark
from detectron2.config import get_cfg

from .config import add_maskrcnnpp_config
from .engine import build_cfg, check_datasets
from .errors import UserInputError
from .io_utils import atomic_path, write_csv, write_json, write_text

__all__ = ["RunFailed", "Run", "plan_runs", "compare", "write_comparison"]

# (key of nuclei_metrics.json, column title, format): accuracy, as mean +- std over seeds.
ACCURACY_METRICS = (
    ("mask_AP", "mask AP", ".2f"),
    ("mask_AP50", "AP50", ".2f"),
    ("mask_AP75", "AP75", ".2f"),
    ("iou", "IoU", ".4f"),
    ("dice", "Dice", ".4f"),
    ("dsb_score", "DSB score", ".4f"),
    ("aji", "AJI", ".4f"),
    ("pq", "PQ", ".4f"),
)
# (key, column title, scale, format): costs, one value per config.
COST_COLUMNS = (
    ("model_params", "params (M)", 1e-6, ".2f"),
    ("model_flops", "GFLOPs", 1e-9, ".1f"),
    ("train_s_per_iter", "train s/iter", 1, ".3f"),
    ("ms_per_image", "infer ms/image", 1, ".1f"),
    ("peak_memory_mb", "infer peak MB", 1, ".0f"),
)
FIGURE_METRIC = "mask_AP"  # the accuracy plotted against inference time
# Configs must agree on these: "same data and schedule".
SHARED_KEYS = ("DATASETS.TRAIN", "DATASETS.TEST", "SOLVER.MAX_ITER", "SOLVER.IMS_PER_BATCH")
# Where a run happened, not what it computed: ignored when deciding whether a run can be reused.
PLACE_KEYS = ("OUTPUT_DIR", "MODEL.DEVICE")
RESULT_FILE = "run_result.json"
# Side of the benchmark's image for configs tested at native size (INPUT.MIN_SIZE_TEST 0): a
# mid-sized DSB2018 image.
NATIVE_BENCHMARK_SIZE = 512
LOG_FILE = "train.log"
POLL_SECONDS = 2.0


class RunFailed(RuntimeError):
    """A training run exited with an error; the message names its log."""


def _flatten(node, prefix=""):
    """{"SOLVER.MAX_ITER": 1000, ...} of a nested dict (a loaded config)."""
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _resolved(cfg):
    """A config as plain data, in the form detectron2 writes config.yaml (tuples as lists)."""
    return _flatten(yaml.safe_load(cfg.dump()))


def _lookup(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


@dataclass
class Run:
    """One training run: a config (by its file's stem) and a seed, in its own folder."""

    name: str
    config_file: str
    seed: int
    output_dir: str
    opts: list  # the comparison's overrides; SEED and OUTPUT_DIR are added per run
    cfg: object  # the resolved CfgNode, as the child process builds it

    def path(self, file_name):
        return os.path.join(self.output_dir, file_name)

    @property
    def finished(self):
        return os.path.isfile(self.path(RESULT_FILE))

    def describe(self, position, total):
        return f"run {position}/{total}: {self.name} seed {self.seed}"


def plan_runs(config_files, seeds, opts, output_dir):
    """Every (config, seed) run, checked before anything is trained.

    Raises UserInputError for configs that cannot be compared (same stem, different data or
    schedule), overrides that the comparison sets itself, and run folders made with other settings.
    """
    if len(config_files) < 1:
        raise UserInputError("--configs needs at least one config file.")
    if not seeds or len(set(seeds)) < len(seeds):
        raise UserInputError(f"--seeds {list(seeds)}: give one or more different seeds.")
    for key in ("SEED", "OUTPUT_DIR"):
        if key in opts[::2]:
            raise UserInputError(
                f"The comparison sets {key} for each run; drop it from the overrides "
                "(use --seeds and --output)."
            )
    names = [os.path.splitext(os.path.basename(path))[0] for path in config_files]
    if len(set(names)) < len(names):
        raise UserInputError(
            f"Config files {list(config_files)} share a file name; runs are named after it, so "
            "rename or copy one of them."
        )
    runs = []
    for name, config_file in zip(names, config_files):
        for seed in seeds:
            output = os.path.join(os.path.abspath(output_dir), "runs", name, f"seed{seed}")
            cfg = build_cfg(config_file, [*opts, "SEED", str(seed), "OUTPUT_DIR", output])
            runs.append(Run(name, config_file, seed, output, list(opts), cfg))
    _check_same_data_and_schedule(runs)
    check_datasets(runs[0].cfg, runs[0].cfg.DATASETS.TRAIN + runs[0].cfg.DATASETS.TEST)
    for run in runs:
        _check_reusable(run)
    return runs


def _check_same_data_and_schedule(runs):
    first = runs[0]
    for run in runs[1:]:
        for key in SHARED_KEYS:
            if _lookup(run.cfg, key) != _lookup(first.cfg, key):
                raise UserInputError(
                    f"{run.config_file} has {key} {_lookup(run.cfg, key)} but {first.config_file} "
                    f"has {_lookup(first.cfg, key)}: configs are compared on the same data and "
                    f"schedule. Set it for all of them with the override {key} VALUE."
                )


def _default_config():
    """Every key's default, flattened: a key added since a run was made, at its default, changed
    nothing that run computed."""
    cfg = get_cfg()
    add_maskrcnnpp_config(cfg)
    return _resolved(cfg)


def _check_reusable(run):
    """Raise unless the run folder is new or was made with the same resolved config."""
    saved = run.path("config.yaml")
    if not os.path.isfile(saved):
        return
    with open(saved) as f:
        before = _flatten(yaml.safe_load(f))
    now = _resolved(run.cfg)
    defaults = _default_config()
    changed = sorted(
        key for key in before.keys() | now.keys()
        if key not in PLACE_KEYS and before.get(key, defaults.get(key)) != now.get(key)
    )
    if changed:
        shown = "; ".join(f"{key} was {before.get(key)!r}, now {now.get(key)!r}"
                          for key in changed[:5])
        raise UserInputError(
            f"{run.output_dir} was trained with other settings ({shown}). Use another --output, "
            "or the configs and overrides of the earlier comparison to reuse its runs."
        )


def read_metrics_log(path):
    """detectron2's metrics.json as {iteration: entry}; entries of one iteration are merged and
    a resumed run's repeated iterations keep their latest values."""
    by_iteration = {}
    if not os.path.isfile(path):
        return by_iteration
    with open(path) as f:
        for line in f:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # the line being written right now
                continue
            by_iteration.setdefault(entry["iteration"], {}).update(entry)
    return dict(sorted(by_iteration.items()))


def _evaluation_key(cfg, metric):
    """The metrics.json key of a NucleiEvaluator metric of the first test dataset.

    DefaultTrainer.test drops the dataset level of the results when there is one test dataset.
    """
    prefix = "" if len(cfg.DATASETS.TEST) == 1 else f"{cfg.DATASETS.TEST[0]}/"
    return f"{prefix}nuclei/{metric}"


def _train(run, position, total, train_script, num_gpus):
    """Train and evaluate ``run`` in a child process, showing its iteration; resumes if it can."""
    command = [
        sys.executable, train_script, "--config-file", run.config_file, "--resume",
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
    if child.returncode != 0:
        with open(run.path(LOG_FILE)) as f:
            tail = "".join(f.readlines()[-15:])
        raise RunFailed(
            f"{run.describe(position, total)} failed (exit code {child.returncode}); its output is "
            f"in {run.path(LOG_FILE)}. Last lines:\n{tail}"
        )


def _collect(run):
    """What the comparison needs of a trained run: final metrics, step time and curves."""
    metrics_file = os.path.join(
        run.output_dir, "inference", run.cfg.DATASETS.TEST[0], "nuclei_metrics.json"
    )
    if not os.path.isfile(metrics_file):
        raise RunFailed(
            f"{run.output_dir} finished training but has no {metrics_file}: the Trainer's "
            "evaluation must include NucleiEvaluator."
        )
    with open(metrics_file) as f:
        final = json.load(f)
    log = read_metrics_log(run.path("metrics.json"))
    step_times = [entry["time"] for entry in log.values() if "time" in entry]
    ap_key = _evaluation_key(run.cfg, FIGURE_METRIC)
    return {
        "config": run.name,
        "seed": run.seed,
        "metrics": {key: final.get(key) for key, _, _ in ACCURACY_METRICS},
        "train_s_per_iter": float(np.median(step_times)) if step_times else None,
        "loss_curve": [[i, e["total_loss"]] for i, e in log.items() if "total_loss" in e],
        "eval_curve": [[i, e[ap_key]] for i, e in log.items() if ap_key in e],
    }


def _run_all(runs, train_script, num_gpus):
    """Each run's collected result, training the runs that have none."""
    results = []
    for position, run in enumerate(runs, start=1):
        if run.finished:
            tqdm.write(f"{run.describe(position, len(runs))} - finished earlier, reused")
        else:
            _train(run, position, len(runs), train_script, num_gpus)
            write_json(_collect(run), run.path(RESULT_FILE), indent=2)
        with open(run.path(RESULT_FILE)) as f:
            results.append(json.load(f))
    return results


def _mean_std(values):
    """Mean and sample standard deviation (None for a single value)."""
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return float(np.mean(values)), std


def _paired_tests(per_seed, baseline):
    """Two-sided paired t-test of each metric against the baseline, paired by seed."""
    tests = {}
    for key, _, _ in ACCURACY_METRICS:
        ours, theirs = per_seed[key], baseline[key]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # identical differences: p is NaN
            t, p = scipy.stats.ttest_rel(ours, theirs)
        difference = float(np.mean(np.subtract(ours, theirs)))
        tests[key] = {
            "mean_difference": difference,
            "t": None if math.isnan(t) else float(t),
            "p": None if math.isnan(p) else float(p),
        }
    return tests


def summarize(runs, run_results, measured):
    """Per config: mean +- std of the metrics over seeds, costs, speed, and paired t-tests."""
    configs = list(dict.fromkeys(run.name for run in runs))
    seeds = list(dict.fromkeys(run.seed for run in runs))
    speed = {result["config"]: result for result in measured["results"]}
    rows = []
    for name in configs:
        seed_results = [r for r in run_results if r["config"] == name]
        per_seed = {
            key: [r["metrics"][key] for r in seed_results] for key, _, _ in ACCURACY_METRICS
        }
        step_times = [r["train_s_per_iter"] for r in seed_results if r["train_s_per_iter"]]
        bench = speed[name]
        row = {
            "config": name,
            "config_file": next(run.config_file for run in runs if run.name == name),
            "num_seeds": len(seed_results),
            "per_seed": per_seed,
            "mean": {}, "std": {},
            "model_params": bench["model_params"],
            "model_flops": bench["model_flops"],
            "train_s_per_iter": float(np.mean(step_times)) if step_times else None,
            "ms_per_image": bench["ms_per_image"],
            "latency_ms": bench["latency_ms"],
            "peak_memory_mb": bench["peak_memory_mb"],
            "detections_per_image": bench["detections_per_image"],
            "runs": seed_results,
        }
        for key, _, _ in ACCURACY_METRICS:
            row["mean"][key], row["std"][key] = _mean_std(per_seed[key])
        rows.append(row)
    test_available = len(seeds) >= 2
    for row in rows[1:]:
        row["paired_t_test"] = (
            _paired_tests(row["per_seed"], rows[0]["per_seed"]) if test_available else None
        )
    first_cfg = runs[0].cfg
    return {
        "configs": [{"name": row["config"], "config_file": row["config_file"]} for row in rows],
        "seeds": seeds,
        "overrides": runs[0].opts,
        "dataset": first_cfg.DATASETS.TEST[0],
        "max_iter": first_cfg.SOLVER.MAX_ITER,
        "paired_t_test": {
            "against": rows[0]["config"],
            "test": "scipy.stats.ttest_rel, two-sided, paired by seed",
            "available": test_available and len(rows) > 1,
            "reason": None if test_available else
            f"needs at least 2 seeds per config, got {len(seeds)}",
        },
        "benchmark": {key: measured[key] for key in ("settings", "machine", "memory_method")},
        "results": rows,
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
        f"{report['benchmark']['memory_method']}.",
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
                p = "undefined" if result["p"] is None else f"p={result['p']:.3f}"
                cells.append(f"{p} ({format(result['mean_difference'], '+' + value_format)})")
            body.append(cells)
        headers = ["config"] + [title for _, title, _ in ACCURACY_METRICS]
        lines.append(tabulate(body, headers=headers, tablefmt="pipe", disable_numparse=True))
        lines.append("")
        lines.append("p is undefined where every seed gives the same difference.")
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
    title = {key: title for key, title, _ in ACCURACY_METRICS}[FIGURE_METRIC]
    for index, row in enumerate(report["results"]):
        color = f"C{index}"
        latency = row["latency_ms"]
        accuracy.errorbar(
            row["ms_per_image"], row["mean"][FIGURE_METRIC], yerr=row["std"][FIGURE_METRIC] or 0,
            xerr=[[row["ms_per_image"] - latency["p25"]], [latency["p75"] - row["ms_per_image"]]],
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


def compare(config_files, output_dir, seeds=(0,), opts=(), *, train_script, num_gpus=1,
            image_size=None, repeats=None):
    """Train (or reuse) every config x seed, benchmark the trained models, write the comparison.

    Args:
        config_files (list[str]): configs; the first is the baseline of the t-tests and ratios.
        output_dir (str): the comparison folder (see the module docstring).
        seeds (list[int]): the seeds every config is trained with.
        opts (list[str]): KEY VALUE overrides applied to every run.
        train_script (str): tools/train_net.py, run for each run in a child process.
        num_gpus (int): passed to train_net.py.
        image_size (int or None): side of the benchmark's synthetic image; by default the first
            config's INPUT.MIN_SIZE_TEST, the scale its models are tested at (512 for configs
            tested at native size).
        repeats (int or None): timed inference calls per config; by default the device's.

    Returns:
        dict: the report written to compare.json.
    """
    runs = plan_runs(config_files, list(seeds), list(opts), output_dir)
    run_results = _run_all(runs, train_script, num_gpus)
    named_cfgs = [(run.name, _trained_cfg(run)) for run in runs if run.seed == runs[0].seed]
    settings = BenchmarkSettings(
        device="cuda" if runs[0].cfg.MODEL.DEVICE.startswith("cuda") else "cpu",
        amp=runs[0].cfg.SOLVER.AMP.ENABLED,  # measured as trained
        image_size=image_size or runs[0].cfg.INPUT.MIN_SIZE_TEST or NATIVE_BENCHMARK_SIZE,
        repeats=repeats,
        train_repeats=0,
    )
    report = summarize(runs, run_results, benchmark(named_cfgs, settings))
    write_comparison(report, output_dir)
    return report
