"""Running a trained model as tools/predict.py does, also for the evaluation during training.

:class:`TiledPredictor` is DefaultPredictor for an image that fits one tile (TEST.TILE.SIZE) and
overlap-tile inference for a larger one; :class:`PredictorModel` gives it the form detectron2's
``inference_on_dataset`` calls, so the metrics of a training run measure what users get.
"""
import os

import numpy as np
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Instances
from torch import nn

from ..data.images import read_rgb8
from .cropped_masks import CroppedMasks
from .tiling import TiledPredictor


def read_bgr(dataset_dict):
    """A test-loader mapper: the dataset dict with its image file read as tools/predict.py reads
    it, in BGR order (``"bgr"``), the input :class:`PredictorModel` takes."""
    bgr = read_rgb8(dataset_dict["file_name"])[:, :, ::-1]
    return {**dataset_dict, "bgr": np.ascontiguousarray(bgr)}


class PredictorModel(nn.Module):
    """``model`` as tools/predict.py runs it, in the form detectron2's ``inference_on_dataset``
    calls: whole images, or overlap-tile inference for images larger than ``TEST.TILE.SIZE``
    (:class:`TiledPredictor`, which gives exactly whole-image inference for an image that fits
    one tile). Inputs carry the decoded image (:func:`read_bgr`); outputs are
    ``{"instances"}`` in image coordinates, on the CPU."""

    def __init__(self, cfg, model):
        super().__init__()
        self.model = model
        self.predictor = TiledPredictor(cfg, model)

    def forward(self, batched_inputs):
        return [self.predictor(inputs["bgr"]) for inputs in batched_inputs]


def coco_results(instances, image_id, path, category_ids):
    """COCO results (RLE masks) of one image's predicted Instances, each carrying the image's
    file name; ``category_ids[k]`` is the COCO id of class index k (``data.datasets.category_ids``).

    They are detectron2's ``instances_to_coco_json``; masks held as :class:`CroppedMasks` are
    encoded from their crops (:meth:`CroppedMasks.rle`, the same RLEs), not through a full-image
    array per instance."""
    masks = instances.pred_masks if instances.has("pred_masks") else None
    if isinstance(masks, CroppedMasks):
        fields = {name: value for name, value in instances.get_fields().items()
                  if name != "pred_masks"}
        results = instances_to_coco_json(Instances(instances.image_size, **fields), image_id)
        for index, result in enumerate(results):
            rle = masks.rle(index)
            rle["counts"] = rle["counts"].decode("utf-8")
            result["segmentation"] = rle
    else:
        results = instances_to_coco_json(instances, image_id)
    for result in results:
        result["category_id"] = category_ids[result["category_id"]]
        result["file_name"] = os.path.basename(path)
    return results
