"""The validation curve of training runs: their periodic evaluations against steps, as a table, a
figure and the shortest schedule within a tolerance of where the curve flattens."""
import os

import numpy as np
import yaml
from matplotlib.figure import Figure
from tabulate import tabulate

from ..errors import UserInputError
from ..io_utils import atomic_path, write_json, write_text
from .runs import evaluation_key, read_metrics_log

# (NucleiEvaluator key, title, format): what the curve follows.
CURVE_METRICS = (
    ("mask_AP", "mask AP", ".2f"),
    ("iou", "foreground IoU", ".3f"),
    ("dsb_score", "DSB score", ".3f"),
    ("pq", "PQ", ".3f"),
)
# Within this much mask AP of the best point, a schedule counts as converged (issue 23's "about 1").
DEFAULT_TOLERANCE = 1.0


def read_curve(run_dir):
    """The evaluations of one run (an OUTPUT_DIR of tools/train_net.py): a list of
    ``{"iteration", metric...}`` in step order, with the median seconds per step since the
    evaluation before (machines vary, and so does what runs beside a training)."""
    log_file, config_file = (os.path.join(run_dir, name) for name in ("metrics.json", "config.yaml"))
    for path in (log_file, config_file):
        if not os.path.isfile(path):
            raise UserInputError(f"{run_dir} holds no {os.path.basename(path)}: pass the "
                                 "OUTPUT_DIR of a tools/train_net.py run.")
    with open(config_file) as f:
        test_datasets = yaml.safe_load(f)["DATASETS"]["TEST"]
    keys = {metric: evaluation_key(test_datasets, metric) for metric, _, _ in CURVE_METRICS}
    points, step_times = [], []
    for iteration, entry in read_metrics_log(log_file).items():
        if "time" in entry:
            step_times.append(entry["time"])
        if keys["mask_AP"] in entry:
            points.append({
                "iteration": iteration + 1,  # detectron2 logs an evaluation at the step before
                **{metric: entry.get(key) for metric, key in keys.items()},
                "s_per_step": float(np.median(step_times)) if step_times else None,
            })
            step_times = []
    if not points:
        raise UserInputError(f"{log_file} holds no evaluation yet (TEST.EVAL_PERIOD > 0 logs one "
                             "every EVAL_PERIOD steps).")
    return points


def lr_drops(run_dir):
    """The steps at which the run's learning rate drops (its SOLVER.STEPS), for the figure."""
    with open(os.path.join(run_dir, "config.yaml")) as f:
        solver = yaml.safe_load(f).get("SOLVER") or {}
    return [int(step) for step in solver.get("STEPS") or ()]


def converged_step(points, tolerance=DEFAULT_TOLERANCE, metric="mask_AP"):
    """The first evaluated step whose ``metric`` is within ``tolerance`` of the curve's best: the
    shortest schedule that reaches where the curve flattens (as far as the run went)."""
    best = max(point[metric] for point in points)
    return next(point["iteration"] for point in points if point[metric] >= best - tolerance)


def summarize_curve(points, tolerance=DEFAULT_TOLERANCE, lr_drop_steps=()):
    best = max(points, key=lambda point: point["mask_AP"])
    return {"points": points, "tolerance_mask_AP": tolerance, "lr_drops": list(lr_drop_steps),
            "best": best, "converged_step": converged_step(points, tolerance)}


def format_curve_markdown(name, curve, machine=""):
    headers = ["step"] + [title for _, title, _ in CURVE_METRICS] + ["s/step (median since the last)"]
    body = [[point["iteration"]] + [format(point[key], fmt) for key, _, fmt in CURVE_METRICS]
            + [format(point["s_per_step"], ".3f") if point["s_per_step"] else "n/a"]
            for point in curve["points"]]
    best = curve["best"]
    return "\n".join([
        f"# Validation curve of {name}", "",
        f"Evaluations logged during training{f', on {machine}' if machine else ''}.", "",
        tabulate(body, headers=headers, tablefmt="pipe", disable_numparse=True), "",
        f"Best mask AP {best['mask_AP']:.2f} at step {best['iteration']}; the first step within "
        f"{curve['tolerance_mask_AP']:g} mask AP of it: **{curve['converged_step']}** (as far as "
        f"the run went: {curve['points'][-1]['iteration']} steps)."
        + (f" The learning rate drops at steps {', '.join(map(str, curve['lr_drops']))} "
           "(SOLVER.STEPS)." if curve["lr_drops"] else ""), "",
        "![the curve](curve.png)", "",
    ])


def curve_figure(name, curve):
    figure = Figure(figsize=(12, 3.6), layout="constrained")
    for axes, (key, title, _) in zip(figure.subplots(1, len(CURVE_METRICS)), CURVE_METRICS):
        steps = [point["iteration"] for point in curve["points"]]
        axes.plot(steps, [point[key] for point in curve["points"]], "o-")
        for number, drop in enumerate(step for step in curve["lr_drops"] if step <= steps[-1]):
            axes.axvline(drop, color="C3", linestyle=":", label="LR drop" if number == 0 else None)
        if key == "mask_AP":
            axes.axvline(curve["converged_step"], color="grey", linestyle="--",
                         label=f"within {curve['tolerance_mask_AP']:g} AP of the best")
            axes.legend(fontsize="small")
        axes.set(xlabel="step", title=title)
        axes.grid(alpha=0.3)
    figure.suptitle(f"{name}: validation metrics against training steps")
    return figure


def write_curve(name, curve, output_dir, machine=""):
    """curve.md, curve.json and curve.png into ``output_dir``, each whole or not at all."""
    os.makedirs(output_dir, exist_ok=True)
    write_json({"name": name, "machine": machine, **curve}, os.path.join(output_dir, "curve.json"),
               indent=2)
    write_text(format_curve_markdown(name, curve, machine), os.path.join(output_dir, "curve.md"))
    with atomic_path(os.path.join(output_dir, "curve.png")) as tmp:
        curve_figure(name, curve).savefig(tmp, format="png", dpi=100)
