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
timing anything. --data-loader N times N batches of the first config's training data loader in
this process (one worker's work on one thread: reading, cropping, augmenting), to size the
loader workers. --out writes the report as JSON (.json) or as the printed table (.md).
"""

import argparse
import os

import torch
from tqdm import tqdm

from maskrcnnpp import cli
from maskrcnnpp.analysis.benchmark_report import format_costs, format_speed, named_configs
from maskrcnnpp.analysis.cost import cost_rows
from maskrcnnpp.analysis.loader_speed import format_throughput, loader_throughput
from maskrcnnpp.analysis.speed import DEFAULT_REPEATS, BenchmarkSettings, benchmark, benchmark_cfg
from maskrcnnpp.errors import UserInputError
from maskrcnnpp.io_utils import write_json, write_text
from maskrcnnpp.preflight import check_datasets, check_model, check_writable


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
    parser.add_argument("--amp", action="store_true",
                        help="autocast: float16 on a GPU, bfloat16 on a CPU with bfloat16 instructions")
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
    parser.add_argument("--data-loader", type=int, metavar="BATCHES",
                        help="time this many batches of the first config's training data loader "
                        "(images/s per worker); no model is measured")
    parser.add_argument("--out", metavar="FILE", help="write the report as .json or .md")
    return cli.parse_with_overrides(parser, argv)


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
    if args.data_loader is not None:
        cfg = named[0][1]
        check_datasets(cfg, cfg.DATASETS.TRAIN, train_names=cfg.DATASETS.TRAIN)
        with tqdm(total=args.data_loader, desc="data loader", unit="batch") as progress:
            report = loader_throughput(cfg, args.data_loader, progress)
        table = format_throughput(report)
    elif args.flops_only:
        with tqdm(total=len(named), desc="counting", unit="config") as progress:
            measured = [(name, benchmark_cfg(cfg, settings)) for name, cfg in named]
            for _, cfg in measured:
                check_model(cfg)  # one line, not a traceback, for a model that cannot be built
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
