"""Nuclei instance-segmentation metrics on instance label maps (HxW ints, 0 = background).

Every matching metric (DSB score, AJI, PQ, StarDist's matching table) reads the same sparse
contingency table between the true and the predicted instances of an image, counted in one
vectorised pass over the pixels, so an image with hundreds of nuclei costs milliseconds rather
than a loop over instance pairs; DSB score, PQ and the matching table share one one-to-one
matching, :func:`one_to_one_matches`.

Convention: a ratio whose denominator is zero (nothing to find and nothing found) scores 1, as
the DSB2018 score does for an image with neither true nor predicted nuclei; the matching table
follows StarDist instead (see :func:`matching_scores`).
"""

import dataclasses
import math

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..errors import UserInputError

# DSB2018 thresholds 0.50, 0.55, ..., 0.95, rounded so that each equals its decimal literal.
DSB_IOU_THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)
# Panoptic quality matches a true and a predicted instance when their IoU exceeds this.
PQ_IOU_THRESHOLD = 0.5
# StarDist's matching table: precision, recall, F1, accuracy and mean matched IoU at these IoUs.
MATCHING_IOU_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
# The matching table's values at each threshold t, stored under "<name>@<t>" (e.g. "f1@0.5").
MATCHING_SCORES = ("precision", "recall", "f1", "accuracy", "mean_matched_iou")


def instances_to_labelmap(masks, image_shape, scores=None, score_threshold=0.0):
    """Paint instance masks into one label map: 0 is background, ``i + 1`` marks ``masks[i]``.

    Instances are painted from the highest score down and a pixel keeps the first label it gets,
    so where masks overlap the higher-scoring instance wins (on a tie, the earlier one); without
    ``scores`` the given order decides. Instances scoring below ``score_threshold`` are left out.
    ``masks`` is any sequence of HxW boolean arrays; it is indexed one mask at a time, so a lazy
    sequence (e.g. decoding RLEs on access) never holds all masks of a crowded image at once.
    """
    labels = np.zeros(image_shape, dtype=np.int32)
    if scores is None:
        order = range(len(masks))
    else:
        scores = np.asarray(scores, dtype=np.float64)
        order = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= score_threshold]
    for index in order:
        mask = masks[index]
        if mask.shape != labels.shape:
            raise UserInputError(
                f"Mask {index} is {mask.shape[0]}x{mask.shape[1]} but the image is "
                f"{labels.shape[0]}x{labels.shape[1]} (HxW); masks must cover the whole image."
            )
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(mask.any(axis=0))
        # Paint inside the mask's box only: a nucleus covers a tiny part of the image.
        box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        crop = labels[box]
        crop[mask[box] & (crop == 0)] = index + 1
    return labels


@dataclasses.dataclass(frozen=True)
class InstanceOverlaps:
    """The sparse contingency table of two label maps: instance areas and every touching pair.

    Instances are numbered 0..T-1 (true) and 0..P-1 (predicted) in label order; pairs sharing no
    pixel are absent, so the table grows with the touching pairs, not with T x P.
    """

    true_areas: np.ndarray  # (T,) pixels of each true instance
    pred_areas: np.ndarray  # (P,) pixels of each predicted instance
    true_index: np.ndarray  # (K,) true instance of each touching pair
    pred_index: np.ndarray  # (K,) predicted instance of each touching pair
    intersection: np.ndarray  # (K,) pixels shared by the pair

    @property
    def union(self):
        return (
            self.true_areas[self.true_index] + self.pred_areas[self.pred_index] - self.intersection
        )

    @property
    def iou(self):
        return self.intersection / self.union


def _compact_labels(labels):
    """Renumber the labels present as 1..N (0 stays background); return (map, areas)."""
    counts = np.bincount(labels.ravel())
    present = np.flatnonzero(counts[1:]) + 1
    lookup = np.zeros(len(counts), dtype=np.int64)
    lookup[present] = np.arange(1, len(present) + 1)
    return lookup[labels], counts[present]


