"""A comparison's report: per config, mean +- std over seeds, costs and paired t-tests.

The runs are aggregated per config, the first config being the baseline of the t-tests; the report
is what tools/compare.py writes as compare.json (:mod:`.comparison_report` writes it out).
"""
import numpy as np

from .stats import PAIRED_TEST, mean_std, paired_t_test

# (key of nuclei_metrics.json, column title, format): accuracy, as mean +- std over seeds. The
# mask metrics are also reported per image type; box AP is the one metric of every model.
MASK_METRICS = (
    ("mask_AP", "mask AP", ".2f"),
    ("mask_AP50", "AP50", ".2f"),
    ("mask_AP75", "AP75", ".2f"),
    ("iou", "IoU", ".4f"),
    ("dice", "Dice", ".4f"),
    ("dsb_score", "DSB score", ".4f"),
    ("aji", "AJI", ".4f"),
    ("pq", "PQ", ".4f"),
    # StarDist's matching at IoU 0.5, as the field reports it; n/a where TEST.NUCLEI.
    # MATCHING_THRESHOLDS lacks 0.5, and for runs evaluated before the evaluator had it.
    ("accuracy@0.5", "accuracy@0.5", ".4f"),
    ("f1@0.5", "F1@0.5", ".4f"),
)
ACCURACY_METRICS = MASK_METRICS + (("box_AP", "box AP", ".2f"),)
# Per image type, beside the accuracy: how many images and nuclei the type has in the test set.
TYPE_COUNTS = (("num_images", "images", "d"), ("num_true", "nuclei", "d"))


# What the benchmark measures of each config's trained model (maskrcnnpp.analysis.speed).
SPEED_KEYS = ("model_params", "model_flops", "ms_per_image", "latency_ms", "peak_memory_mb",
              "detections_per_image")
# What the report says of the benchmark: how and where it measured, or why it did not.
BENCHMARK_KEYS = ("settings", "machine", "memory_method", "reused_from", "not_measured")


def unmeasured(names, reason):
    """The benchmark of configs ``names`` that could not be measured, ``reason`` saying why, in the
    form speed.benchmark returns: every speed n/a, the report's accuracy unaffected."""
    return {**dict.fromkeys(BENCHMARK_KEYS), "not_measured": reason,
            "results": [{"config": name, **dict.fromkeys(SPEED_KEYS)} for name in names]}


def figure_metric(runs):
    """The accuracy plotted against inference time: mask AP, or box AP where a config predicts no
    masks (MODEL.MASK_ON False, as RetinaNet's), since only box AP compares every model then."""
    return "mask_AP" if all(run.cfg.MODEL.MASK_ON for run in runs) else "box_AP"


def summarize(runs, run_results, measured):
    """Per config: mean +- std of the metrics over seeds, costs, speed, and paired t-tests."""
    configs = list(dict.fromkeys(run.name for run in runs))
    seeds = list(dict.fromkeys(run.seed for run in runs))
    speed = {result["config"]: result for result in measured["results"]}
    rows = []
    for name in configs:
        seed_results = [r for r in run_results if r["config"] == name]
        per_seed = {  # None where a metric does not apply (mask AP of RetinaNet) or is NaN
            key: [r["metrics"].get(key) for r in seed_results] for key, _, _ in ACCURACY_METRICS
        }
        step_times = [r["train_s_per_iter"] for r in seed_results if r["train_s_per_iter"]]
        wall_times = [r["wall_seconds"] for r in seed_results if r.get("wall_seconds")]
        bench = speed[name]
        row = {
            "config": name,
            "config_file": next(run.config_file for run in runs if run.name == name),
            "num_seeds": len(seed_results),
            "predicts_masks": not any("mask_metrics" in r["metrics"] for r in seed_results),
            "per_seed": per_seed,
            "mean": {}, "std": {},
            **{key: bench[key] for key in SPEED_KEYS},
            "train_s_per_iter": float(np.mean(step_times)) if step_times else None,
            "run_minutes": float(np.mean(wall_times)) / 60 if wall_times else None,
            "mean_by_type": _mean_by_type(seed_results),
            "runs": seed_results,
        }
        for key, _, _ in ACCURACY_METRICS:
            row["mean"][key], row["std"][key] = mean_std(per_seed[key])
        rows.append(row)
    test_available = len(seeds) >= 2
    for row in rows[1:]:
        row["paired_t_test"] = (
            _paired_tests(row, rows[0]) if test_available else None
        )
    # the other configs against each other: is the dense neck ahead of the wide FPN?
    other_pairs = [
        {"config": ours["config"], "against": theirs["config"],
         "paired_t_test": _paired_tests(ours, theirs)}
        for position, theirs in enumerate(rows[1:], start=2) for ours in rows[position:]
    ] if test_available else []
    first_cfg = runs[0].cfg
    return {
        "configs": [{"name": row["config"], "config_file": row["config_file"]} for row in rows],
        "seeds": seeds,
        "overrides": runs[0].opts,
        "dataset": first_cfg.DATASETS.TEST[0],
        "max_iter": first_cfg.SOLVER.MAX_ITER,
        "figure_metric": figure_metric(runs),
        "paired_t_test": {
            "against": rows[0]["config"],
            "test": PAIRED_TEST,
            "available": test_available and len(rows) > 1,
            "reason": None if test_available else
            f"needs at least 2 seeds per config, got {len(seeds)}",
        },
        "benchmark": {key: measured.get(key) for key in BENCHMARK_KEYS},
        "results": rows,
        "other_pairs": other_pairs,
    }


def _paired_tests(ours, theirs):
    """Each accuracy metric of config row ``ours`` against row ``theirs``, paired by seed."""
    return {key: paired_t_test(ours["per_seed"][key], theirs["per_seed"][key])
            for key, _, _ in ACCURACY_METRICS}


def _mean_by_type(seed_results):
    """{image type: {metric: mean over seeds}} of the runs' per-type results."""
    types = dict.fromkeys(kind for r in seed_results for kind in r.get("metrics_by_type", {}))
    return {
        kind: {key: mean_std([r["metrics_by_type"][kind].get(key) for r in seed_results])[0]
               for key, _, _ in MASK_METRICS + TYPE_COUNTS}
        for kind in types
        if all(kind in r.get("metrics_by_type", {}) for r in seed_results)
    }
