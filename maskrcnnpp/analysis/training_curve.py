"""The validation curve of training runs: their periodic evaluations against steps, as a table, a
figure and the shortest schedule within a tolerance of where the curve flattens.

A long run at a constant learning rate shows where training flattens, but the schedule one would
use decays its learning rate before it ends. Branches, short runs that start from one of the long
run's checkpoints and decay the learning rate, measure such schedules for the price of their decay:
a branch from step s that trains n steps stands for the (s + n)-step schedule that decays where the
branch does."""
import os
import re

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


# detectron2's checkpoint of the model after step N + 1
CHECKPOINT_NAME = re.compile(r"model_(\d{7})\.pth$")


def read_run_config(run_dir):
    """The run's resolved config (config.yaml) as a dict, once its training log exists too."""
    for name in ("metrics.json", "config.yaml"):
        if not os.path.isfile(os.path.join(run_dir, name)):
            raise UserInputError(f"{run_dir} holds no {name}: pass the OUTPUT_DIR of a "
                                 "tools/train_net.py run.")
    with open(os.path.join(run_dir, "config.yaml")) as f:
        return yaml.safe_load(f)


def read_curve(run_dir):
    """The evaluations of one run (an OUTPUT_DIR of tools/train_net.py): a list of
    ``{"iteration", metric...}`` in step order, with the median seconds per step since the
    evaluation before (machines vary, and so does what runs beside a training)."""
    log_file = os.path.join(run_dir, "metrics.json")
    config = read_run_config(run_dir)
    keys = {metric: evaluation_key(config["DATASETS"]["TEST"], metric)
            for metric, _, _ in CURVE_METRICS}
    max_iter = config["SOLVER"]["MAX_ITER"]
    points, step_times = [], []
    for iteration, entry in read_metrics_log(log_file).items():
        if "time" in entry:
            step_times.append(entry["time"])
        if keys["mask_AP"] in entry:
            points.append({
                # detectron2 logs a periodic evaluation at the step before, the final one at
                # MAX_ITER
                "iteration": min(iteration + 1, max_iter),
                **{metric: entry.get(key) for metric, key in keys.items()},
                "s_per_step": float(np.median(step_times)) if step_times else None,
            })
            step_times = []
    if not points:
        raise UserInputError(f"{log_file} holds no evaluation yet (TEST.EVAL_PERIOD > 0 logs one "
                             "every EVAL_PERIOD steps).")
    return points


def lr_drops(run_dir, config=None):
    """The steps at which the run's learning rate drops (its SOLVER.STEPS), for the figure;
    ``config``: the run's config.yaml where it is read already."""
    solver = (config or read_run_config(run_dir)).get("SOLVER") or {}
    return [int(step) for step in solver.get("STEPS") or ()]


def read_branch(run_dir):
    """A branch: a run trained from a checkpoint of the curve's run (its MODEL.WEIGHTS) on a
    decaying learning rate. Its final evaluation, placed at the step its schedule ends, with the
    step it started from and its learning-rate drops counted from the curve's step 0."""
    config = read_run_config(run_dir)
    weights = (config.get("MODEL") or {}).get("WEIGHTS") or ""
    checkpoint = CHECKPOINT_NAME.search(weights)
    if checkpoint is None:
        raise UserInputError(
            f"{run_dir} is not a branch: its MODEL.WEIGHTS ({weights or 'none'}) is not a "
            "checkpoint model_NNNNNNN.pth of the curve's run; train it with MODEL.WEIGHTS "
            "<curve run>/model_NNNNNNN.pth.")
    start = int(checkpoint.group(1)) + 1
    final = read_curve(run_dir)[-1]
    return {**final, "iteration": start + final["iteration"], "start": start,
            "base_lr": config["SOLVER"]["BASE_LR"],
            "lr_drops": [start + step for step in lr_drops(run_dir, config)]}


