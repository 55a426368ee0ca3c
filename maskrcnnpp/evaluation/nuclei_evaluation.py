"""Nuclei evaluation of COCO mask predictions: one function for training and for tools/evaluate.py.

:func:`evaluate_coco_predictions` scores COCO results (RLE masks with scores) against COCO ground
truth: mask AP with a raised maxDets, and the instance-map metrics of :mod:`.metrics`, overall
and per image type. :class:`NucleiEvaluator` feeds it from a model during training, so both
report the same numbers; for a model that predicts boxes only (RetinaNet) it reports box AP and
says that the mask metrics do not apply.
"""

import contextlib
import io
import itertools
import json
import logging
import math
import os
from collections.abc import Sequence
from typing import NamedTuple

import pycocotools.mask as mask_util
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import COCOeval_opt, COCOevalMaxDets
from detectron2.utils import comm
from pycocotools.coco import COCO
from tabulate import tabulate
from tqdm import tqdm

from ..data.datasets import category_ids
from ..data.image_types import IMAGE_TYPES, UNKNOWN
from ..errors import UserInputError
from ..io_utils import write_csv, write_json
from .metrics import evaluate_image, instances_to_labelmap, summarize_images

logger = logging.getLogger(__name__)

OVERLAP_RULE = "where predicted masks overlap, each pixel goes to the higher-scoring instance"
BOX_ONLY = ("the model predicts boxes only, so the mask metrics (mask AP, IoU, Dice, DSB score, "
            "AJI, PQ) do not apply")
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
RESULT_KEYS = ("image_id", "category_id", "segmentation", "score")


def _ap_rows(kind):
    """SUMMARY_TABLE rows of the COCO AP of ``kind`` ("mask" or "box")."""
    return tuple((f"{kind}_{name}", ".2f", f"COCO {kind} {meaning}") for name, meaning in COCO_AP)


