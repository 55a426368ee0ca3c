#!/usr/bin/env python3
"""Train and evaluate configs on the same data, schedule and seeds; compare accuracy and cost.

    python tools/compare.py --configs configs/maskrcnn_R50_FPN.yaml configs/maskrcnnpp_R50.yaml \\
        --output output/compare --seeds 0 1 2 SOLVER.MAX_ITER 5000

Trailing KEY VALUE pairs apply to every run. Each run trains in a child process into
DIR/runs/<config>/seed<s>; calling the command again reuses finished runs and resumes the others.
Writes DIR/compare.md, compare.csv, compare.json and compare.png.
"""

import argparse
import os
import sys

import maskrcnnpp  # noqa: F401  (registers datasets and models)
from maskrcnnpp.engine import parse_with_overrides
from maskrcnnpp.compare import RunFailed, compare
from maskrcnnpp.errors import UserInputError

TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_net.py")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", required=True, metavar="CFG",
                        help="configs to compare; the first is the baseline of the t-tests")
    parser.add_argument("--output", required=True, metavar="DIR", help="comparison folder")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="seeds every config is trained with (default: 0)")
    parser.add_argument("--num-gpus", type=int, default=1, help="per run, as in train_net.py")
    parser.add_argument("--image-size", type=int,
                        help="side of the synthetic image of the speed benchmark "
                        "(default: INPUT.MIN_SIZE_TEST of the first config)")
    parser.add_argument("--repeats", type=int, help="timed inference calls per config "
                        "(default: as tools/benchmark.py, per device)")
    return parse_with_overrides(parser, argv)


def main(argv=None):
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        compare(
            args.configs, args.output, args.seeds, args.opts, train_script=TRAIN_SCRIPT,
            num_gpus=args.num_gpus, image_size=args.image_size, repeats=args.repeats,
        )
    except UserInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Wrote {os.path.join(args.output, 'compare')}.md, .csv, .json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