def instance_overlaps(true_labels, pred_labels):
    """Count the :class:`InstanceOverlaps` of two label maps of the same shape."""
    for name, labels in (("true", true_labels), ("predicted", pred_labels)):
        if not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
            raise UserInputError(
                f"The {name} label map must hold non-negative integers (0 = background), "
                f"got dtype {labels.dtype}."
            )
    if true_labels.shape != pred_labels.shape:
        raise UserInputError(
            f"Label maps differ in shape: true {true_labels.shape}, predicted {pred_labels.shape}."
        )
    true_dense, true_areas = _compact_labels(true_labels)
    pred_dense, pred_areas = _compact_labels(pred_labels)
    both = (true_dense > 0) & (pred_dense > 0)
    stride = len(pred_areas) + 1
    pairs, intersection = np.unique(
        true_dense[both] * stride + pred_dense[both], return_counts=True
    )
    true_index, pred_index = np.divmod(pairs, stride)
    return InstanceOverlaps(true_areas, pred_areas, true_index - 1, pred_index - 1, intersection)


def _ratio(numerator, denominator):
    """numerator / denominator, and 1 when there is nothing to compare (denominator 0)."""
    return float(numerator / denominator) if denominator else 1.0


def foreground_scores(fg_intersection, fg_true, fg_pred):
    """(IoU, Dice) of the foreground from pixel counts, per image or pooled over images."""
    union = fg_true + fg_pred - fg_intersection
    return _ratio(fg_intersection, union), _ratio(2 * fg_intersection, fg_true + fg_pred)


def one_to_one_matches(overlaps, threshold, inclusive=False):
    """IoUs of the pairs that match one-to-one at ``threshold``: the most pairs whose IoU exceeds
    it (or equals it too, with ``inclusive``), each instance in one pair at most.

    Instances within a label map are disjoint, so above IoU 0.5 each instance takes part in at
    most one such pair (two disjoint predictions cannot both cover more than half of one nucleus)
    and the pairs are the matching. Otherwise (a threshold below 0.5, or IoU >= 0.5 where two
    predictions may each cover exactly half a nucleus) the pairs that share an instance are
    resolved by an assignment (scipy's linear_sum_assignment) that keeps as many pairs as possible
    and, among as many, the largest IoU sum, as StarDist's ``matching`` does (its tie-break also
    weighs pairs below the threshold, which may change which pairs match, never how many).
    """
    candidate = overlaps.iou >= threshold if inclusive else overlaps.iou > threshold
    true_index, pred_index = overlaps.true_index[candidate], overlaps.pred_index[candidate]
    iou = overlaps.iou[candidate]
    true_rows, true_index = np.unique(true_index, return_inverse=True)
    pred_cols, pred_index = np.unique(pred_index, return_inverse=True)
    if len(true_rows) == len(pred_cols) == len(iou):  # no instance in two pairs
        return iou
    # A pair is worth 1 plus a tie-break below 1/2 in all: no IoU sum outweighs one more match.
    ious = np.zeros((len(true_rows), len(pred_cols)))
    ious[true_index, pred_index] = iou
    gain = np.where(ious > 0, 1 + ious / (2 * min(ious.shape)), 0)
    rows, cols = linear_sum_assignment(gain, maximize=True)
    return ious[rows, cols][gain[rows, cols] > 0]


def dsb_score(overlaps, thresholds=DSB_IOU_THRESHOLDS):
    """DSB2018 score of one image: the mean over ``thresholds`` of TP / (TP + FP + FN).

    A pair matches when its IoU exceeds the threshold, one-to-one (:func:`one_to_one_matches`).
    """
    num_instances = len(overlaps.true_areas) + len(overlaps.pred_areas)
    true_positives = [len(one_to_one_matches(overlaps, t)) for t in thresholds]
    return float(np.mean([_ratio(tp, num_instances - tp) for tp in true_positives]))


