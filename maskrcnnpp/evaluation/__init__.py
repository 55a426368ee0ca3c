"""Nuclei evaluation: the metrics and NucleiEvaluator, shared by training and tools/evaluate.py."""

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
from .nuclei_evaluation import (
    NucleiEvaluator,
    evaluate_coco_predictions,
    format_summary,
    load_coco_gt,
    load_coco_results,
    save_evaluation,
)
