#!/usr/bin/env python3
"""Parameters, FLOPs, inference latency and throughput, training step time and peak memory of
configs, measured interleaved in one run, with ratios to the first config.

    python tools/benchmark.py --config-file configs/maskrcnn_R50_FPN.yaml \\
        configs/maskrcnnpp_R50.yaml
    python tools/benchmark.py --config-file A.yaml B.yaml --device cuda --amp --batch-size 4 \\
        --image-size 1024 --out output/benchmark.json MODEL.DENSE_FPN.NODE_WIDTH 64
    python tools/benchmark.py --config-file configs/maskrcnn_R50_FPN.yaml \\
        configs/neck_variants/*.yaml --flops-only --out output/neck_costs.md

Trailing KEY VALUE pairs apply to every config. Models without MODEL.WEIGHTS are measured with a
fixed number of detections per image (--detections); see maskrcnnpp/analysis/speed.py.
--flops-only counts parameters and FLOPs of the neck, the backbone and the whole model, without
timing anything. --out writes the report as JSON (.json) or as the printed table (.md).
"""

import argparse
import os

import torch
from tabulate import tabulate
from tqdm import tqdm

from maskrcnnpp import cli
from maskrcnnpp.analysis.cost import COST_RATIO_KEYS, cost_rows
from maskrcnnpp.analysis.speed import DEFAULT_REPEATS, BenchmarkSettings, benchmark, benchmark_cfg
from maskrcnnpp.config import build_cfg
from maskrcnnpp.errors import UserInputError
from maskrcnnpp.io_utils import check_writable, write_json, write_text

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


def device_defaults(index):
    """The default of one of (warmup, repeats, train_repeats) per device, for --help."""
    return ", ".join(f"{device} {counts[index]}" for device, counts in DEFAULT_REPEATS.items())


def parse_args(argv):
    defaults = BenchmarkSettings()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", nargs="+", required=True, metavar="CFG",
                        help="configs to measure; ratios refer to the first")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-size", type=int, default=defaults.image_size,
                        help="side of the square synthetic input (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--amp", action="store_true", help="float16 autocast (CUDA)")
    parser.add_argument("--warmup", type=int, help="untimed calls per model before timing "
                        f"(default: {device_defaults(0)})")
    parser.add_argument("--repeats", type=int, help="timed inference calls per model "
                        f"(default: {device_defaults(1)})")
    parser.add_argument("--train-repeats", type=int, help="timed training steps per model; "
                        f"0 skips training (default: {device_defaults(2)})")
    parser.add_argument("--detections", type=int, default=defaults.detections,
                        help="detections per image for models without MODEL.WEIGHTS "
                        "(default: %(default)s)")
    parser.add_argument("--flops-only", action="store_true",
                        help="count parameters and FLOPs of neck, backbone and model; no timing")
    parser.add_argument("--out", metavar="FILE", help="write the report as .json or .md")
    return cli.parse_with_overrides(parser, argv)


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
        f"{machine['device']}{' AMP' if settings['amp'] else ''} (torch {machine['torch']}); "
        f"medians of {settings['repeats']} inference calls and {settings['train_repeats']} "
        f"training steps after {settings['warmup']} warm-up, measured interleaved. Memory: "
        f"{report['memory_method']}."
    )
    return title + "\n\n" + tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True)


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


def main(argv):
    args = parse_args(argv)
    if args.out:
        if not args.out.endswith((".json", ".md")):
            raise UserInputError(f"--out {args.out}: the report is written as .json or .md.")
        check_writable(os.path.dirname(os.path.abspath(args.out)), "The folder of --out")
    settings = BenchmarkSettings(
        device=args.device, image_size=args.image_size, batch_size=args.batch_size,
        amp=args.amp, warmup=args.warmup, repeats=args.repeats,
        train_repeats=args.train_repeats, detections=args.detections,
    )
    settings.check()  # before minutes of measuring
    named = named_configs(args.config_file, args.opts)
    if args.flops_only:
        with tqdm(total=len(named), desc="counting", unit="config") as progress:
            measured = [(name, benchmark_cfg(cfg, settings)) for name, cfg in named]
            rows = cost_rows(measured, settings.image_size, progress)
        report = {"image_size": settings.image_size, "results": rows}
        table = format_costs(report)
    else:
        with tqdm(desc="benchmark", unit="call") as progress:
            report = benchmark(named, settings, progress)
        table = format_speed(report)
    print(table)
    if args.out:
        if args.out.endswith(".json"):
            write_json(report, args.out, indent=2)
        else:
            write_text(table + "\n", args.out)
        print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
