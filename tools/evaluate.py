#!/usr/bin/env python3
"""Evaluate a COCO results file of nuclei masks against COCO ground truth; no model needed.

    python tools/evaluate.py --gt datasets/dsb2018/annotations/val.json \\
        --pred output/inference/coco_instances_results.json --out output/eval

Prints the metrics table (mask AP, IoU, Dice, DSB score, AJI, PQ, counts) and StarDist's matching
table (precision, recall, F1, accuracy, mean matched IoU at IoU 0.5 ... 0.9) and, with --out, writes
DIR/nuclei_metrics.json and DIR/nuclei_per_image.csv, the files training's evaluator writes.
"""

import argparse
import os

import maskrcnnpp  # noqa: F401  (first: it quiets the dependencies' import-time warnings)
from detectron2.config import get_cfg

from maskrcnnpp import cli
from maskrcnnpp.errors import UserInputError
from maskrcnnpp.config import add_maskrcnnpp_config
from maskrcnnpp.evaluation import (
    METRICS_FILE,
    PER_IMAGE_FILE,
    evaluate_coco_predictions,
    format_summary,
    load_coco_gt,
    load_coco_results,
    save_evaluation,
)
from maskrcnnpp.evaluation.metrics import check_matching_thresholds, check_score_threshold
from maskrcnnpp.preflight import check_writable


def parse_args(argv=None):
    cfg = get_cfg()
    add_maskrcnnpp_config(cfg)
    defaults = cfg.TEST.NUCLEI  # one source of truth for training and this tool
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--gt", required=True, help="COCO ground-truth JSON (images, annotations, categories)"
    )
    parser.add_argument(
        "--pred",
        required=True,
        help="COCO results JSON: image_id, category_id, RLE segmentation, score",
    )
    parser.add_argument("--out", help=f"folder for {METRICS_FILE} and {PER_IMAGE_FILE}")
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=defaults.SCORE_THRESHOLD,
        help="predictions scoring at least this form the instance maps (default: %(default)s)",
    )
    parser.add_argument(
        "--max-dets",
        type=int,
        default=defaults.MAX_DETS,
        help="COCO maxDets for mask AP: masks kept per image (default: %(default)s)",
    )
    parser.add_argument(
        "--matching-thresholds",
        type=float,
        nargs="+",
        default=defaults.MATCHING_THRESHOLDS,
        metavar="T",
        help="IoU thresholds, each in (0, 1), of the matching table (default: %(default)s)",
    )
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier evaluation in --out")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    check_score_threshold(args.score_threshold, "--score-threshold")
    check_matching_thresholds(args.matching_thresholds)
    if args.out:
        check_writable(args.out, "--out")
        earlier = [name for name in (METRICS_FILE, PER_IMAGE_FILE)
                   if os.path.exists(os.path.join(args.out, name))]
        if earlier and not args.overwrite:
            raise UserInputError(
                f"--out {args.out} holds an earlier evaluation ({', '.join(earlier)}): choose "
                "another folder, or pass --overwrite to replace it."
            )
    coco_gt = load_coco_gt(args.gt)
    predictions = load_coco_results(args.pred)
    summary, rows, _ = evaluate_coco_predictions(
        coco_gt, predictions, args.score_threshold, args.max_dets,
        matching_thresholds=args.matching_thresholds,
    )
    print(format_summary(summary))
    if args.out:
        save_evaluation(summary, rows, args.out)
        print(f"Wrote {os.path.join(args.out, METRICS_FILE)} and {PER_IMAGE_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
