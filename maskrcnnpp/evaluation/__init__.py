"""Nuclei evaluation: the metrics and NucleiEvaluator, shared by training and tools/evaluate.py."""

from .coco_files import load_coco_gt, load_coco_results
from .evaluator import NucleiEvaluator
from .metrics import (
    aggregated_jaccard_index,
    check_matching_thresholds,
    dsb_score,
    evaluate_image,
    foreground_scores,
    instance_overlaps,
    instances_to_labelmap,
    matching_scores,
    one_to_one_matches,
    panoptic_counts,
    panoptic_scores,
    summarize_images,
    summarize_matching,
)
from .report import METRICS_FILE, PER_IMAGE_FILE, format_summary, save_evaluation
from .scoring import evaluate_coco_predictions
