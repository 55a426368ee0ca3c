#!/usr/bin/env python3
"""Parameters and FLOPs of pyramid necks, side by side, as ratios to a baseline (FPN).

    python tools/neck_report.py configs/maskrcnn_R50_FPN.yaml configs/maskrcnnpp_R50*.yaml
    python tools/neck_report.py configs/maskrcnnpp_R50.yaml \
        --baseline configs/maskrcnn_R50_FPN.yaml --size 512 --out output/neck_report.md
    # a variant of a config, to price one design choice:
    python tools/neck_report.py configs/maskrcnn_R50_FPN.yaml \
        configs/maskrcnnpp_R50.yaml+MODEL.DENSE_FPN.NODE_WIDTH=256
"""

import argparse
import sys

import maskrcnnpp  # noqa: F401  (registers datasets and models)
from maskrcnnpp.errors import UserInputError
from maskrcnnpp.modeling.cost import (
    check_report_path,
    cost_table,
    format_cost_table,
    write_cost_table,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("configs", nargs="+", metavar="CFG", help="config files to measure; PATH+KEY=VALUE+... measures a variant")
    parser.add_argument("--size", type=int, default=512, help="side of the square input image")
    parser.add_argument(
        "--baseline", metavar="CFG", help="config the ratios refer to (default: the first CFG)"
    )
    parser.add_argument("--out", metavar="FILE", help="also write the table to FILE.md or .json")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.size < 32:
            raise UserInputError(f"--size {args.size} is too small; use at least 32 pixels.")
        if args.out:
            check_report_path(args.out)  # before minutes of measuring
        rows = cost_table(args.configs, size=args.size, baseline=args.baseline)
        print(format_cost_table(rows))
        if args.out:
            write_cost_table(rows, args.out, args.size)
    except UserInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
