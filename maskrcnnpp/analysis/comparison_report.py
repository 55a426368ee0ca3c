"""A comparison's report written out: compare.md, .csv, .json and the figure compare.png.

The report is :func:`maskrcnnpp.analysis.comparison.summarize`'s: Markdown tables of mean +- std,
costs, t-tests and per-type metrics; one CSV row per config; accuracy against speed and curves.
"""
import math
import os
import shlex

from matplotlib.figure import Figure
from tabulate import tabulate

from ..io_utils import atomic_path, write_csv, write_json, write_text
from .comparison import ACCURACY_METRICS, MASK_METRICS, TYPE_COUNTS

# (key, column title, scale, format): costs, one value per config.
COST_COLUMNS = (
    ("model_params", "params (M)", 1e-6, ".2f"),
    ("model_flops", "GFLOPs", 1e-9, ".1f"),
    ("train_s_per_iter", "train s/iter", 1, ".3f"),
    ("ms_per_image", "infer ms/image", 1, ".1f"),
    ("peak_memory_mb", "infer peak MB", 1, ".0f"),
    ("run_minutes", "run min", 1, ".1f"),
)


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
    lines = [
        f"# Comparison of {', '.join(c['name'] for c in report['configs'])}",
        "",
        f"Trained for {report['max_iter']} iterations with seeds {report['seeds']} and overrides "
        f"`{shell_words(report['overrides']) or 'none'}`; evaluated on `{report['dataset']}`. "
        f"Accuracy: mean ± std over seeds. {_speed_method(report['benchmark'])} Train s/iter: "
        "median step time of the training logs, each run's machine under Runs (step times from "
        "other machines or sessions do not compare; tools/benchmark.py times training steps "
        "interleaved); run min: wall time of a run's training and final evaluation, mean over "
        "the runs that one call of this comparison trained whole (not those resumed after a stop "
        "or a failure).",
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
        lines.append(f"{test['test']}. Cells: p-value (mean difference to {test['against']}; "
                     "its 95 % confidence interval).")
        lines.append("")
        body = [[row["config"]] + _test_cells(row["paired_t_test"]) for row in report["results"][1:]]
        headers = ["config"] + [title for _, title, _ in ACCURACY_METRICS]
        lines.append(tabulate(body, headers=headers, tablefmt="pipe", disable_numparse=True))
        lines.append("")
        lines.append("p is undefined where every seed gives the same difference.")
    if report.get("other_pairs"):  # absent from reports written before it existed
        lines += ["", "## Paired t-tests between the other configs", "",
                  "Cells as above: p-value (mean difference of config minus against; its 95 % "
                  "confidence interval).", ""]
        body = [[pair["config"], pair["against"]] + _test_cells(pair["paired_t_test"])
                for pair in report["other_pairs"]]
        headers = ["config", "against"] + [title for _, title, _ in ACCURACY_METRICS]
        lines.append(tabulate(body, headers=headers, tablefmt="pipe", disable_numparse=True))
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
    lines += ["", "## Runs", "", _format_runs(report), "",
              "![accuracy, speed, training curves and every seed](compare.png)", ""]
    return "\n".join(lines)


def _test_cells(tests):
    """One table cell per accuracy metric: "p=... (difference; low to high)", or "n/a"."""
    cells = []
    for key, _, value_format in ACCURACY_METRICS:
        result = tests[key]
        if result["mean_difference"] is None:
            cells.append("n/a")
            continue
        p = "undefined" if result["p"] is None else f"p={result['p']:.3f}"
        low, high = (format(value, "+" + value_format) for value in result["ci95"])
        difference = format(result["mean_difference"], "+" + value_format)
        cells.append(f"{p} ({difference}; {low} to {high})")
    return cells


def _format_runs(report):
    """One row per run: its seed, accuracy, step time, wall time and the machine that trained it
    (runs collected before the machine was recorded say so)."""
    metric = report["figure_metric"]
    title, _, value_format = next(column for column in ACCURACY_METRICS if column[0] == metric)
    body = [
        [row["config"], run["seed"], _show(run["metrics"].get(metric), value_format),
         _show(run.get("train_s_per_iter"), ".3f"),
         _show(run["wall_seconds"] / 60 if run.get("wall_seconds") else None, ".1f"),
         run.get("machine", "not recorded")]
        for row in report["results"] for run in row["runs"]
    ]
    headers = ["config", "seed", title, "train s/iter", "run min", "machine"]
    return tabulate(body, headers=headers, tablefmt="pipe", disable_numparse=True)


def _speed_method(benchmark):
    """How the report's speed columns were measured, or why they are n/a."""
    if benchmark.get("not_measured"):
        return ("Inference speed, memory, params and GFLOPs: n/a, not measured: "
                f"{benchmark['not_measured']}.")
    settings = benchmark["settings"]
    method = (
        f"Inference: median ms per image at {settings['image_size']}x{settings['image_size']} px "
        f"on {benchmark['machine']['device']} (trained weights of the first seed that kept them, "
        f"{settings['repeats']} repeats, configs interleaved); peak memory: "
        f"{benchmark['memory_method']}."
    )
    if benchmark.get("reused_from"):
        method += (f" The benchmark is kept from {benchmark['reused_from']}: no trained model of "
                   "every config was left to measure.")
    return method


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
    """Top: accuracy against inference time (error bars: std over seeds, latency quartiles), and
    the training-loss and validation curves of every run. Bottom: every seed's accuracy, a line
    joining each seed's runs (the seeds pair the configs), and each config's per-seed difference
    to the first with the mean and its 95 % confidence interval."""
    figure = Figure(figsize=(16, 9.6), layout="constrained")
    axes = figure.subplot_mosaic([["accuracy", "loss", "evaluation"],
                                  ["seeds", "seeds", "differences"]])
    metric = report["figure_metric"]
    title = {key: title for key, title, _ in ACCURACY_METRICS}[metric]
    for index, row in enumerate(report["results"]):
        color = f"C{index}"
        latency = row["latency_ms"]
        if row["mean"][metric] is not None and latency is not None:
            axes["accuracy"].errorbar(
                row["ms_per_image"], row["mean"][metric], yerr=row["std"][metric] or 0,
                xerr=[[row["ms_per_image"] - latency["p25"]],
                      [latency["p75"] - row["ms_per_image"]]],
                fmt="o", capsize=4, color=color, label=row["config"],
            )
        for number, run in enumerate(row["runs"]):
            label = row["config"] if number == 0 else None
            if run["loss_curve"]:
                axes["loss"].plot(*zip(*run["loss_curve"]), ".-", markersize=3, color=color,
                                  alpha=0.7, label=label)
            if run["eval_curve"]:
                axes["evaluation"].plot(*zip(*run["eval_curve"]), "o-", color=color, alpha=0.7,
                                        label=label)
    _plot_seeds(axes["seeds"], axes["differences"], report, metric, title)
    axes["accuracy"].set(xlabel="inference ms / image", ylabel=title, title=f"{title} against speed")
    axes["loss"].set(xlabel="iteration", ylabel="total loss", title="training loss")
    axes["evaluation"].set(xlabel="iteration", ylabel=title, title=f"validation {title}")
    if report["benchmark"].get("not_measured"):
        axes["accuracy"].text(0.5, 0.5, "speed not measured:\nno trained model of every config",
                              transform=axes["accuracy"].transAxes, ha="center", va="center")
    for name in ("accuracy", "loss", "evaluation"):
        if axes[name].get_legend_handles_labels()[0]:
            axes[name].legend(fontsize="small")
    for panel in axes.values():
        panel.grid(alpha=0.3)
    return figure


def _plot_seeds(seeds_axes, differences_axes, report, metric, title):
    rows = report["results"]
    names = [row["config"] for row in rows]
    by_seed = [{run["seed"]: run["metrics"].get(metric) for run in row["runs"]} for row in rows]
    for seed in report["seeds"]:
        points = [(x, values[seed]) for x, values in enumerate(by_seed)
                  if values.get(seed) is not None]
        seeds_axes.plot(*zip(*points), "-", color="grey", alpha=0.4, zorder=1)
        for x, value in points:
            seeds_axes.scatter(x, value, color=f"C{x}", zorder=2)
            seeds_axes.annotate(f"seed {seed}", (x, value), xytext=(6, 0),
                                textcoords="offset points", fontsize="x-small", va="center")
    seeds_axes.set_xticks(range(len(names)), names)
    seeds_axes.set(ylabel=title, title=f"{title} of every seed (lines join a seed's runs)")
    for x, (row, values) in enumerate(zip(rows[1:], by_seed[1:]), start=1):
        differences = [values[seed] - by_seed[0][seed] for seed in report["seeds"]
                       if values.get(seed) is not None and by_seed[0].get(seed) is not None]
        differences_axes.scatter([x] * len(differences), differences, color=f"C{x}", alpha=0.6)
        test = (row.get("paired_t_test") or {}).get(metric) or {}
        if test.get("ci95") is None:
            if len(differences) == 1:  # one seed so far: its difference, and why no interval
                differences_axes.annotate(
                    f"{differences[0]:+.2f}: 1 seed, no CI", (x, differences[0]), xytext=(0, 6),
                    textcoords="offset points", ha="center", fontsize="small")
            continue
        (low, high), mean = test["ci95"], test["mean_difference"]
        differences_axes.errorbar(x + 0.15, mean, yerr=[[mean - low], [high - mean]], fmt="D",
                                  color="black", capsize=5)
        differences_axes.annotate(f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]", (x + 0.15, high),
                                  xytext=(0, 4), textcoords="offset points", ha="center",
                                  fontsize="small")
    differences_axes.axhline(0, color="grey", linewidth=1)
    differences_axes.set_xticks(range(1, len(names)), names[1:])
    differences_axes.set_xlim(0.5, max(1.5, len(names) - 0.5))
    differences_axes.set(ylabel=f"{title} minus {names[0]}'s",
                         title="paired differences: each seed, mean and 95 % CI")


def write_comparison(report, output_dir):
    """Write compare.md, compare.csv, compare.json and compare.png into ``output_dir``."""
    path = os.path.join(output_dir, "compare")
    write_json(report, path + ".json", indent=2)
    write_csv(_csv_rows(report), path + ".csv")
    write_text(format_markdown(report), path + ".md")
    with atomic_path(path + ".png") as tmp:
        _figure(report).savefig(tmp, format="png", dpi=110)