def aggregated_jaccard_index(overlaps):
    """AJI (Kumar et al. 2017): each true nucleus is paired with the prediction of highest IoU.

    AJI = sum of the pairs' intersections / (sum of the pairs' unions + the areas of the true
    nuclei that touch no prediction + the areas of the predictions paired with no true nucleus).
    A prediction may pair with several true nuclei (e.g. a merge); its pixels then count in
    each union, which is how AJI penalises merges. Ties go to the lower prediction label.
    """
    order = np.lexsort((overlaps.pred_index, -overlaps.iou, overlaps.true_index))
    _, first = np.unique(overlaps.true_index[order], return_index=True)
    best = order[first]  # the best pair of each true nucleus that touches a prediction
    paired_true = overlaps.true_index[best]
    paired_pred = np.unique(overlaps.pred_index[best])
    union = (
        overlaps.union[best].sum()
        + overlaps.true_areas.sum()
        - overlaps.true_areas[paired_true].sum()
        + overlaps.pred_areas.sum()
        - overlaps.pred_areas[paired_pred].sum()
    )
    return _ratio(overlaps.intersection[best].sum(), union)


def panoptic_scores(tp, fp, fn, tp_iou_sum):
    """(PQ, SQ, DQ) from match counts (Kirillov et al. 2019); SQ is 0 when nothing matched."""
    if tp + fp + fn == 0:
        return 1.0, 1.0, 1.0
    sq = tp_iou_sum / tp if tp else 0.0
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    return float(sq * dq), float(sq), float(dq)


def panoptic_counts(overlaps, iou_threshold=PQ_IOU_THRESHOLD):
    """TP, FP, FN and the TPs' summed IoU; pairs match one-to-one when IoU > ``iou_threshold``."""
    matched = one_to_one_matches(overlaps, iou_threshold)
    tp = len(matched)
    return {
        "tp": tp,
        "fp": len(overlaps.pred_areas) - tp,
        "fn": len(overlaps.true_areas) - tp,
        "tp_iou_sum": float(matched.sum()),
    }


def matching_key(name, threshold):
    """The key of a matching-table value at IoU ``threshold``: ``matching_key("f1", 0.5)`` is
    ``"f1@0.5"``."""
    return f"{name}@{float(threshold)!r}"


