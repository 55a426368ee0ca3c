#!/usr/bin/env python3
"""Segment nuclei in images with a trained model: overlays, label maps and COCO results.

    python tools/predict.py --config-file configs/maskrcnnpp_R50.yaml \\
        --weights output/maskrcnnpp_R50/model_final.pth --input images/ extra.png --output pred/

Writes, per image, OUTPUT/<name>_overlay.png (the nuclei drawn by detectron2's Visualizer) and
OUTPUT/<name>_labels.png (16-bit instance label map: 0 background, nuclei 1..N), both from the
predictions scoring at least TEST.NUCLEI.SCORE_THRESHOLD, as the evaluation's instance maps; and
OUTPUT/coco_instances_results.json with every prediction (RLE mask, score, category_id, image_id,
file_name), the input of tools/evaluate.py. Images larger than TEST.TILE.SIZE go through
overlap-tile inference. A model that predicts boxes only (RetinaNet) gets overlays of its boxes,
no label maps, and COCO results with boxes (bbox) instead of masks. Images are read as
prepare_nuclei.py reads them (16-bit and float images
stretched by --intensity). Trailing KEY VALUE pairs override the config. The weights, the output
folder and the inputs are checked before anything is written; an image that cannot be read is
reported and skipped, and the exit code is then 1.
"""

import os

import maskrcnnpp  # noqa: F401  (first: it quiets the dependencies' import-time warnings)
import cv2
import numpy as np
from detectron2.structures import BoxMode
from detectron2.utils.visualizer import Visualizer
from tqdm import tqdm

from maskrcnnpp import cli
from maskrcnnpp.config_loader import build_cfg
from maskrcnnpp.data.datasets import category_ids
from maskrcnnpp.data.images import IMAGE_EXTENSIONS, INTENSITY_SCALINGS, read_rgb8
from maskrcnnpp.errors import UserInputError
from maskrcnnpp.evaluation import instances_to_labelmap
from maskrcnnpp.evaluation.coco_files import LazyRLEMasks
from maskrcnnpp.inference import TiledPredictor
from maskrcnnpp.inference.predict import coco_results
from maskrcnnpp.io_utils import atomic_path, write_json
from maskrcnnpp.preflight import check_model, check_writable

RESULTS_FILE = "coco_instances_results.json"


def parse_args(argv):
    parser = cli.trained_model_parser(__doc__)
    parser.add_argument("--input", nargs="+", required=True, metavar="FILE_OR_DIR")
    parser.add_argument("--output", required=True, metavar="DIR")
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


def write_png(path, image):
    """Write an array as PNG atomically: HxWx3 RGB, or HxW (16-bit for label maps)."""
    if image.ndim == 3:
        image = np.ascontiguousarray(image[:, :, ::-1])  # OpenCV writes BGR
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(encoded.tobytes())


def save_image_outputs(path, image_bgr, results, score_threshold, output_dir, with_masks=True):
    """The overlay and the label map of one image, from its predictions above the threshold;
    without masks (a box-only model) the overlay draws the boxes and there is no label map."""
    kept = [result for result in results if result["score"] >= score_threshold]
    stem = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0])
    visualizer = Visualizer(image_bgr[:, :, ::-1])
    if not with_masks:
        boxes = [BoxMode.convert(r["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for r in kept]
        write_png(stem + "_overlay.png", visualizer.overlay_instances(boxes=boxes).get_image())
        return len(kept)
    rles = [result["segmentation"] for result in kept]
    labels = instances_to_labelmap(
        LazyRLEMasks(rles), image_bgr.shape[:2], scores=[r["score"] for r in kept]
    )
    if labels.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"{len(kept)} nuclei do not fit a 16-bit label map")
    write_png(stem + "_labels.png", labels.astype(np.uint16))
    write_png(stem + "_overlay.png", visualizer.overlay_instances(masks=rles).get_image())
    return len(kept)


def predict_images(cfg, images, output_dir, intensity="percentile"):
    """Predict every image; returns (results of all images, nuclei kept, skipped (path, why),
    whether the model predicts masks: False for a box-only model, None if no image was read)."""
    predict = TiledPredictor.from_config(cfg)
    ids = category_ids(cfg.DATASETS.TRAIN[0])
    all_results, nuclei, skipped, with_masks = [], 0, [], None
    for image_id, path in enumerate(tqdm(images, desc="predicting", unit="image"), start=1):
        try:
            image = np.ascontiguousarray(read_rgb8(path, intensity)[:, :, ::-1])  # BGR
        except UserInputError as e:
            tqdm.write(f"skipped {path}: {e}")
            skipped.append((path, str(e)))
            continue
        instances = predict(image)["instances"]
        with_masks = instances.has("pred_masks")
        results = coco_results(instances, image_id, path, ids)
        try:
            nuclei += save_image_outputs(
                path, image, results, cfg.TEST.NUCLEI.SCORE_THRESHOLD, output_dir, with_masks
            )
        except ValueError as e:
            tqdm.write(f"skipped {path}: {e}")
            skipped.append((path, str(e)))
            continue
        all_results += results
    write_json(all_results, os.path.join(output_dir, RESULTS_FILE))
    return all_results, nuclei, skipped, with_masks


def main(argv):
    args = parse_args(argv)
    cli.check_weights_file(args.weights)
    cfg = build_cfg(args.config_file, [*args.opts, "MODEL.WEIGHTS", args.weights])
    images = list_images(args.input)
    check_writable(args.output, "--output")
    check_model(cfg)  # the weights load safely and fit the config
    os.makedirs(args.output, exist_ok=True)
    results, nuclei, skipped, with_masks = predict_images(cfg, images, args.output, args.intensity)
    drawn, files = "overlays and label maps", "<name>_overlay.png, <name>_labels.png"
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
