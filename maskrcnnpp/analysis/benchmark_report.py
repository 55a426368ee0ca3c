"""The benchmark's report: configs named for its rows, and its speed and cost tables in Markdown.

tools/benchmark.py measures with :mod:`.speed` (or counts with :mod:`.cost` alone, --flops-only)
and prints the table made here.
"""
import os

from tabulate import tabulate

from ..config_loader import build_cfg
from ..machine import label as machine_label
from .cost import COST_RATIO_KEYS

# (key, column title, format) of the speed table.
SPEED_COLUMNS = (
    ("model_params", "params (M)", lambda v: f"{v / 1e6:.2f}"),
    ("model_flops", "GFLOPs", lambda v: f"{v / 1e9:.1f}"),
    ("detections_per_image", "detections", lambda v: f"{v:.0f}"),
    ("latency_ms", "ms/batch median [p25, p75]",
     lambda v: f"{v['median']:.1f} [{v['p25']:.1f}, {v['p75']:.1f}]"),
    ("ms_per_image", "ms/image", lambda v: f"{v:.1f}"),
    ("images_per_s", "images/s", lambda v: f"{v:.2f}"),
    ("train_step_s", "train s/step", lambda v: f"{v:.3f}"),
    ("train_images_per_s", "train images/s", lambda v: f"{v:.2f}"),
    ("peak_memory_mb", "infer peak MB", lambda v: f"{v:.0f}"),
    ("train_peak_memory_mb", "train peak MB", lambda v: f"{v:.0f}"),
)
SPEED_RATIOS = ("ms_per_image", "train_step_s", "model_flops", "peak_memory_mb")
# (key, column title, scale) of the cost table.
COST_COLUMNS = (
    ("neck_params", "neck params (M)", 1e6),
    ("neck_flops", "neck GFLOPs", 1e9),
    ("backbone_flops", "backbone GFLOPs", 1e9),
    ("model_params", "model params (M)", 1e6),
    ("model_flops", "model GFLOPs", 1e9),
)


def named_configs(config_files, opts):
    """(name, config) per file, named by file name, or by path where names repeat."""
    cfgs = [build_cfg(path, opts) for path in config_files]
    names = [os.path.basename(path) for path in config_files]
    if len(set(names)) < len(names):
        names = list(config_files)
    return list(zip(names, cfgs))


def format_speed(report):
    """The benchmark as a Markdown table, headed by how it was measured."""
    headers = ["config"] + [title for _, title, _ in SPEED_COLUMNS] + ["ratios to first"]
    rows = []
    for result in report["results"]:
        cells = [result["config"]]
        cells += ["n/a" if result[key] is None else show(result[key])
                  for key, _, show in SPEED_COLUMNS]
        ratios = [f"{key.replace('_', ' ')} {result[key + '_ratio']:.2f}x"
                  for key in SPEED_RATIOS if result[key + "_ratio"] is not None]
        rows.append(cells + [", ".join(ratios)])
    settings, machine = report["settings"], report["machine"]
    title = (
        f"{settings['image_size']}x{settings['image_size']} px, batch {settings['batch_size']}, "
        f"{machine_label(machine)}{_precision(settings)}, torch {machine['torch']}; "
        f"medians of {settings['repeats']} inference calls and {settings['train_repeats']} "
        f"training steps after {settings['warmup']} warm-up, measured interleaved. Memory: "
        f"{report['memory_method']}."
    )
    return title + "\n\n" + tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True)


def _precision(settings):
    """How the models computed: float32, or autocast to the device's mixed-precision type."""
    if not settings["amp"]:
        return ""
    return " bfloat16 autocast" if settings["device"] == "cpu" else " float16 autocast (AMP)"


def format_costs(report):
    """The cost table: neck, backbone and model costs and their ratios to the first config."""
    headers = ["config", "neck"] + [title for _, title, _ in COST_COLUMNS]
    headers += [f"{key.replace('_', ' ')} ratio" for key in COST_RATIO_KEYS]
    body = [
        [row["config"], row["neck"]]
        + [f"{row[key] / scale:.2f}" for key, _, scale in COST_COLUMNS]
        + [f"{row[key + '_ratio']:.2f}x" for key in COST_RATIO_KEYS]
        for row in report["results"]
    ]
    title = (f"Costs at {report['image_size']}x{report['image_size']} (fvcore: 1 multiply-add = "
             "1 flop; random weights with a fixed number of detections)")
    return title + "\n\n" + tabulate(body, headers=headers, tablefmt="pipe", disable_numparse=True)