def check_score_threshold(threshold, name):
    """``threshold`` (set by ``name``) as a float, if scores can reach it: they lie in [0, 1]."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise UserInputError(
            f"{name} {threshold!r}: prediction scores lie between 0 and 1, so the threshold must "
            "too (e.g. 0.5)."
        )
    return float(threshold)


def check_matching_thresholds(thresholds):
    """The matching table's IoU thresholds (one number or several) as sorted, distinct floats;
    each must lie strictly between 0 and 1. None at all means no matching table."""
    if isinstance(thresholds, (str, bytes)) or not hasattr(thresholds, "__iter__"):
        thresholds = (thresholds,)
    values = []
    for threshold in thresholds:
        try:
            value = float(threshold)
        except (TypeError, ValueError):
            value = math.nan
        if isinstance(threshold, bool) or not 0 < value < 1:
            raise UserInputError(
                f"Matching IoU thresholds must lie strictly between 0 and 1, e.g. "
                f"{' '.join(map(str, MATCHING_IOU_THRESHOLDS))}; got {threshold!r}."
            )
        values.append(value)
    return tuple(sorted(set(values)))


def matching_counts(overlaps, thresholds=MATCHING_IOU_THRESHOLDS):
    """Per threshold t, ``tp@t`` and ``tp_iou_sum@t`` of one image, the pairs matching one-to-one
    when IoU >= t (StarDist's ``matching``: IoU at least the threshold, where the DSB score and
    PQ need it above); FP and FN follow from the instance counts."""
    counts = {}
    for threshold in thresholds:
        matched = one_to_one_matches(overlaps, threshold, inclusive=True)
        counts[matching_key("tp", threshold)] = len(matched)
        counts[matching_key("tp_iou_sum", threshold)] = float(matched.sum())
    return counts


def matching_scores(tp, fp, fn, tp_iou_sum):
    """StarDist's matching metrics from counts: precision TP/(TP+FP), recall TP/(TP+FN),
    F1 2TP/(2TP+FP+FN), accuracy TP/(TP+FP+FN) and mean_matched_iou, the mean IoU of the TPs
    (StarDist's mean_matched_score). As in StarDist, each is 0 when TP is 0, also when there was
    nothing to find and nothing found (where the DSB score's convention gives 1)."""
    if not tp:
        return dict.fromkeys(MATCHING_SCORES, 0.0)
    return {
        "precision": tp / (tp + fp),
        "recall": tp / (tp + fn),
        "f1": 2 * tp / (2 * tp + fp + fn),
        "accuracy": tp / (tp + fp + fn),
        "mean_matched_iou": tp_iou_sum / tp,
    }


def summarize_matching(rows, thresholds=MATCHING_IOU_THRESHOLDS):
    """The dataset's matching table from :func:`evaluate_image` rows, as StarDist's
    ``matching_dataset(..., by_image=False)`` computes it: TP, FP, FN and the TPs' IoUs are summed
    over the images, then divided. Keys ``<score>@<t>`` and ``tp@t``, ``fp@t``, ``fn@t``."""
    num_true = sum(row["num_true"] for row in rows)
    num_pred = sum(row["num_pred"] for row in rows)
    table = {}
    for threshold in thresholds:
        tp = sum(row[matching_key("tp", threshold)] for row in rows)
        counts = {"tp": tp, "fp": num_pred - tp, "fn": num_true - tp}
        scores = matching_scores(
            **counts, tp_iou_sum=sum(row[matching_key("tp_iou_sum", threshold)] for row in rows)
        )
        for name, value in {**scores, **counts}.items():
            table[matching_key(name, threshold)] = value
    return table


def evaluate_image(true_labels, pred_labels, matching_thresholds=MATCHING_IOU_THRESHOLDS):
    """Every per-image value, as a flat dict: counts, scores, and the sums the dataset pools
    (with the matching table's counts at ``matching_thresholds``)."""
    overlaps = instance_overlaps(true_labels, pred_labels)
    foreground = {
        "fg_intersection": int(overlaps.intersection.sum()),
        "fg_true": int(overlaps.true_areas.sum()),
        "fg_pred": int(overlaps.pred_areas.sum()),
    }
    iou, dice = foreground_scores(**foreground)
    matches = panoptic_counts(overlaps)
    pq, sq, dq = panoptic_scores(**matches)
    return {
        "num_true": len(overlaps.true_areas),
        "num_pred": len(overlaps.pred_areas),
        "iou": iou,
        "dice": dice,
        "dsb_score": dsb_score(overlaps),
        "aji": aggregated_jaccard_index(overlaps),
        "pq": pq,
        "sq": sq,
        "dq": dq,
        **matches,
        **foreground,
        **matching_counts(overlaps, matching_thresholds),
    }


def summarize_images(rows, matching_thresholds=MATCHING_IOU_THRESHOLDS):
    """Dataset values from :func:`evaluate_image` rows (made with the same
    ``matching_thresholds``).

    ``iou``/``dice`` pool the pixels of all images (micro average), ``*_macro`` average the
    per-image values; ``dsb_score`` and ``aji`` are means over images as their references
    define them; ``pq``/``sq``/``dq`` pool the matches over the dataset (Kirillov et al.), as
    does the matching table (:func:`summarize_matching`).
    """
    if not rows:
        raise UserInputError("There are no images to evaluate.")

    def total(key):
        return sum(row[key] for row in rows)

    def mean(key):
        return float(np.mean([row[key] for row in rows]))

    iou, dice = foreground_scores(total("fg_intersection"), total("fg_true"), total("fg_pred"))
    pq, sq, dq = panoptic_scores(total("tp"), total("fp"), total("fn"), total("tp_iou_sum"))
    return {
        "iou": iou,
        "dice": dice,
        "iou_macro": mean("iou"),
        "dice_macro": mean("dice"),
        "dsb_score": mean("dsb_score"),
        "aji": mean("aji"),
        "pq": pq,
        "sq": sq,
        "dq": dq,
        "pq_macro": mean("pq"),
        "num_images": len(rows),
        "num_true": total("num_true"),
        "num_pred": total("num_pred"),
        "true_per_image": mean("num_true"),
        "pred_per_image": mean("num_pred"),
        **summarize_matching(rows, matching_thresholds),
    }
