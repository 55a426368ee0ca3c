#!/usr/bin/env python3
"""Parameters, FLOPs, inference latency, throughput, training step time and peak memory of configs,
measured interleaved in one run, with ratios to the first config.

    python tools/benchmark.py --config-file configs/maskrcnn_R50_FPN.yaml \\
        configs/maskrcnnpp_R50.yaml
    python tools/benchmark.py --config-file A.yaml B.yaml --device cuda --amp --batch-size 4 \\
        --image-size 1024 --out output/benchmark.json MODEL.DENSE_FPN.NODE_WIDTH 64

Trailing KEY VALUE pairs apply to every config. Models without MODEL.WEIGHTS are measured with a
fixed number of detections per image (--detections); see maskrcnnpp/benchmark.py.
"""

import argparse
import sys

import torch

import maskrcnnpp  # noqa: F401  (registers datasets and models)
from maskrcnnpp.benchmark import (
    DEFAULT_REPEATS,
    BenchmarkSettings,
    benchmark_config_files,
    check_report_path,
    format_benchmark,
    write_benchmark,
)
from maskrcnnpp.engine import parse_with_overrides
from maskrcnnpp.errors import UserInputError


def device_defaults(index):
    """The default of one of (warmup, repeats, train_repeats) per device, for --help."""
    return ", ".join(f"{device} {counts[index]}" for device, counts in DEFAULT_REPEATS.items())


def parse_args(argv):
    defaults = BenchmarkSettings()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", nargs="+", required=True, metavar="CFG",
                        help="configs to measure, or variants PATH+KEY=VALUE+...; "
                        "ratios refer to the first")
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
    parser.add_argument("--out", metavar="FILE.json", help="write the report as JSON")
    return parse_with_overrides(parser, argv)


def main(argv=None):
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        if args.out:
            check_report_path(args.out)
        settings = BenchmarkSettings(
            device=args.device, image_size=args.image_size, batch_size=args.batch_size,
            amp=args.amp, warmup=args.warmup, repeats=args.repeats,
            train_repeats=args.train_repeats, detections=args.detections,
        )
        report = benchmark_config_files(args.config_file, args.opts, settings)
    except UserInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_benchmark(report))
    if args.out:
        write_benchmark(report, args.out)
        print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
