"""tools/evaluate.py: COCO results against COCO ground truth, and one clear error for bad input."""

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from maskrcnnpp import cli
from maskrcnnpp.data.coco_io import coco_dict, encode_mask, labelmap_to_annotations

TOOL = Path(__file__).resolve().parents[1] / "tools" / "evaluate.py"
spec = importlib.util.spec_from_file_location("evaluate_tool", TOOL)
evaluate_tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(evaluate_tool)

HEIGHT, WIDTH = 10, 20


def write_json(path, obj):
    """Write ``obj`` as JSON (a str is written as is, to make invalid files); return the path."""
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


@pytest.fixture
def files(tmp_path):
    """Two true nuclei of 16 pixels; one predicted exactly (score 0.9), one 9-pixel extra (0.6)."""
    true_labels = np.zeros((HEIGHT, WIDTH), dtype=np.int32)
    true_labels[0:4, 0:4], true_labels[0:4, 6:10] = 1, 2
    image = {"id": 7, "file_name": "a.png", "height": HEIGHT, "width": WIDTH}
    gt = coco_dict([image], labelmap_to_annotations(true_labels, 7, 1), "test")
    extra = np.zeros((HEIGHT, WIDTH), dtype=bool)
    extra[6:9, 6:9] = True
    predictions = [
        {
            "image_id": 7,
            "category_id": 1,
            "segmentation": encode_mask(true_labels == 1),
            "score": 0.9,
        },
        {"image_id": 7, "category_id": 1, "segmentation": encode_mask(extra), "score": 0.6},
    ]
    return write_json(tmp_path / "gt.json", gt), predictions, tmp_path


