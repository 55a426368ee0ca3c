"""COCO ground-truth and results files: read, checked and paired; bad input gets a clear error."""

import contextlib
import io
import json
import math
import os
from collections.abc import Sequence

import pycocotools.mask as mask_util
from pycocotools.coco import COCO

from ..data.coco_io import check_coco_gt
from ..errors import UserInputError

RESULT_KEYS = ("image_id", "category_id", "segmentation", "score")


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
    """A pycocotools COCO object from a ground-truth file, checked (:func:`check_coco_gt`), with
    the ``area`` of any annotation lacking one computed from its mask."""
    dataset = _read_json(path, "ground-truth")
    check_coco_gt(dataset, path)
    coco_gt = COCO()
    coco_gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
    fill_missing_areas(coco_gt)
    return coco_gt


def fill_missing_areas(coco_gt):
    """Give each annotation lacking ``area`` its mask's area, as COCO's files carry (COCOeval's
    area ranges read it)."""
    for annotation in coco_gt.dataset["annotations"]:
        if "area" not in annotation:
            annotation["area"] = float(mask_util.area(coco_gt.annToRLE(annotation)))


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
        counts = rle["counts"]
        if isinstance(counts, (str, bytes)):
            counts = compressed_counts(counts)
        if counts is None or not all(isinstance(c, int) and c >= 0 for c in counts) \
                or sum(counts) != height * width:
            raise UserInputError(
                f"{where}: its RLE counts are not runs of a {height}x{width} mask (they must be "
                f"whole numbers >= 0 summing to {height * width}); encode masks with "
                "pycocotools.mask.encode."
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


def compressed_counts(counts):
    """The run lengths of a compressed COCO RLE ``counts`` string, as pycocotools' rleFrString
    reads them (which trusts them: runs past the mask's end write past its buffer); None if the
    string is not such an encoding."""
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    runs, value, shift = [], 0, 0
    for char in counts:
        code = ord(char) - 48
        if not 0 <= code < 64:
            return None
        value |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:  # more 5-bit groups follow
            continue
        if code & 0x10:  # negative: sign-extend
            value |= -1 << shift
        if len(runs) > 2:  # stored as the difference to the run two back
            value += runs[-2]
        runs.append(value)
        value, shift = 0, 0
    return runs if shift == 0 else None


def load_predictions(coco_gt, predictions):
    """The checked COCO results as a pycocotools COCO object (RLE areas and boxes computed once)."""
    with contextlib.redirect_stdout(io.StringIO()):
        if predictions:
            return coco_gt.loadRes(predictions)
        coco_dt = COCO()  # loadRes rejects an empty list; no predictions still means AP 0
        coco_dt.dataset = {**coco_gt.dataset, "annotations": []}
        coco_dt.createIndex()
    return coco_dt
