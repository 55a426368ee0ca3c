#!/usr/bin/env python3
"""The validation curve of a training run: its periodic evaluations (TEST.EVAL_PERIOD) against steps.

    python tools/training_curve.py --run output/cpu_converge/fpn_curve \\
        --out docs/results/cpu_converge/fpn_curve --machine "2-core CPU"

Writes OUT/curve.md (mask AP, foreground IoU, DSB score and PQ at each evaluated step, and the
fewest steps within --tolerance mask AP of the best: the shortest schedule that reaches where the
curve flattens), curve.json and curve.png, and copies the run's config.yaml and metrics.json (the
training log the curve comes from) into OUT/run/, so the curve outlives the run folder. Works on a
run that is still training: it shows the evaluations so far.

--branch DIR (repeatable) adds a branch: a run that starts from one of the run's checkpoints and
decays the learning rate, so that its final evaluation measures a shorter schedule with its own
decay for the price of the decay alone (configs/cpu_converge/fpn_curve_branch.yaml):

    python tools/train_net.py --config-file configs/cpu_converge/fpn_curve_branch.yaml \
        MODEL.WEIGHTS output/cpu_converge/fpn_curve/model_0005999.pth \
        OUTPUT_DIR output/cpu_converge/fpn_curve_branch_6000

Its log goes to OUT/branches/NAME/.
"""

import argparse
import os
import shutil

from maskrcnnpp import cli
from maskrcnnpp.analysis.training_curve import (
    DEFAULT_TOLERANCE,
    describe_point,
    lr_drops,
    read_branch,
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
    parser.add_argument("--branch", action="append", default=[], metavar="DIR",
                        help="a train_net.py OUTPUT_DIR that trained on from one of the run's "
                        "checkpoints with a decayed learning rate (repeatable)")
    parser.add_argument("--machine", default="", help="where the run trained, for the report")
    return parser.parse_args(argv)


def _folder_name(run_dir):
    return os.path.basename(os.path.normpath(run_dir))


def keep_log(run_dir, target_dir):
    """Copy a run's config.yaml and metrics.json to ``target_dir``, so the curve outlives it."""
    os.makedirs(target_dir, exist_ok=True)
    for file_name in ("config.yaml", "metrics.json"):
        with atomic_path(os.path.join(target_dir, file_name)) as tmp:
            shutil.copyfile(os.path.join(run_dir, file_name), tmp)


def main(argv):
    args = parse_args(argv)
    if args.tolerance < 0:
        raise UserInputError(f"--tolerance {args.tolerance:g}: give 0 or more mask AP.")
    for run_dir in [args.run] + args.branch:
        if os.path.commonpath([os.path.abspath(args.out), os.path.abspath(run_dir)]) == (
                os.path.abspath(run_dir)):
            raise UserInputError(f"--out {args.out} lies in the run folder {run_dir}; choose a "
                                 "folder outside it.")
    names = [_folder_name(branch) for branch in args.branch]
    if len(set(names)) < len(names):
        raise UserInputError(f"--branch folders share a name ({', '.join(names)}); each branch's "
                             "log is kept under its folder's name: give them different names.")
    branches = sorted((read_branch(branch) for branch in args.branch),
                      key=lambda branch: branch["iteration"])
    curve = summarize_curve(read_curve(args.run), args.tolerance, lr_drops(args.run), branches)
    check_writable(args.out, "--out")
    write_curve(_folder_name(args.run), curve, args.out, args.machine)
    keep_log(args.run, os.path.join(args.out, "run"))
    for branch in args.branch:
        keep_log(branch, os.path.join(args.out, "branches", _folder_name(branch)))
    print(f"{len(curve['points'])} evaluations and {len(branches)} branches, best mask AP "
          f"{curve['best']['mask_AP']:.2f} at {describe_point(curve['best'])}; within "
          f"{args.tolerance:g} AP of it from {describe_point(curve['converged'])}. Wrote "
          f"{args.out}/curve.md, .json, .png and the training logs.")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