def converged_point(points, tolerance=DEFAULT_TOLERANCE, metric="mask_AP"):
    """The point (an evaluation or a branch's end) of fewest steps whose ``metric`` is within
    ``tolerance`` of the best, the better one of a tie: the shortest schedule that reaches where
    the curve flattens (as far as the runs went)."""
    best = max(point[metric] for point in points)
    return min((point for point in points if point[metric] >= best - tolerance),
               key=lambda point: (point["iteration"], -point[metric]))


def summarize_curve(points, tolerance=DEFAULT_TOLERANCE, lr_drop_steps=(), branches=()):
    every_point = list(points) + list(branches)
    best = max(every_point, key=lambda point: point["mask_AP"])
    converged = converged_point(every_point, tolerance)
    return {"points": points, "branches": list(branches), "tolerance_mask_AP": tolerance,
            "lr_drops": list(lr_drop_steps), "best": best, "converged": converged,
            "converged_step": converged["iteration"]}


def describe_point(point):
    """Where a point of the curve lies: its step, and for a branch's end where it branched."""
    if "start" not in point:
        return f"step {point['iteration']}"
    return (f"step {point['iteration']} (the branch from step {point['start']} at LR "
            f"{point['base_lr']:g}, dropping at {', '.join(map(str, point['lr_drops']))})")


def _metric_cells(point):
    return [format(point[key], fmt) for key, _, fmt in CURVE_METRICS] + [
        format(point["s_per_step"], ".3f") if point["s_per_step"] else "n/a"]


def format_curve_markdown(name, curve, machine=""):
    titles = [title for _, title, _ in CURVE_METRICS]
    table = tabulate([[point["iteration"]] + _metric_cells(point) for point in curve["points"]],
                     headers=["step"] + titles + ["s/step (median since the last)"],
                     tablefmt="pipe", disable_numparse=True)
    lines = [f"# Validation curve of {name}", "",
             f"Evaluations logged during training{f', on {machine}' if machine else ''}.", "",
             table, ""]
    if curve["branches"]:
        branch_table = tabulate(
            [[branch["iteration"], branch["start"], format(branch["base_lr"], "g"),
              ", ".join(map(str, branch["lr_drops"]))]
             + _metric_cells(branch) for branch in curve["branches"]],
            headers=["schedule (steps)", "branched at step", "LR from there", "LR drops at"]
            + titles + ["s/step"],
            tablefmt="pipe", disable_numparse=True)
        lines += ["Branches: runs from one of the run's checkpoints that decay the learning rate; "
                  "each one's final evaluation stands for the schedule it completes.", "",
                  branch_table, ""]
    best, converged = curve["best"], curve["converged"]
    lines += [
        f"Best mask AP {best['mask_AP']:.2f} at {describe_point(best)}; the shortest schedule "
        f"within {curve['tolerance_mask_AP']:g} mask AP of it: **{curve['converged_step']} steps** "
        f"({describe_point(converged)}, mask AP {converged['mask_AP']:.2f}; as far as the run went: "
        f"{curve['points'][-1]['iteration']} steps)."
        + (f" The learning rate drops at steps {', '.join(map(str, curve['lr_drops']))} "
           "(SOLVER.STEPS)." if curve["lr_drops"] else ""), "",
        "![the curve](curve.png)", "",
    ]
    return "\n".join(lines)


def curve_figure(name, curve):
    figure = Figure(figsize=(12, 3.6), layout="constrained")
    by_step = {point["iteration"]: point for point in curve["points"]}
    for axes, (key, title, _) in zip(figure.subplots(1, len(CURVE_METRICS)), CURVE_METRICS):
        steps = [point["iteration"] for point in curve["points"]]
        axes.plot(steps, [point[key] for point in curve["points"]], "o-", label="the run")
        for number, branch in enumerate(curve["branches"]):
            start = by_step.get(branch["start"])
            if start:
                axes.plot([start["iteration"], branch["iteration"]], [start[key], branch[key]],
                          "--", color="C2")
            axes.plot(branch["iteration"], branch[key], "*", color="C2", markersize=11,
                      label="branch, LR decayed" if number == 0 else None)
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
