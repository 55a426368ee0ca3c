"""Scoring of COCO mask predictions: mask AP and the instance-map metrics, overall and per type.

:func:`evaluate_coco_predictions` is the one function behind training's evaluator and
tools/evaluate.py, so both report the same numbers.
"""

import contextlib
import io
import logging
import math
from typing import NamedTuple

import pycocotools.mask as mask_util
from detectron2.evaluation.coco_evaluation import COCOeval_opt, COCOevalMaxDets
from tqdm import tqdm

from ..data.image_types import IMAGE_TYPES, UNKNOWN
from ..errors import UserInputError
from .coco_files import (
    LazyRLEMasks,
    check_coco_predictions,
    load_predictions,
    pair_with_ground_truth,
)
from .metrics import (
    MATCHING_IOU_THRESHOLDS,
    check_matching_thresholds,
    evaluate_image,
    instances_to_labelmap,
    summarize_images,
)

logger = logging.getLogger(__name__)

# The first six COCOeval stats: (name, what it means after "COCO mask " or "COCO box ").
COCO_AP = (
    ("AP", "AP, IoU 0.50:0.95 (0-100)"),
    ("AP50", "AP at IoU 0.50"),
    ("AP75", "AP at IoU 0.75"),
    ("APs", "AP, area < 32^2 px"),
    ("APm", "AP, 32^2 to 96^2 px"),
    ("APl", "AP, area > 96^2 px"),
)
COCO_AP_NAMES = tuple(name for name, _ in COCO_AP)


class _FastCOCOevalMaxDets(COCOevalMaxDets, COCOeval_opt):
    """detectron2's C++ evaluate/accumulate with the summarize() that honors a raised maxDets."""


def coco_segm_eval(coco_gt, coco_dt, max_dets, image_ids):
    """COCOeval of the masks on ``image_ids``, evaluated, accumulated and summarized, keeping up
    to ``max_dets`` masks per image. AP ranks all predictions by score; no threshold applies."""
    with contextlib.redirect_stdout(io.StringIO()) as cocoeval_log:
        coco_eval = _FastCOCOevalMaxDets(coco_gt, coco_dt, "segm")
        coco_eval.params.maxDets = [1, 10, max_dets]
        coco_eval.params.imgIds = image_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    logger.info("COCOeval (segm, maxDets=%d, %d images):\n%s", max_dets, len(image_ids),
                cocoeval_log.getvalue())
    return coco_eval


def mask_ap(coco_eval):
    """mask_AP, mask_AP50, ..., mask_APl (0-100) of a summarized COCOeval; NaN where COCO cannot
    compute a value (no true nucleus in that size range)."""
    return {
        f"mask_{name}": float(stat * 100) if stat >= 0 else float("nan")
        for name, stat in zip(COCO_AP_NAMES, coco_eval.stats)
    }


# A prediction with at least this share of its area in crowd regions is ignored, as COCOeval
# ignores a detection whose crowd IoU (intersection over the detection's area) reaches IoU 0.5.
CROWD_SHARE = 0.5


def _instance_maps(coco_gt, image, predictions, score_threshold):
    """(true, predicted) label maps of one image. Crowd regions are not nuclei to find, and the
    predictions lying in them (``CROWD_SHARE``) are neither right nor wrong: both leave them out."""
    shape = (image["height"], image["width"])
    annotations = coco_gt.imgToAnns[image["id"]]
    crowds = [coco_gt.annToRLE(a) for a in annotations if a.get("iscrowd", 0)]
    if crowds and predictions:
        shares = mask_util.iou([p["segmentation"] for p in predictions], crowds, [1] * len(crowds))
        predictions = [p for p, share in zip(predictions, shares.max(axis=1)) if share < CROWD_SHARE]
    true_labels = instances_to_labelmap(
        LazyRLEMasks([coco_gt.annToRLE(a) for a in annotations if not a.get("iscrowd", 0)]), shape
    )
    pred_labels = instances_to_labelmap(
        LazyRLEMasks([p["segmentation"] for p in predictions]),
        shape,
        scores=[p["score"] for p in predictions],
        score_threshold=score_threshold,
    )
    return true_labels, pred_labels


class NucleiEvaluation(NamedTuple):
    """What :func:`evaluate_coco_predictions` measured."""

    summary: dict  # SUMMARY_TABLE and matching keys, score_threshold, max_dets; by_type if typed
    rows: list  # one dict per image: ids, file name, size, type and evaluate_image's values
    coco_eval: object  # the COCOeval of the masks on all images, for detectron2's "segm" results


def evaluate_coco_predictions(coco_gt, predictions, score_threshold, max_dets, image_ids=None,
                              matching_thresholds=MATCHING_IOU_THRESHOLDS):
    """Every nuclei metric of COCO ``predictions`` against ``coco_gt``, overall and per image type.

    Args:
        coco_gt (COCO): the ground truth; an image's ``image_type`` (see
            :mod:`maskrcnnpp.data.image_types`) groups the per-type results.
        predictions (list[dict]): COCO results with an RLE ``segmentation`` and a ``score``.
        score_threshold (float): predictions scoring at least this make the instance maps.
        max_dets (int): COCO maxDets for mask AP (at least COCO's 100).
        image_ids (list or None): the images to evaluate; all images of ``coco_gt`` by default.
            An image without predictions counts as predicting nothing.
        matching_thresholds (sequence of float): the IoU thresholds, each in (0, 1), of
            StarDist's matching table (``f1@0.5``, ...; see :func:`.metrics.summarize_matching`).

    Returns:
        NucleiEvaluation. ``summary["by_type"]`` maps each image type present (in
        IMAGE_TYPES order) to the same metrics on its images alone; it is absent when no image
        of the ground truth has a type.
    """
    if not math.isfinite(score_threshold):
        raise UserInputError(f"The score threshold must be a finite number, got {score_threshold}.")
    if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 100:
        raise UserInputError(
            f"maxDets must be an integer of at least 100 (COCO's default), got {max_dets!r}."
        )
    matching_thresholds = check_matching_thresholds(matching_thresholds)
    predictions = check_coco_predictions(coco_gt, pair_with_ground_truth(coco_gt, predictions))
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
                "image_type": image.get("image_type", UNKNOWN),
                "height": image["height"],
                "width": image["width"],
                **evaluate_image(true_labels, pred_labels, matching_thresholds),
            }
        )
    coco_dt = load_predictions(coco_gt, predictions)
    coco_eval = coco_segm_eval(coco_gt, coco_dt, max_dets, image_ids)
    summary = {
        **mask_ap(coco_eval),
        **summarize_images(rows, matching_thresholds),
        "score_threshold": float(score_threshold),
        "max_dets": max_dets,
    }
    types = [kind for kind in (*IMAGE_TYPES, UNKNOWN) if any(r["image_type"] == kind for r in rows)]
    if types != [UNKNOWN]:
        summary["by_type"] = {}
        for kind in types:
            of_kind = [row for row in rows if row["image_type"] == kind]
            ids = [row["image_id"] for row in of_kind]
            summary["by_type"][kind] = {
                **mask_ap(coco_segm_eval(coco_gt, coco_dt, max_dets, ids)),
                **summarize_images(of_kind, matching_thresholds),
            }
    return NucleiEvaluation(summary, rows, coco_eval)
