"""Predicting image files into what tools/predict.py writes: per image an overlay and a label map,
and the COCO results of every image."""
import os

import cv2
import numpy as np
from detectron2.structures import BoxMode
from PIL import Image
from tqdm import tqdm

from ..data.datasets import category_ids
from ..data.images import read_rgb8
from ..errors import UserInputError
from ..io_utils import atomic_path, write_json
from .cropped_masks import CroppedMasks, labelmap
from .overlay import overlay_bgr
from .predict import coco_results
from .tiling import TiledPredictor, return_freed_memory

RESULTS_FILE = "coco_instances_results.json"
# A label map's file: 16-bit PNG while the nuclei fit (up to 65,535), else a 32-bit TIFF.
LABELS_PNG, LABELS_TIFF = "_labels.png", "_labels.tif"


def write_png(path, image):
    """Write an array as PNG atomically: HxWx3 BGR, or HxW (16-bit for label maps)."""
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(encoded.tobytes())


def write_labels(stem, labels):
    """Write a label map atomically: ``<stem>_labels.png`` (16-bit) for uint16, else
    ``<stem>_labels.tif``, a 32-bit integer TIFF (PNG holds 16 bits at most; PIL writes 32-bit
    integers as signed, which holds any label below 2**31). Returns the path."""
    if labels.dtype == np.uint16:
        write_png(stem + LABELS_PNG, labels)
        return stem + LABELS_PNG
    with atomic_path(stem + LABELS_TIFF) as tmp:
        Image.fromarray(labels.view(np.int32)).save(tmp, format="TIFF",
                                                    compression="tiff_adobe_deflate")
    return stem + LABELS_TIFF


def save_image_outputs(path, image_bgr, results, masks, score_threshold, output_dir):
    """The overlay and the label map of one image, from its predictions above the threshold;
    ``masks``: the predictions' :class:`CroppedMasks`, or None for a box-only model, whose
    overlay draws the boxes and which gets no label map. The label map is uint16 (PNG), or
    uint32 (TIFF) for more than 65,535 nuclei; neither it nor the overlay needs a full-image
    array per nucleus."""
    scores = [result["score"] for result in results]
    stem = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0])
    if masks is None:
        kept = kept_indices(scores, score_threshold)
        boxes = [BoxMode.convert(results[i]["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
                 for i in kept]
        write_png(stem + "_overlay.png", overlay_bgr(image_bgr, boxes=boxes))
        return len(kept)
    labels, kept = kept_labelmap(masks, scores, score_threshold)
    write_labels(stem, labels)
    del labels
    return_freed_memory()  # before the overlay, the other image-sized step
    write_png(stem + "_overlay.png", overlay_bgr(image_bgr, masks=masks[kept]))
    return len(kept)


def kept_indices(scores, score_threshold):
    """The indices of the predictions scoring at least ``score_threshold``."""
    return [index for index, score in enumerate(scores) if score >= score_threshold]


def kept_labelmap(masks, scores, score_threshold):
    """(label map, kept): the label map of the predictions scoring at least
    ``score_threshold`` (``masks``: all predictions' :class:`CroppedMasks`, ``scores``: theirs),
    in which label ``k + 1`` marks prediction ``kept[k]``: what tools/predict.py writes and the
    napari plugin shows."""
    kept = kept_indices(scores, score_threshold)
    return labelmap(masks[kept], scores=[scores[i] for i in kept]), kept


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
        if with_masks:
            instances.pred_masks = CroppedMasks.of(instances.pred_masks)
        results = coco_results(instances, image_id, path, ids)
        masks = instances.pred_masks if with_masks else None
        del instances
        nuclei += save_image_outputs(
            path, image, results, masks, cfg.TEST.NUCLEI.SCORE_THRESHOLD, output_dir
        )
        del image, masks
        all_results += results
    write_json(all_results, os.path.join(output_dir, RESULTS_FILE))
    return all_results, nuclei, skipped, with_masks
