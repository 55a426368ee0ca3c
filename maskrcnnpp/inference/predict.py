"""Predict nuclei in image files: overlays, 16-bit label maps and one COCO results file.

The logic behind tools/predict.py, and the same model call for the evaluation during training:
:class:`TiledPredictor`, which is DefaultPredictor for an image that fits one tile
(TEST.TILE.SIZE) and overlap-tile inference for a larger one.
"""

import os

import cv2
import numpy as np
from torch import nn
from detectron2.data.detection_utils import read_image
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils.visualizer import Visualizer
from tqdm import tqdm

from ..errors import UserInputError
from ..evaluation import instances_to_labelmap
from ..evaluation.nuclei_evaluation import LazyRLEMasks
from ..io_utils import atomic_path, write_json
from .tiling import TiledPredictor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
RESULTS_FILE = "coco_instances_results.json"


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


def read_bgr(dataset_dict):
    """A test-loader mapper: the dataset dict with its image file decoded as BGR (``"bgr"``),
    the input :class:`PredictorModel` takes."""
    return {**dataset_dict, "bgr": read_image(dataset_dict["file_name"], format="BGR")}


class PredictorModel(nn.Module):
    """``model`` as tools/predict.py runs it, in the form detectron2's ``inference_on_dataset``
    calls: whole images, or overlap-tile inference for images larger than ``TEST.TILE.SIZE``
    (:class:`TiledPredictor`, which gives exactly whole-image inference for an image that fits
    one tile). Inputs carry the decoded image (:func:`read_bgr`); outputs are
    ``{"instances"}`` in image coordinates, on the CPU. Evaluating through it measures what
    users get from predict.py."""

    def __init__(self, cfg, model):
        super().__init__()
        self.model = model
        self.predictor = TiledPredictor(cfg, model=model)

    def forward(self, batched_inputs):
        return [self.predictor(inputs["bgr"]) for inputs in batched_inputs]


def write_png(path, image):
    """Write an array as PNG atomically: HxWx3 RGB, or HxW (16-bit for label maps)."""
    if image.ndim == 3:
        image = np.ascontiguousarray(image[:, :, ::-1])  # OpenCV writes BGR
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(encoded.tobytes())


def save_image_outputs(path, image_bgr, results, score_threshold, output_dir):
    """The overlay and the label map of one image, from its predictions above the threshold."""
    kept = [result for result in results if result["score"] >= score_threshold]
    rles = [result["segmentation"] for result in kept]
    labels = instances_to_labelmap(
        LazyRLEMasks(rles), image_bgr.shape[:2], scores=[r["score"] for r in kept]
    )
    if labels.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"{len(kept)} nuclei do not fit a 16-bit label map")
    stem = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0])
    write_png(stem + "_labels.png", labels.astype(np.uint16))
    overlay = Visualizer(image_bgr[:, :, ::-1]).overlay_instances(masks=rles)
    write_png(stem + "_overlay.png", overlay.get_image())
    return len(kept)


def predict_images(cfg, images, output_dir):
    """Predict every image; returns (results of all images, nuclei kept, skipped (path, why))."""
    predict = TiledPredictor(cfg)
    all_results, nuclei, skipped = [], 0, []
    for image_id, path in enumerate(tqdm(images, desc="predicting", unit="image"), start=1):
        try:
            image = read_image(path, format="BGR")
        except (OSError, ValueError) as e:
            tqdm.write(f"skipped {path}: cannot read it as an image ({e})")
            skipped.append((path, str(e)))
            continue
        results = instances_to_coco_json(predict(image)["instances"], image_id)
        for result in results:
            result["category_id"] += 1  # contiguous class -> COCO id (nucleus = 1)
            result["file_name"] = os.path.basename(path)
        try:
            nuclei += save_image_outputs(
                path, image, results, cfg.TEST.NUCLEI.SCORE_THRESHOLD, output_dir
            )
        except ValueError as e:
            tqdm.write(f"skipped {path}: {e}")
            skipped.append((path, str(e)))
            continue
        all_results += results
    write_json(all_results, os.path.join(output_dir, RESULTS_FILE))
    return all_results, nuclei, skipped
