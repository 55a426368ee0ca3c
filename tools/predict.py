#!/usr/bin/env python3
"""Segment nuclei in images with a trained model: overlays, label maps and COCO results.

    python tools/predict.py --config-file configs/maskrcnnpp_R50.yaml \\
        --weights output/maskrcnnpp_R50/model_final.pth --input images/ extra.png --output pred/

Writes, per image, OUTPUT/<name>_overlay.png (the nuclei drawn by detectron2's Visualizer) and
OUTPUT/<name>_labels.png (16-bit instance label map: 0 background, nuclei 1..N), both from the
predictions scoring at least TEST.NUCLEI.SCORE_THRESHOLD, as the evaluation's instance maps; and
OUTPUT/coco_instances_results.json with every prediction (RLE mask, score, category_id, image_id,
file_name), the input of tools/evaluate.py. Images larger than TEST.TILE.SIZE go through
overlap-tile inference. Trailing KEY VALUE pairs override the config. An unreadable image is
reported and skipped; the exit code is then 1.
"""

import argparse
import os
import sys

import maskrcnnpp  # noqa: F401  (registers datasets and models)
from maskrcnnpp.engine import build_cfg, parse_with_overrides
from maskrcnnpp.errors import UserInputError
from maskrcnnpp.inference.predict import RESULTS_FILE, list_images, predict_images


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="CFG")
    parser.add_argument("--weights", required=True, help="trained checkpoint (model_final.pth)")
    parser.add_argument("--input", nargs="+", required=True, metavar="FILE_OR_DIR")
    parser.add_argument("--output", required=True, metavar="DIR")
    return parse_with_overrides(parser, argv)


def main(argv=None):
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        if not os.path.isfile(args.weights):
            raise UserInputError(f"--weights {args.weights} is not a file; pass model_final.pth.")
        cfg = build_cfg(args.config_file, [*args.opts, "MODEL.WEIGHTS", args.weights])
        images = list_images(args.input)
    except UserInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    results, nuclei, skipped = predict_images(cfg, images, args.output)
    print(
        f"Predicted {len(images) - len(skipped)} of {len(images)} images: {len(results)} "
        f"predictions, {nuclei} nuclei scoring >= {cfg.TEST.NUCLEI.SCORE_THRESHOLD:g} in the "
        f"overlays and label maps. Wrote {args.output}/<name>_overlay.png, <name>_labels.png and "
        f"{RESULTS_FILE}."
    )
    for path, reason in skipped:
        print(f"  skipped {path}: {reason}")
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
