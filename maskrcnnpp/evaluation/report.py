"""The nuclei evaluation report: the summary as readable tables, and its JSON and CSV files."""

import math
import os

from tabulate import tabulate

from ..io_utils import write_csv, write_json
from .scoring import COCO_AP

# What save_evaluation writes into its folder, for training's evaluator and tools/evaluate.py
# alike. Not "metrics.json": detectron2 writes its training log under that name in OUTPUT_DIR.
METRICS_FILE = "nuclei_metrics.json"
PER_IMAGE_FILE = "nuclei_per_image.csv"
OVERLAP_RULE = "where predicted masks overlap, each pixel goes to the higher-scoring instance"
BOX_ONLY = ("the model predicts boxes only, so the mask metrics (mask AP, IoU, Dice, DSB score, "
            "AJI, PQ) do not apply")

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


# The per-type table: the metrics a reader compares across image types (and F1 at each
# threshold of the matching table).
TYPE_TABLE_KEYS = ("mask_AP", "mask_AP50", "iou", "dice", "dsb_score", "aji", "pq", "num_images",
                   "num_true", "num_pred")

# The matching table, one row per IoU threshold: (name in the keys, column title, format).
# The names are metrics.MATCHING_SCORES and the counts.
MATCHING_TABLE = (
    ("precision", "precision", ".4f"),
    ("recall", "recall", ".4f"),
    ("f1", "F1", ".4f"),
    ("accuracy", "accuracy", ".4f"),
    ("mean_matched_iou", "mean matched IoU", ".4f"),
    ("tp", "TP", "d"),
    ("fp", "FP", "d"),
    ("fn", "FN", "d"),
)


def matching_thresholds(summary):
    """The IoU thresholds of the summary's matching table, as they are written in its keys."""
    return [key.split("@", 1)[1] for key in summary if key.startswith("f1@")]


def _matching_table(summary):
    """StarDist's matching table of the summary, thresholds as rows; empty without one."""
    rows = [[threshold] + [format(summary[f"{name}@{threshold}"], value_format)
                           for name, _, value_format in MATCHING_TABLE]
            for threshold in matching_thresholds(summary)]
    if not rows:
        return ""
    return ("\n\nMatching (StarDist): nuclei match one-to-one at IoU >= t; TP, FP and FN are summed "
            "over images, then divided.\n"
            + tabulate(rows, headers=["IoU t", *(title for _, title, _ in MATCHING_TABLE)],
                       tablefmt="pipe", disable_numparse=True))


def format_summary(summary):
    """The summary as readable tables, headed by the settings that shape the numbers: every
    metric with its meaning, StarDist's matching table, then the main ones per image type."""
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
        + _matching_table(summary)
    )
    by_type = summary.get("by_type")
    if by_type:
        formats = {key: value_format for key, value_format, _ in SUMMARY_TABLE}
        keys = TYPE_TABLE_KEYS + tuple(f"f1@{t}" for t in matching_thresholds(summary))
        rows = [[key] + [format(by_type[kind][key], formats.get(key, ".4f")) for kind in by_type]
                for key in keys]
        text += "\n\nPer image type:\n" + tabulate(
            rows, headers=["metric", *by_type], tablefmt="pipe", disable_numparse=True
        )
    return text


def _without_nan(value):
    """``value`` with every NaN float, at any depth, replaced by None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def save_evaluation(summary, rows, output_dir):
    """Write the summary into ``output_dir`` as METRICS_FILE (NaN as null, plus the overlap rule,
    or for a box-only model why the mask metrics are absent) and the rows, if any, as
    PER_IMAGE_FILE."""
    note = ({"overlap_rule": OVERLAP_RULE} if "mask_AP" in summary
            else {"mask_metrics": f"not applicable: {BOX_ONLY}"})
    write_json({**_without_nan(summary), **note}, os.path.join(output_dir, METRICS_FILE), indent=2)
    if rows:
        write_csv(rows, os.path.join(output_dir, PER_IMAGE_FILE))