def test_writes_metrics_and_per_image_rows(files, capsys):
    gt, predictions, tmp_path = files
    pred = write_json(tmp_path / "pred.json", predictions)
    assert evaluate_tool.main(["--gt", gt, "--pred", pred, "--out", str(tmp_path / "eval")]) == 0

    metrics = json.loads((tmp_path / "eval" / "nuclei_metrics.json").read_text())
    # 16 of 32 true pixels found among 25 predicted: IoU 16/41, Dice 32/57. One match, one miss,
    # one extra: DSB 1/3 at every threshold, DQ = 1/(1 + 1/2 + 1/2), SQ = 1. AJI = 16/(16+16+9).
    expected = dict(
        iou=16 / 41, dice=32 / 57, dsb_score=1 / 3, aji=16 / 41, pq=1 / 2, sq=1, dq=1 / 2
    )
    assert {key: metrics[key] for key in expected} == pytest.approx(expected)
    assert 0 < metrics["mask_AP"] < 100 and {"mask_AP50", "mask_AP75"} <= metrics.keys()
    assert metrics["score_threshold"] == 0.5 and metrics["max_dets"] == 1000
    assert "higher-scoring" in metrics["overlap_rule"]

    with open(tmp_path / "eval" / "nuclei_per_image.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["image_id"], row["num_true"], row["num_pred"]) == ("7", "2", "2")

    printed = capsys.readouterr().out
    assert "score >= 0.5" in printed and "maxDets=1000" in printed and "higher-scoring" in printed
    assert "| dsb_score" in printed


def test_score_threshold_option_sets_the_instance_maps(files, tmp_path):
    gt, predictions, tmp_path = files
    pred = write_json(tmp_path / "pred.json", predictions)
    out = tmp_path / "eval"
    assert (
        evaluate_tool.main(
            ["--gt", gt, "--pred", pred, "--out", str(out), "--score-threshold", "0.7"]
        )
        == 0
    )
    metrics = json.loads((out / "nuclei_metrics.json").read_text())
    # Only the exact 16-pixel prediction is left: the "missed nucleus" case, IoU 16/32.
    assert (metrics["num_pred"], metrics["iou"], metrics["score_threshold"]) == (1, 0.5, 0.7)


def bad_prediction(predictions, **change):
    return [{**predictions[0], **change}]


@pytest.mark.parametrize(
    "make_pred, message",
    [
        (lambda tmp, preds: str(tmp / "missing.json"), "missing.json does not exist"),
        (lambda tmp, preds: write_json(tmp / "p.json", "[{"), "is not valid JSON"),
        (lambda tmp, preds: write_json(tmp / "p.json", {"a": 1}), "must be a JSON list"),
        (
            lambda tmp, preds: write_json(tmp / "p.json", bad_prediction(preds, image_id=8)),
            r"absent from the ground truth, e.g. \[8\]",
        ),
        (
            lambda tmp, preds: write_json(
                tmp / "p.json",
                bad_prediction(preds, segmentation=encode_mask(np.ones((20, 10), bool))),
            ),
            "mask of size 20x10 but the image is 10x20",
        ),
    ],
)
def test_bad_input_is_one_clear_error(files, capsys, make_pred, message):
    gt, predictions, tmp_path = files
    assert cli.run(evaluate_tool.main, ["--gt", gt, "--pred", make_pred(tmp_path, predictions)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert re.search(message, err)


def test_bad_ground_truth_is_one_clear_error(tmp_path, capsys):
    pred = write_json(tmp_path / "pred.json", [])
    gt = write_json(tmp_path / "gt.json", {"images": []})
    assert cli.run(evaluate_tool.main, ["--gt", gt, "--pred", pred]) == 2
    assert "not a COCO instance file" in capsys.readouterr().err


@pytest.mark.slow
def test_command_line_exits_2_with_the_message(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(TOOL.parents[1])}
    result = subprocess.run(
        [
            sys.executable,
            str(TOOL),
            "--gt",
            str(tmp_path / "gt.json"),
            "--pred",
            str(tmp_path / "p.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2
    assert f"error: The ground-truth file {tmp_path / 'gt.json'} does not exist." in result.stderr


def test_writes_and_prints_the_matching_table(files, capsys):
    gt, predictions, tmp_path = files
    pred = write_json(tmp_path / "pred.json", predictions)
    assert evaluate_tool.main(["--gt", gt, "--pred", pred, "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "nuclei_metrics.json").read_text())
    # One exact match (IoU 1), one missed nucleus, one extra at every threshold: TP 1, FP 1,
    # FN 1. Precision 1/2, recall 1/2, F1 2/(2 + 1 + 1) = 1/2, accuracy 1/3, mean matched IoU 1.
    for threshold in ("0.5", "0.6", "0.7", "0.8", "0.9"):
        table = {name: metrics[f"{name}@{threshold}"] for name in
                 ("precision", "recall", "f1", "accuracy", "mean_matched_iou", "tp", "fp", "fn")}
        assert table == pytest.approx(dict(precision=1 / 2, recall=1 / 2, f1=1 / 2, accuracy=1 / 3,
                                           mean_matched_iou=1, tp=1, fp=1, fn=1))
    printed = capsys.readouterr().out
    assert "| IoU t   | precision   | recall   | F1     | accuracy   | mean matched IoU   |" in printed
    assert "| 0.9     | 0.5000      | 0.5000   | 0.5000 | 0.3333     | 1.0000             | 1" in printed


def test_matching_thresholds_option_sets_the_table(files):
    gt, predictions, tmp_path = files
    pred = write_json(tmp_path / "pred.json", predictions)
    out = tmp_path / "eval"
    argv = ["--gt", gt, "--pred", pred, "--out", str(out), "--matching-thresholds", "0.75", "0.55"]
    assert evaluate_tool.main(argv) == 0
    metrics = json.loads((out / "nuclei_metrics.json").read_text())
    assert [key for key in metrics if key.startswith("f1@")] == ["f1@0.55", "f1@0.75"]
    with open(out / "nuclei_per_image.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["tp@0.55"], row["tp_iou_sum@0.75"]) == ("1", "1.0") and "tp@0.5" not in row
