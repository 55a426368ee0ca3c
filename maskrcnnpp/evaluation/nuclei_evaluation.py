"""Nuclei evaluation of COCO mask predictions: one function for training and for tools/evaluate.py.

:func:`evaluate_coco_predictions` scores COCO results (RLE masks with scores) against COCO ground
truth: mask AP with a raised maxDets, and the instance-map metrics of :mod:`.metrics`.
:class:`NucleiEvaluator` feeds it from a model during training, so both report the same numbers.
"""

import contextlib
import io
import itertools
import json
import logging
import math
import os
from collections.abc import Sequence

import pycocotools.mask as mask_util
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.evaluation.coco_evaluation import (
    COCOeval_opt,
    COCOevalMaxDets,
    instances_to_coco_json,
)
from detectron2.utils import comm
from pycocotools.coco import COCO
from tabulate import tabulate
from tqdm import tqdm

from ..errors import UserInputError
from ..io_utils import write_csv, write_json
from .metrics import evaluate_image, instances_to_labelmap, summarize_images

logger = logging.getLogger(__name__)

OVERLAP_RULE = "where predicted masks overlap, each pixel goes to the higher-scoring instance"
COCO_AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # the first six COCOeval stats
RESULT_KEYS = ("image_id", "category_id", "segmentation", "score")

# The summary as a table: (key, how to print the value, what it means).
SUMMARY_TABLE = (
    ("mask_AP", ".2f", "COCO mask AP, IoU 0.50:0.95 (0-100)"),
    ("mask_AP50", ".2f", "COCO mask AP at IoU 0.50"),
    ("mask_AP75", ".2f", "COCO mask AP at IoU 0.75"),
    ("mask_APs", ".2f", "COCO mask AP, area < 32^2 px"),
    ("mask_APm", ".2f", "COCO mask AP, 32^2 to 96^2 px"),
    ("mask_APl", ".2f", "COCO mask AP, area > 96^2 px"),
    ("iou", ".4f", "foreground IoU, pixels pooled over images"),
    ("dice", ".4f", "foreground Dice, pixels pooled over images"),
    ("iou_macro", ".4f", "foreground IoU, mean over images"),
    ("dice_macro", ".4f", "foreground Dice, mean over images"),
    ("dsb_score", ".4f", "DSB2018: mean over IoU 0.50:0.95 of TP/(TP+FP+FN), mean over images"),
    ("aji", ".4f", "Aggregated Jaccard Index, mean over images"),
    ("pq", ".4f", "panoptic quality SQ x DQ, matches IoU > 0.5 pooled over images"),
    ("sq", ".4f", "segmentation quality: mean IoU of the matches"),
    ("dq", ".4f", "detection quality: TP / (TP + FP/2 + FN/2)"),
    ("pq_macro", ".4f", "panoptic quality, mean over images"),
    ("num_images", "d", "images evaluated"),
    ("num_true", "d", "true nuclei"),
    ("num_pred", "d", "predicted nuclei in the instance maps"),
    ("true_per_image", ".1f", "true nuclei per image"),
    ("pred_per_image", ".1f", "predicted nuclei per image"),
)


class _FastCOCOevalMaxDets(COCOevalMaxDets, COCOeval_opt):
    """detectron2's C++ evaluate/accumulate with the summarize() that honors a raised maxDets."""


class LazyRLEMasks(Sequence):
    """COCO RLEs decoded one at a time, so a crowded image never holds all its masks at once."""

    def __init__(self, rles):
        self._rles = rles

    def __len__(self):
        return len(self._rles)

    def __getitem__(self, index):
        return mask_util.decode(self._rles[index]).view(bool)