# The summary as a table: (key, how to print the value, what it means). Only the keys a summary
# has are shown: tools/evaluate.py has no box AP, a box-only model no mask metrics.
SUMMARY_TABLE = _ap_rows("mask") + _ap_rows("box") + (
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


def pair_with_ground_truth(coco_gt, predictions):
    """The predictions with the ground truth's image ids, paired by file name where they carry
    one (tools/predict.py numbers images in its own order, so its ids need not be the ground
    truth's), and by image id where none does. A predicted file the ground truth lacks, or a
    file name that two ground-truth images share, is an error: nothing is paired by guess."""
    named = [isinstance(p, dict) and "file_name" in p for p in predictions]
    if not any(named):
        return predictions
    if not all(named):
        raise UserInputError(
            f"{named.count(False)} of {len(predictions)} predictions carry no file_name while "
            "the others do, so they cannot all be paired with ground-truth images by file; "
            "give every prediction its image's file_name (tools/predict.py does)."
        )
    ids = {}
    for image in coco_gt.dataset["images"]:
        name = os.path.basename(str(image.get("file_name", "")))
        if name in ids:
            raise UserInputError(
                f"Two ground-truth images are named {name!r}, so predictions cannot be paired "
                "with them by file name."
            )
        ids[name] = image["id"]
    unknown = sorted({str(p["file_name"]) for p in predictions
                      if os.path.basename(str(p["file_name"])) not in ids})
    if unknown:
        raise UserInputError(
            f"{len(unknown)} predicted image(s) are not in the ground truth, e.g. {unknown[:3]}. "
            "Evaluate against the ground truth of the predicted images (file names must match)."
        )
    return [{**p, "image_id": ids[os.path.basename(str(p["file_name"]))]} for p in predictions]


def check_coco_predictions(coco_gt, predictions):
    """Clean copies of COCO results (RESULT_KEYS only, RLE compressed), checked against ``coco_gt``.

    Boxes are dropped so that COCO's area ranges use the mask area, as detectron2 does for segm.
    """
    cleaned, unknown_image_ids = [], set()
    for index, prediction in enumerate(predictions):
        is_dict = isinstance(prediction, dict)
        missing = [key for key in RESULT_KEYS if not is_dict or key not in prediction]
        if missing == ["segmentation"] and "bbox" in prediction:
            raise UserInputError(
                f"Prediction {index} has a box but no mask: it comes from a model that predicts "
                "boxes only (such as RetinaNet), and these metrics score masks. Such a model's box "
                "AP comes from tools/train_net.py --eval-only."
            )
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


def load_predictions(coco_gt, predictions):
    """The checked COCO results as a pycocotools COCO object (RLE areas and boxes computed once)."""
    with contextlib.redirect_stdout(io.StringIO()):
        if predictions:
            return coco_gt.loadRes(predictions)
        coco_dt = COCO()  # loadRes rejects an empty list; no predictions still means AP 0
        coco_dt.dataset = {**coco_gt.dataset, "annotations": []}
        coco_dt.createIndex()
    return coco_dt


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


class NucleiEvaluation(NamedTuple):
    """What :func:`evaluate_coco_predictions` measured."""

    summary: dict  # SUMMARY_TABLE keys, score_threshold, max_dets; by_type where types are known
    rows: list  # one dict per image: ids, file name, size, type and evaluate_image's values
    coco_eval: object  # the COCOeval of the masks on all images, for detectron2's "segm" results


def evaluate_coco_predictions(coco_gt, predictions, score_threshold, max_dets, image_ids=None):
    """Every nuclei metric of COCO ``predictions`` against ``coco_gt``, overall and per image type.

    Args:
        coco_gt (COCO): the ground truth; an image's ``image_type`` (see
            :mod:`maskrcnnpp.data.image_types`) groups the per-type results.
        predictions (list[dict]): COCO results with an RLE ``segmentation`` and a ``score``.
        score_threshold (float): predictions scoring at least this make the instance maps.
        max_dets (int): COCO maxDets for mask AP (at least COCO's 100).
        image_ids (list or None): the images to evaluate; all images of ``coco_gt`` by default.
            An image without predictions counts as predicting nothing.

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
                **evaluate_image(true_labels, pred_labels),
            }
        )
    coco_dt = load_predictions(coco_gt, predictions)
    coco_eval = coco_segm_eval(coco_gt, coco_dt, max_dets, image_ids)
    summary = {
        **mask_ap(coco_eval),
        **summarize_images(rows),
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
                **summarize_images(of_kind),
            }
    return NucleiEvaluation(summary, rows, coco_eval)


# The per-type table: the metrics a reader compares across image types.
TYPE_TABLE_KEYS = ("mask_AP", "mask_AP50", "iou", "dice", "dsb_score", "aji", "pq", "num_images",
                   "num_true", "num_pred")


def format_summary(summary):
    """The summary as readable tables, headed by the settings that shape the numbers: every
    metric with its meaning, then the main ones per image type."""
    table = [
        (key, format(summary[key], value_format), meaning)
        for key, value_format, meaning in SUMMARY_TABLE
        if key in summary
    ]
    if "mask_AP" in summary:
        settings = (f"Instance maps keep predictions with score >= {summary['score_threshold']:g}; "
                    f"{OVERLAP_RULE}. Mask AP ranks")
    else:
        settings = f"Here {BOX_ONLY}. Box AP ranks"
    text = (
        f"Nuclei evaluation. {settings} all predictions, up to maxDets={summary['max_dets']} per "
        "image.\n"
        + tabulate(
            table, headers=("metric", "value", "meaning"), tablefmt="pipe", disable_numparse=True
        )
    )
    by_type = summary.get("by_type")
    if by_type:
        formats = {key: value_format for key, value_format, _ in SUMMARY_TABLE}
        rows = [[key] + [format(by_type[kind][key], formats[key]) for kind in by_type]
                for key in TYPE_TABLE_KEYS]
        text += "\n\nPer image type:\n" + tabulate(
            rows, headers=["metric", *by_type], tablefmt="pipe", disable_numparse=True
        )
    return text


def _without_nan(value):
    """``value`` with every NaN float, at any depth, replaced by None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def save_evaluation(summary, rows, json_path, csv_path):
    """Write the summary as JSON (NaN as null, plus the overlap rule, or for a box-only model why
    the mask metrics are absent) and the rows, if any, as CSV."""
    note = ({"overlap_rule": OVERLAP_RULE} if "mask_AP" in summary
            else {"mask_metrics": f"not applicable: {BOX_ONLY}"})
    write_json({**_without_nan(summary), **note}, json_path, indent=2)
    if rows:
        write_csv(rows, csv_path)


class NucleiEvaluator(COCOEvaluator):
    """detectron2's COCOEvaluator that also scores the masks for nuclei, in one pass.

    COCOEvaluator gathers the predictions of all processes, encodes every mask once as COCO RLE,
    writes coco_instances_results.json and computes box AP. The masks are then scored by
    :func:`evaluate_coco_predictions`, the function behind tools/evaluate.py, with one COCOeval
    whose maxDets is ``max_dets`` (COCO's 100 would truncate crowded images): its AP is reported
    both as detectron2's usual "segm" results and in the nuclei summary, beside box AP, foreground
    IoU/Dice, DSB score, AJI and PQ. Results: ``{"bbox", "segm", "nuclei"}`` and
    ``"nuclei/<image type>"`` per type; with ``output_dir``, nuclei_metrics.json and
    nuclei_per_image.csv are written there.

    A model that predicts boxes only (RetinaNet: its Instances have no ``pred_masks``, whatever
    its config says) gets ``{"bbox", "nuclei"}``, the nuclei summary holding box AP alone, and
    nuclei_metrics.json says why the mask metrics are absent.
    """

    @configurable
    def __init__(
        self, dataset_name, output_dir=None, *, score_threshold, max_dets, distributed=True
    ):
        """
        Args:
            dataset_name (str): a registered dataset whose metadata has ``json_file`` (COCO).
            output_dir (str or None): where to write the results and metrics files.
            score_threshold (float): predictions scoring at least this make the instance maps.
            max_dets (int): COCO maxDets for box and mask AP.
            distributed (bool): gather the predictions of all processes before evaluating.
        """
        if MetadataCatalog.get(dataset_name).get("json_file") is None:
            raise UserInputError(
                f"NucleiEvaluator needs dataset '{dataset_name}' in COCO format, but its metadata "
                "has no json_file. Register it with maskrcnnpp.data.register_nuclei_coco."
            )
        super().__init__(dataset_name, tasks=("bbox",), distributed=distributed,
                         output_dir=output_dir, max_dets_per_image=max_dets)
        if not self._metadata.get("thing_dataset_id_to_contiguous_id"):
            # set by load_coco_json when the dataset is loaded; the same mapping if it is not
            self._metadata.thing_dataset_id_to_contiguous_id = {
                category_id: index for index, category_id in enumerate(category_ids(dataset_name))
            }
        self._score_threshold = score_threshold
        self._max_dets = max_dets

    @classmethod
    def from_config(cls, cfg, dataset_name, output_dir=None):
        return {
            "dataset_name": dataset_name,
            "output_dir": output_dir,
            "score_threshold": cfg.TEST.NUCLEI.SCORE_THRESHOLD,
            "max_dets": cfg.TEST.NUCLEI.MAX_DETS,
        }

    def reset(self):
        super().reset()
        self._predicts_masks = False

    def process(self, inputs, outputs):
        super().process(inputs, outputs)
        self._predicts_masks |= any(output["instances"].has("pred_masks")
                                    for output in outputs if "instances" in output)

    def evaluate(self, img_ids=None):
        if self._distributed:  # every process takes part, as in COCOEvaluator.evaluate
            self._predicts_masks = any(comm.all_gather(self._predicts_masks))
        return super().evaluate(img_ids)

    def _eval_predictions(self, predictions, img_ids=None):
        super()._eval_predictions(predictions, img_ids)  # maps category ids; writes; box AP
        img_ids = img_ids or [prediction["image_id"] for prediction in predictions]
        box_ap = {f"box_{name}": self._results["bbox"][name] for name in COCO_AP_NAMES}
        if not self._predicts_masks:
            summary = {**box_ap, "num_images": len(set(img_ids)), "max_dets": self._max_dets}
            rows = []
        else:
            evaluation = evaluate_coco_predictions(
                self._coco_api,
                list(itertools.chain(*(prediction["instances"] for prediction in predictions))),
                self._score_threshold,
                self._max_dets,
                img_ids,
            )
            self._results["segm"] = self._derive_coco_results(
                evaluation.coco_eval, "segm", class_names=self._metadata.get("thing_classes")
            )
            summary, rows = {**box_ap, **evaluation.summary}, evaluation.rows
        by_type = summary.get("by_type", {})
        self._results["nuclei"] = {key: value for key, value in summary.items() if key != "by_type"}
        for kind, metrics in by_type.items():
            self._results[f"nuclei/{kind}"] = metrics
        self._logger.info("\n" + format_summary(summary))
        if self._output_dir:
            save_evaluation(
                summary,
                rows,
                os.path.join(self._output_dir, "nuclei_metrics.json"),
                os.path.join(self._output_dir, "nuclei_per_image.csv"),
            )
