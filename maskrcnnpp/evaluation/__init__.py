"""Nuclei evaluation: the metrics and NucleiEvaluator, shared by training and tools/evaluate.py."""

from .coco_files import load_coco_gt, load_coco_results
from .evaluator import NucleiEvaluator
from .metrics import (
    aggregated_jaccard_index,
    dsb_score,
    evaluate_image,
    foreground_scores,
    instance_overlaps,
    instances_to_labelmap,
    panoptic_counts,
    panoptic_scores,
    summarize_images,
)
from .report import METRICS_FILE, PER_IMAGE_FILE, format_summary, save_evaluation
from .scoring import evaluate_coco_predictions
