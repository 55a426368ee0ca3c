#!/usr/bin/env python3
"""The validation curve of a training run: its periodic evaluations (TEST.EVAL_PERIOD) against steps.

    python tools/training_curve.py --run output/cpu_converge/fpn_curve \\
        --out docs/results/cpu_converge/fpn_curve --machine "2-core CPU"

Writes OUT/curve.md (mask AP, foreground IoU, DSB score and PQ at each evaluated step, and the
first step within --tolerance mask AP of the best: the shortest schedule that reaches where the
curve flattens), curve.json and curve.png, and copies the run's config.yaml and metrics.json (the
training log the curve comes from) into OUT/run/, so the curve outlives the run folder. Works on a
run that is still training: it shows the evaluations so far.
"""

import argparse
import os
import shutil

from maskrcnnpp import cli
from maskrcnnpp.analysis.training_curve import (
    DEFAULT_TOLERANCE,
    lr_drops,
    read_curve,
    summarize_curve,
    write_curve,
)
from maskrcnnpp.errors import UserInputError
from maskrcnnpp.io_utils import atomic_path
from maskrcnnpp.preflight import check_writable


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, metavar="DIR", help="a train_net.py OUTPUT_DIR")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the curve files")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="mask AP below the best that still counts as converged "
                        "(default: %(default)s)")
    parser.add_argument("--machine", default="", help="where the run trained, for the report")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    if args.tolerance < 0:
        raise UserInputError(f"--tolerance {args.tolerance:g}: give 0 or more mask AP.")
    if os.path.abspath(args.out).startswith(os.path.abspath(args.run) + os.sep) or (
            os.path.abspath(args.out) == os.path.abspath(args.run)):
        raise UserInputError(f"--out {args.out} lies in the run folder {args.run}; choose a "
                             "folder outside it.")
    curve = summarize_curve(read_curve(args.run), args.tolerance, lr_drops(args.run))
    check_writable(args.out, "--out")
    name = os.path.basename(os.path.normpath(args.run))
    write_curve(name, curve, args.out, args.machine)
    for file_name in ("config.yaml", "metrics.json"):
        target = os.path.join(args.out, "run", file_name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(os.path.join(args.run, file_name), tmp)
    print(f"{len(curve['points'])} evaluations, best mask AP {curve['best']['mask_AP']:.2f} at "
          f"step {curve['best']['iteration']}; within {args.tolerance:g} AP of it from step "
          f"{curve['converged_step']}. Wrote {args.out}/curve.md, .json, .png and run/.")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
