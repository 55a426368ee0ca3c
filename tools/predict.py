#!/usr/bin/env python3
"""Segment nuclei in images with a trained model: overlays, label maps and COCO results.

    python tools/predict.py --config-file configs/maskrcnnpp_R50.yaml \\
        --weights output/maskrcnnpp_R50/model_final.pth --input images/ extra.png --output pred/

Writes, per image, OUTPUT/<name>_overlay.png (the nuclei drawn by detectron2's Visualizer) and
OUTPUT/<name>_labels.png (16-bit instance label map: 0 background, nuclei 1..N; for more than
65,535 nuclei OUTPUT/<name>_labels.tif instead, a 32-bit integer TIFF, as PNG holds 16 bits at
most), both from the predictions scoring at least TEST.NUCLEI.SCORE_THRESHOLD, as the
evaluation's instance maps; and OUTPUT/coco_instances_results.json with every prediction (RLE
mask, score, category_id, image_id, file_name), the input of tools/evaluate.py. Images larger
than TEST.TILE.SIZE go through overlap-tile inference, in memory bounded by the tile batch plus
the image, its label map and overlay (docs/results/predict_memory.md). A model that predicts
boxes only (RetinaNet) gets overlays of its boxes, no label maps, and COCO results with boxes
(bbox) instead of masks. Images are read as prepare_nuclei.py reads them (16-bit and float
images stretched by --intensity). Trailing KEY VALUE pairs override the config.

The weights, the output folder and the inputs are checked before anything is written. OUTPUT
appears only once complete, from one run: it is written into a temporary folder beside it and
renamed (Ctrl-C or a kill leaves nothing); an existing OUTPUT is replaced only with --overwrite,
and never if it is, or holds, an input. An image that cannot be read is reported and skipped,
and the exit code is then 1.
"""

import os

import maskrcnnpp  # noqa: F401  (first: it quiets the dependencies' import-time warnings)
from maskrcnnpp import cli
from maskrcnnpp.config_loader import build_cfg
from maskrcnnpp.data.images import IMAGE_EXTENSIONS, INTENSITY_SCALINGS
from maskrcnnpp.errors import UserInputError
from maskrcnnpp.inference.predict_files import RESULTS_FILE, predict_images
from maskrcnnpp.io_utils import atomic_directory
from maskrcnnpp.preflight import check_model, check_output_folder

def parse_args(argv):
    parser = cli.trained_model_parser(__doc__)
    parser.add_argument("--input", nargs="+", required=True, metavar="FILE_OR_DIR")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output folder (an earlier prediction)")
    parser.add_argument("--intensity", choices=sorted(INTENSITY_SCALINGS), default="percentile",
                        help="how images deeper than 8 bits become 8-bit, as in prepare_nuclei.py "
                        "(default: %(default)s)")
    return cli.parse_with_overrides(parser, argv)


def list_images(inputs):
    """Image files named on the command line or found (sorted) in the folders named there."""
    images = []
    for path in inputs:
        if os.path.isdir(path):
            images += sorted(
                os.path.join(path, name) for name in os.listdir(path)
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif os.path.isfile(path):
            images.append(path)
        else:
            raise UserInputError(f"--input {path} is neither an image file nor a folder.")
    if not images:
        raise UserInputError(
            f"--input {' '.join(inputs)} holds no images ({', '.join(IMAGE_EXTENSIONS)})."
        )
    stems = [os.path.splitext(os.path.basename(path))[0] for path in images]
    repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
    if repeated:
        raise UserInputError(
            f"Several inputs are named {repeated[0]!r}; their outputs would overwrite each other. "
            "Predict them into different --output folders."
        )
    return images


def main(argv):
    args = parse_args(argv)
    cli.check_weights_file(args.weights)
    cfg = build_cfg(args.config_file, [*args.opts, "MODEL.WEIGHTS", args.weights])
    images = list_images(args.input)
    # Folders are listed, not walked: an output inside an input folder is never read as input.
    check_output_folder(args.output, [*args.input, *images], args.overwrite,
                        reads_subfolders=False, what="--output")
    check_model(cfg)  # the weights load safely and fit the config
    with atomic_directory(args.output, overwrite=args.overwrite) as folder:
        results, nuclei, skipped, with_masks = predict_images(cfg, images, folder, args.intensity)
    drawn, files = "overlays and label maps", "<name>_overlay.png, <name>_labels.png (.tif)"
    if with_masks is False:
        drawn, files = "overlays (boxes: the model predicts no masks)", "<name>_overlay.png"
    print(
        f"Predicted {len(images) - len(skipped)} of {len(images)} images: {len(results)} "
        f"predictions, {nuclei} nuclei scoring >= {cfg.TEST.NUCLEI.SCORE_THRESHOLD:g} in the "
        f"{drawn}. Wrote {args.output}/{files} and {RESULTS_FILE}."
    )
    for path, reason in skipped:
        print(f"  skipped {path}: {reason}")
    return 1 if skipped else 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
