#!/usr/bin/env python3
"""Convert nuclei data to the COCO layout Mask R-CNN++ trains on (see datasets/README.md).

    python datasets/prepare_nuclei.py dsb2018 SRC OUT [--pieces keep] [--val-fraction F] [--seed S]
    python datasets/prepare_nuclei.py labelmap IMAGES LABELS OUT [--val-fraction F] [--seed S]
"""
import argparse

from maskrcnnpp import cli
from maskrcnnpp.data.prepare import (
    INTENSITY_SCALINGS,
    PIECE_RULES,
    prepare_dsb2018,
    prepare_labelmaps,
)


def build_parser():
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--val-fraction", type=float, default=0.1,
                         help="share of images in val.json, decided per image id (default 0.1)")
    options.add_argument("--seed", type=int, default=0, help="seed of the split hash (default 0)")
    options.add_argument("--intensity", choices=sorted(INTENSITY_SCALINGS), default="percentile",
                         help="how images deeper than 8 bits become 8-bit: stretch the image's "
                         "0.1-99.9 percentiles (percentile, default) or its min-max to 0-255; "
                         "8-bit images are kept as they are")
    options.add_argument("--pieces", choices=PIECE_RULES, default="error",
                         help="a nucleus (mask or label) in several separate pieces: stop with the "
                         "file named (error, default), keep it as one nucleus, or split it into "
                         "one nucleus per piece; a binary image given as a label map needs split")
    options.add_argument("--binarize-masks", action="store_true",
                         help="threshold masks holding several foreground values (e.g. saved as "
                         "JPEG) at half their maximum instead of stopping")
    options.add_argument("--overwrite", action="store_true", help="replace an existing OUT")

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sources = parser.add_subparsers(dest="source", required=True)
    dsb = sources.add_parser(
        "dsb2018", parents=[options],
        help="Kaggle DSB2018 folders: SRC/<id>/images/<id>.png, SRC/<id>/masks/*.png")
    dsb.add_argument("src", help="e.g. the unzipped stage1_train folder")
    dsb.add_argument("out", help="output folder (gets images/ and annotations/)")
    labelmap = sources.add_parser(
        "labelmap", parents=[options],
        help="images + instance label maps (0 background) matched by file stem")
    labelmap.add_argument("images", help="folder of images (PNG, TIFF, JPEG, BMP)")
    labelmap.add_argument("labels",
                          help="folder of label maps (PNG or TIFF, 8/16/32-bit or palette)")
    labelmap.add_argument("out", help="output folder (gets images/ and annotations/)")
    return parser


def main(argv):
    args = build_parser().parse_args(argv)
    options = dict(val_fraction=args.val_fraction, seed=args.seed, intensity=args.intensity,
                   pieces=args.pieces, binarize=args.binarize_masks, overwrite=args.overwrite)
    if args.source == "dsb2018":
        summary = prepare_dsb2018(args.src, args.out, **options)
    else:
        summary = prepare_labelmaps(args.images, args.labels, args.out, **options)
    print(summary.format())
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