def _read_json(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserInputError(f"The {what} file {path} does not exist.") from None
    except IsADirectoryError:
        raise UserInputError(f"The {what} file {path} is a folder; pass the JSON file.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserInputError(f"The {what} file {path} is not valid JSON ({e}).") from None


def load_coco_gt(path):
    """A pycocotools COCO object from a ground-truth file, with one clear error for bad input."""
    dataset = _read_json(path, "ground-truth")
    if not isinstance(dataset, dict) or not all(
        isinstance(dataset.get(key), list) for key in ("images", "annotations", "categories")
    ):
        raise UserInputError(
            f"The ground-truth file {path} is not a COCO instance file: it needs 'images', "
            "'annotations' and 'categories' lists."
        )
    for image in dataset["images"]:
        if not all(key in image for key in ("id", "height", "width")):
            raise UserInputError(
                f"The ground-truth file {path} has an image without 'id', 'height' and 'width': "
                f"{str(image)[:200]}"
            )
    coco_gt = COCO()
    coco_gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
    return coco_gt


def load_coco_results(path):
    """The list of predictions in a COCO results file."""
    predictions = _read_json(path, "predictions")
    if not isinstance(predictions, list):
        raise UserInputError(
            f"The predictions file {path} is not a COCO results file: it must be a JSON list of "
            "{image_id, category_id, segmentation, score} objects."
        )
    return predictions


def check_coco_predictions(coco_gt, predictions):
    """Clean copies of COCO results (RESULT_KEYS only, RLE compressed), checked against ``coco_gt``.

    Boxes are dropped so that COCO's area ranges use the mask area, as detectron2 does for segm.
    """
    cleaned, unknown_image_ids = [], set()
    for index, prediction in enumerate(predictions):
        is_dict = isinstance(prediction, dict)
        missing = [key for key in RESULT_KEYS if not is_dict or key not in prediction]
        if missing:
            raise UserInputError(
                f"Prediction {index} lacks {missing}: each COCO result needs image_id, "
                "category_id, segmentation (RLE) and score."
            )
        image = coco_gt.imgs.get(prediction["image_id"])
        if image is None:
            unknown_image_ids.add(prediction["image_id"])
            continue
        where = f"Prediction {index} (image_id {prediction['image_id']})"
        if prediction["category_id"] not in coco_gt.cats:
            raise UserInputError(
                f"{where} has category_id {prediction['category_id']!r}, which is not in the "
                f"ground truth's categories {sorted(coco_gt.cats)}."
            )
        rle = prediction["segmentation"]
        if not (isinstance(rle, dict) and "size" in rle and "counts" in rle):
            raise UserInputError(
                f"{where}: segmentation must be an RLE dict with 'size' and 'counts' "
                "(polygons are not accepted as predictions)."
            )
        height, width = image["height"], image["width"]
        if list(rle["size"]) != [height, width]:
            raise UserInputError(
                f"{where} has a mask of size {rle['size'][0]}x{rle['size'][1]} but the image is "
                f"{height}x{width} (HxW) in the ground truth; masks must be at the original "
                "image resolution."
            )
        if isinstance(rle["counts"], list):
            rle = mask_util.frPyObjects(rle, height, width)
        score = prediction["score"]
        if (
            isinstance(score, bool)
            or not isinstance(score, (int, float))
            or not math.isfinite(score)
        ):
            raise UserInputError(f"{where} has score {score!r}; scores must be finite numbers.")
        cleaned.append(
            {
                "image_id": prediction["image_id"],
                "category_id": prediction["category_id"],
                "segmentation": rle,
                "score": float(score),
            }
        )
    if unknown_image_ids:
        shown = sorted(unknown_image_ids, key=str)[:10]
        raise UserInputError(
            f"{len(unknown_image_ids)} image id(s) of the predictions are absent from the ground "
            f"truth, e.g. {shown}. Evaluate against the ground-truth file of the predicted images."
        )
    return cleaned


def coco_mask_ap(coco_gt, predictions, max_dets, image_ids):
    """COCO mask AP, AP50, AP75, APs, APm, APl (0-100) keeping up to ``max_dets`` masks per image.

    AP ranks all predictions by score; no score threshold applies. NaN where COCO cannot compute
    a value (no true nucleus in that size range).
    """
    with contextlib.redirect_stdout(io.StringIO()) as cocoeval_log:
        if predictions:
            coco_dt = coco_gt.loadRes(predictions)
        else:  # loadRes rejects an empty list; no predictions still means AP 0
            coco_dt = COCO()
            coco_dt.dataset = {**coco_gt.dataset, "annotations": []}
            coco_dt.createIndex()
        coco_eval = _FastCOCOevalMaxDets(coco_gt, coco_dt, "segm")
        coco_eval.params.maxDets = [1, 10, max_dets]
        coco_eval.params.imgIds = image_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    logger.info("COCOeval (segm, maxDets=%d):\n%s", max_dets, cocoeval_log.getvalue())
    return {
        f"mask_{name}": float(stat * 100) if stat >= 0 else float("nan")
        for name, stat in zip(COCO_AP_NAMES, coco_eval.stats)
    }


def _instance_maps(coco_gt, image, predictions, score_threshold):
    """(true, predicted) label maps of one image; crowd regions are not nuclei to find."""
    shape = (image["height"], image["width"])
    annotations = [a for a in coco_gt.imgToAnns[image["id"]] if not a.get("iscrowd", 0)]
    true_labels = instances_to_labelmap(
        LazyRLEMasks([coco_gt.annToRLE(a) for a in annotations]), shape
    )
    pred_labels = instances_to_labelmap(
        LazyRLEMasks([p["segmentation"] for p in predictions]),
        shape,
        scores=[p["score"] for p in predictions],
        score_threshold=score_threshold,
    )
    return true_labels, pred_labels


def evaluate_coco_predictions(coco_gt, predictions, score_threshold, max_dets, image_ids=None):
    """Every nuclei metric of COCO ``predictions`` against ``coco_gt``: (summary, per-image rows).

    Args:
        coco_gt (COCO): the ground truth.
        predictions (list[dict]): COCO results with an RLE ``segmentation`` and a ``score``.
        score_threshold (float): predictions scoring at least this make the instance maps.
        max_dets (int): COCO maxDets for mask AP (at least COCO's 100).
        image_ids (list or None): the images to evaluate; all images of ``coco_gt`` by default.
            An image without predictions counts as predicting nothing.

    Returns:
        (dict, list[dict]): the summary (SUMMARY_TABLE keys, plus ``score_threshold`` and
        ``max_dets``), and one row per image: ids, size and :func:`.metrics.evaluate_image`.
    """
    if not math.isfinite(score_threshold):
        raise UserInputError(f"The score threshold must be a finite number, got {score_threshold}.")
    if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 100:
        raise UserInputError(
            f"maxDets must be an integer of at least 100 (COCO's default), got {max_dets!r}."
        )
    predictions = check_coco_predictions(coco_gt, predictions)
    image_ids = sorted(coco_gt.getImgIds() if image_ids is None else set(image_ids))
    if not image_ids:
        raise UserInputError("The ground truth has no images to evaluate.")
    predictions_by_image = {image_id: [] for image_id in image_ids}
    for prediction in predictions:
        if prediction["image_id"] in predictions_by_image:
            predictions_by_image[prediction["image_id"]].append(prediction)

    rows = []
    for image_id in tqdm(image_ids, desc="Nuclei metrics", unit="image", leave=False):
        image = coco_gt.imgs[image_id]
        true_labels, pred_labels = _instance_maps(
            coco_gt, image, predictions_by_image[image_id], score_threshold
        )
        rows.append(
            {
                "image_id": image_id,
                "file_name": image.get("file_name", ""),
                "height": image["height"],
                "width": image["width"],
                **evaluate_image(true_labels, pred_labels),
            }
        )
    summary = {
        **coco_mask_ap(coco_gt, predictions, max_dets, image_ids),
        **summarize_images(rows),
        "score_threshold": float(score_threshold),
        "max_dets": max_dets,
    }
    return summary, rows


def format_summary(summary):
    """The summary as a readable table, headed by the settings that shape the numbers."""
    table = [
        (key, format(summary[key], value_format), meaning)
        for key, value_format, meaning in SUMMARY_TABLE
    ]
    return (
        f"Nuclei evaluation. Instance maps keep predictions with score >= "
        f"{summary['score_threshold']:g}; {OVERLAP_RULE}. Mask AP ranks all predictions, "
        f"up to maxDets={summary['max_dets']} per image.\n"
        + tabulate(
            table, headers=("metric", "value", "meaning"), tablefmt="pipe", disable_numparse=True
        )
    )


def save_evaluation(summary, rows, json_path, csv_path):
    """Write the summary as JSON (NaN as null, plus the overlap rule) and the rows as CSV."""
    report = {
        key: None if isinstance(value, float) and math.isnan(value) else value
        for key, value in summary.items()
    }
    write_json({**report, "overlap_rule": OVERLAP_RULE}, json_path, indent=2)
    write_csv(rows, csv_path)


class NucleiEvaluator(DatasetEvaluator):
    """Nuclei metrics of a COCO-format dataset during training, beside detectron2's COCOEvaluator.

    process() keeps each image's predictions as COCO RLE results; evaluate() gathers them on the
    main process and scores them with :func:`evaluate_coco_predictions`, the function behind
    tools/evaluate.py, so a training run and the tool agree. It returns ``{"nuclei": summary}``
    and, with ``output_dir``, writes nuclei_metrics.json and nuclei_per_image.csv there.
    """

    @configurable
    def __init__(
        self, dataset_name, output_dir=None, *, score_threshold, max_dets, distributed=True
    ):
        """
        Args:
            dataset_name (str): a registered dataset whose metadata has ``json_file`` (COCO).
            output_dir (str or None): where to write the metrics files.
            score_threshold (float): predictions scoring at least this make the instance maps.
            max_dets (int): COCO maxDets for mask AP.
            distributed (bool): gather the predictions of all processes before evaluating.
        """
        json_file = MetadataCatalog.get(dataset_name).get("json_file")
        if json_file is None:
            raise UserInputError(
                f"NucleiEvaluator needs dataset '{dataset_name}' in COCO format, but its metadata "
                "has no json_file. Register it with maskrcnnpp.data.register_nuclei_coco."
            )
        self._coco_gt = load_coco_gt(json_file)
        # Models predict contiguous class indices; load_coco_json maps sorted category ids to them.
        self._category_ids = sorted(self._coco_gt.getCatIds())
        self._output_dir = output_dir
        self._score_threshold = score_threshold
        self._max_dets = max_dets
        self._distributed = distributed

    @classmethod
    def from_config(cls, cfg, dataset_name, output_dir=None):
        return {
            "dataset_name": dataset_name,
            "output_dir": output_dir,
            "score_threshold": cfg.TEST.NUCLEI.SCORE_THRESHOLD,
            "max_dets": cfg.TEST.NUCLEI.MAX_DETS,
        }

    def reset(self):
        self._image_ids = []
        self._predictions = []

    def process(self, inputs, outputs):
        for input, output in zip(inputs, outputs):
            results = instances_to_coco_json(
                output["instances"].to(torch.device("cpu")), input["image_id"]
            )
            for result in results:
                result["category_id"] = self._category_ids[result["category_id"]]
            self._image_ids.append(input["image_id"])
            self._predictions.extend(results)

    def evaluate(self):
        image_ids, predictions = self._image_ids, self._predictions
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather((image_ids, predictions), dst=0)
            if not comm.is_main_process():
                return {}
            image_ids = list(itertools.chain(*(ids for ids, _ in gathered)))
            predictions = list(itertools.chain(*(results for _, results in gathered)))
        if not image_ids:
            logger.warning("[NucleiEvaluator] Did not receive any image to evaluate.")
            return {}
        summary, rows = evaluate_coco_predictions(
            self._coco_gt, predictions, self._score_threshold, self._max_dets, image_ids
        )
        logger.info("\n" + format_summary(summary))
        if self._output_dir:
            save_evaluation(
                summary,
                rows,
                os.path.join(self._output_dir, "nuclei_metrics.json"),
                os.path.join(self._output_dir, "nuclei_per_image.csv"),
            )
        return {"nuclei": summary}
