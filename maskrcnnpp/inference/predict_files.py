"""Predicting image files into what tools/predict.py writes: per image an overlay and a label map,
and the COCO results of every image."""
import os

import cv2
import numpy as np
from detectron2.structures import BoxMode
from detectron2.utils.visualizer import Visualizer
from tqdm import tqdm

from ..data.datasets import category_ids
from ..data.images import read_rgb8
from ..errors import UserInputError
from ..evaluation import instances_to_labelmap
from ..evaluation.coco_files import LazyRLEMasks
from ..io_utils import atomic_path, write_json
from .predict import coco_results
from .tiling import TiledPredictor

RESULTS_FILE = "coco_instances_results.json"


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
