#!/usr/bin/env python3
"""Draw the wiring of neck topologies, side by side, from maskrcnnpp/modeling/topology.py.

    python tools/draw_wiring.py --topology dense fpn --levels 4 --out docs/images/wiring_dense.png

Each node X^{i,j} is drawn at level i and column j, each input edge as an arrow coloured by how it
is resized; see maskrcnnpp/analysis/wiring_figure.py. The PNG appears only when complete.
"""

import argparse
import os
import sys

from maskrcnnpp import cli
from maskrcnnpp.analysis.wiring_figure import check_levels, wiring_figure
from maskrcnnpp.errors import UserInputError, check_choice
from maskrcnnpp.io_utils import atomic_path
from maskrcnnpp.modeling.topology import WIRINGS
from maskrcnnpp.preflight import check_writable


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--topology", nargs="+", default=["dense", "fpn"], metavar="NAME",
                        help=f"one or more of {', '.join(WIRINGS)}, drawn left to right "
                             "(default: %(default)s)")
    parser.add_argument("--levels", type=int, default=4,
                        help="pyramid levels; 4 is res2-res5 -> p2-p5 (default: %(default)s)")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--dpi", type=int, default=130, help="resolution (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    for topology in args.topology:
        check_choice("--topology", topology, WIRINGS)
    check_levels(args.levels, "--levels")
    if not args.out.lower().endswith(".png"):
        raise UserInputError(f"--out {args.out} is not a .png file; name one, e.g. wiring.png.")
    check_writable(os.path.dirname(os.path.abspath(args.out)), "The folder of --out")
    figure = wiring_figure(args.topology, args.levels)
    with atomic_path(args.out) as tmp:
        figure.savefig(tmp, format="png", dpi=args.dpi)
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
