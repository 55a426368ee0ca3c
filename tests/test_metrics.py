"""Nuclei metrics on hand-made images whose answers are worked out from pixel counts below."""

import contextlib
import io
import json
from fractions import Fraction as F

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrcnnpp.config import add_maskrcnnpp_config
from maskrcnnpp.data.coco_io import coco_dict, encode_mask, labelmap_to_annotations
from maskrcnnpp.errors import UserInputError
from maskrcnnpp.evaluation import (
    NucleiEvaluator,
    evaluate_coco_predictions,
    evaluate_image,
    format_summary,
    instance_overlaps,
    instances_to_labelmap,
    load_coco_gt,
    summarize_images,
)
from maskrcnnpp.evaluation.scoring import COCO_AP_NAMES

SHAPE = (10, 20)
SCORES = ("iou", "dice", "dsb_score", "aji", "pq", "sq", "dq")


def labelmap(boxes, shape=SHAPE):
    """Instance i + 1 fills boxes[i] = (top, bottom, left, right), half-open."""
    labels = np.zeros(shape, dtype=np.int32)
    for label, (top, bottom, left, right) in enumerate(boxes, start=1):
        labels[top:bottom, left:right] = label
    return labels


A, B, C = (0, 4, 0, 4), (0, 4, 6, 10), (6, 10, 0, 5)  # 16, 16 and 20 pixels, apart
EXTRA = (6, 9, 6, 9)  # 9 pixels touching no true nucleus
SMALL, LARGE, MERGED = (0, 4, 0, 2), (0, 4, 3, 9), (0, 4, 0, 9)  # 8, 24, 36 (gap included)
WHOLE, PART_OF_18, PART_OF_9 = (0, 3, 0, 9), (0, 3, 0, 6), (0, 3, 6, 9)  # 27 = 18 + 9
HALF_TRUE, HALF_PRED = (0, 2, 0, 4), (0, 2, 0, 2)  # 8 and 4 pixels: IoU exactly 1/2

# DSB: a pair with IoU 2/3 matches at 0.50, 0.55, 0.60 and 0.65, i.e. 4 of the 10 thresholds.
# PQ with one match, one miss or one extra: DQ = 1 / (1 + 1/2) = 2/3.
CASES = {
    "perfect": ([A, B, C], [A, B, C], dict(iou=1, dice=1, dsb_score=1, aji=1, pq=1, sq=1, dq=1)),
    # 16 of 32 true pixels found; AJI union = 16 (pair) + 16 (missed nucleus).
    "missed": (
        [A, B],
        [A],
        dict(
            iou=F(16, 32),
            dice=F(2 * 16, 32 + 16),
            dsb_score=F(1, 2),
            aji=F(16, 16 + 16),
            pq=F(2, 3),
            sq=1,
            dq=F(2, 3),
        ),
    ),
    # 9 extra predicted pixels; AJI union = 16 (pair) + 9 (unpaired prediction).
    "false_positive": (
        [A],
        [A, EXTRA],
        dict(
            iou=F(16, 25),
            dice=F(2 * 16, 16 + 25),
            dsb_score=F(1, 2),
            aji=F(16, 25),
            pq=F(2, 3),
            sq=1,
            dq=F(2, 3),
        ),
    ),
    # One 36-pixel prediction over 8 + 24 true pixels: IoUs 8/36 and 24/36 = 2/3. Only the large
    # nucleus matches (4 thresholds, TP/(TP+FP+FN) = 1/2). AJI: both pair with the merge, whose
    # 36 pixels count in both unions.
    "merged": (
        [SMALL, LARGE],
        [MERGED],
        dict(
            iou=F(32, 36),
            dice=F(2 * 32, 32 + 36),
            dsb_score=F(4, 10) * F(1, 2),
            aji=F(8 + 24, 36 + 36),
            pq=F(2, 3) * F(2, 3),
            sq=F(2, 3),
            dq=F(2, 3),
        ),
    ),
    # 27 true pixels split 18 + 9: IoUs 2/3 and 1/3. The 18-pixel part matches (4 thresholds,
    # 1/2 each); AJI union = 27 (pair) + 9 (unpaired part).
    "split": (
        [WHOLE],
        [PART_OF_18, PART_OF_9],
        dict(
            iou=1,
            dice=1,
            dsb_score=F(4, 10) * F(1, 2),
            aji=F(18, 27 + 9),
            pq=F(2, 3) * F(2, 3),
            sq=F(2, 3),
            dq=F(2, 3),
        ),
    ),
    # IoU exactly 1/2 is not a match: matching needs IoU above the threshold.
    "iou_one_half": (
        [HALF_TRUE],
        [HALF_PRED],
        dict(iou=F(4, 8), dice=F(2 * 4, 8 + 4), dsb_score=0, aji=F(4, 8), pq=0, sq=0, dq=0),
    ),
    "empty": ([], [], dict(iou=1, dice=1, dsb_score=1, aji=1, pq=1, sq=1, dq=1)),
    "nothing_to_find": ([], [A], dict(iou=0, dice=0, dsb_score=0, aji=0, pq=0, sq=0, dq=0)),
}


def assert_scores(values, expected):
    for key, value in expected.items():
        assert values[key] == pytest.approx(float(value), abs=1e-12), key


@pytest.mark.parametrize("case", CASES)
def test_worked_out_cases(case):
    true_boxes, pred_boxes, expected = CASES[case]
    values = evaluate_image(labelmap(true_boxes), labelmap(pred_boxes))
    assert_scores(values, expected)
    assert (values["num_true"], values["num_pred"]) == (len(true_boxes), len(pred_boxes))


def test_dataset_pools_pixels_and_matches_but_averages_image_scores():
    rows = [
        evaluate_image(labelmap([A]), labelmap([A])),
        evaluate_image(labelmap([A, B]), labelmap([A])),
    ]
    summary = summarize_images(rows)
    # Pixels: 16 + 16 found of 16 + 32 true, 16 + 16 predicted. Matches: TP 2, FN 1, IoU sum 2.
    expected = dict(
        iou=F(32, 48),
        dice=F(2 * 32, 48 + 32),
        iou_macro=(1 + F(1, 2)) / 2,
        dice_macro=(1 + F(2, 3)) / 2,
        dsb_score=(1 + F(1, 2)) / 2,
        aji=(1 + F(1, 2)) / 2,
        pq=F(2, 2 + F(1, 2)),
        sq=1,
        dq=F(2, 2 + F(1, 2)),
        pq_macro=(1 + F(2, 3)) / 2,
        true_per_image=F(3, 2),
        pred_per_image=1,
    )
    assert_scores(summary, expected)
    assert (summary["num_images"], summary["num_true"], summary["num_pred"]) == (2, 3, 2)


def test_overlaps_match_pixelwise_counts_on_random_maps():
    rng = np.random.default_rng(0)
    true_labels = rng.integers(0, 6, size=(30, 30)) * 7  # sparse label values with gaps
    pred_labels = rng.integers(0, 5, size=(30, 30))
    overlaps = instance_overlaps(true_labels, pred_labels)
    true_values, pred_values = [np.unique(m)[1:] for m in (true_labels, pred_labels)]
    assert overlaps.true_areas.tolist() == [(true_labels == v).sum() for v in true_values]
    for t, p, iou in zip(overlaps.true_index, overlaps.pred_index, overlaps.iou):
        true_mask, pred_mask = true_labels == true_values[t], pred_labels == pred_values[p]
        assert iou == (true_mask & pred_mask).sum() / (true_mask | pred_mask).sum()
    assert len(overlaps.iou) == len(true_values) * len(pred_values)  # random maps: all pairs touch


def box_mask(box, shape=SHAPE):
    return labelmap([box], shape) > 0


def test_labelmap_gives_overlaps_to_the_higher_score_and_drops_low_scores():
    masks = np.stack([box_mask((0, 4, 0, 4)), box_mask((2, 6, 2, 6)), box_mask((8, 10, 8, 10))])
    labels = instances_to_labelmap(masks, SHAPE, scores=[0.6, 0.9, 0.3], score_threshold=0.5)
    # The 0.9 mask keeps all 16 pixels, the 0.6 one loses the 2x2 overlap, 0.3 is below 0.5.
    assert [(labels == k).sum() for k in (1, 2, 3)] == [16 - 4, 16, 0]


def test_labelmap_ties_and_unscored_masks_keep_the_earlier_instance():
    masks = np.stack([box_mask((0, 4, 0, 4)), box_mask((2, 6, 2, 6))])
    for labels in (
        instances_to_labelmap(masks, SHAPE, [0.7, 0.7]),
        instances_to_labelmap(masks, SHAPE),
    ):
        assert [(labels == k).sum() for k in (1, 2)] == [16, 16 - 4]


def test_labelmap_rejects_masks_of_another_size():
    with pytest.raises(UserInputError, match="5x5 but the image is 10x20"):
        instances_to_labelmap([np.ones((5, 5), bool)], SHAPE)


def grid_labelmap(rows, cols, cell, radius, shift=(0, 0)):
    """rows x cols round nuclei, one per cell x cell square, optionally shifted."""
    yy, xx = np.mgrid[: rows * cell, : cols * cell]
    centre_y = (yy // cell) * cell + cell // 2 + shift[0]
    centre_x = (xx // cell) * cell + cell // 2 + shift[1]
    inside = (yy - centre_y) ** 2 + (xx - centre_x) ** 2 < radius**2
    return np.where(inside, (yy // cell) * cols + xx // cell + 1, 0).astype(np.int32)


def test_400_nuclei_give_a_sparse_table_of_their_400_touching_pairs():
    # What keeps a crowded 1000x1000 image cheap: one entry per touching pair, not 400 x 400.
    true_labels = grid_labelmap(20, 20, 50, 18)
    pred_labels = grid_labelmap(20, 20, 50, 17, shift=(2, -1))
    overlaps = instance_overlaps(true_labels, pred_labels)
    assert len(overlaps.intersection) == 400
    assert np.array_equal(overlaps.true_index, overlaps.pred_index)  # each with its counterpart
    values = evaluate_image(true_labels, pred_labels)
    assert (values["num_true"], values["num_pred"], values["tp"]) == (400, 400, 400)


# --- COCO predictions: the path shared by NucleiEvaluator and tools/evaluate.py ---------------


def coco_gt_from_labelmaps(labelmaps):
    images, annotations = [], []
    for image_id, labels in enumerate(labelmaps, start=1):
        height, width = labels.shape
        images.append(
            {"id": image_id, "file_name": f"{image_id}.png", "height": height, "width": width}
        )
        annotations += labelmap_to_annotations(labels, image_id, len(annotations) + 1)
    return coco_dict(images, annotations, "test")


def coco_gt_api(dataset):
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def results_from_labelmap(labels, image_id, scores):
    """One COCO result per label (in label order) with the given scores."""
    return [
        {
            "image_id": image_id,
            "category_id": 1,
            "segmentation": encode_mask(labels == value),
            "score": score,
        }
        for value, score in zip(np.unique(labels)[1:], scores)
    ]


def test_coco_path_applies_threshold_and_overlap_rule_before_the_metrics():
    coco_gt = coco_gt_api(coco_gt_from_labelmaps([labelmap([A])]))
    predictions = results_from_labelmap(labelmap([A, EXTRA]), 1, [0.9, 0.8])
    predictions += results_from_labelmap(labelmap([C]), 1, [0.2])  # below the threshold
    # A 4-pixel mask inside A: the 0.9 prediction of A takes its pixels, so it vanishes.
    predictions += results_from_labelmap(labelmap([(1, 3, 1, 3)]), 1, [0.7])
    summary, rows, _ = evaluate_coco_predictions(
        coco_gt, predictions, score_threshold=0.5, max_dets=1000
    )
    assert_scores(rows[0], CASES["false_positive"][2])
    assert rows[0]["num_pred"] == 2
    assert summary["score_threshold"] == 0.5 and summary["max_dets"] == 1000


def noisy_predictions(labelmaps, rng):
    """Shifted copies of most true nuclei plus some blobs, with random scores."""
    results = []
    for image_id, labels in enumerate(labelmaps, start=1):
        shifted = np.roll(labels, rng.integers(-2, 3, size=2), axis=(0, 1))
        keep = np.unique(shifted)[1:]
        keep = keep[rng.random(len(keep)) < 0.8]
        blobs = grid_labelmap(4, 4, labels.shape[0] // 4, 3, shift=(5, 5))
        for mask in [shifted == v for v in keep] + [blobs == v for v in range(1, 4)]:
            results.append(
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": encode_mask(mask),
                    "score": float(rng.random()),
                    "bbox": [0, 0, 1, 1],
                }
            )
    return results


def pycocotools_segm_stats(dataset, predictions):
    coco_gt = coco_gt_api(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(
            [{k: v for k, v in p.items() if k != "bbox"} for p in predictions]
        )
        coco_eval = COCOeval(coco_gt, coco_dt, "segm")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats[:6] * 100


def test_mask_ap_matches_pycocotools():
    rng = np.random.default_rng(1)
    # 36 small nuclei per image (< COCO's 100 maxDets) and an image of 4 medium ones.
    labelmaps = [grid_labelmap(6, 6, 16, 4 + i) for i in range(3)] + [grid_labelmap(2, 2, 48, 20)]
    dataset = coco_gt_from_labelmaps(labelmaps)
    predictions = noisy_predictions(labelmaps, rng)
    summary, _, _ = evaluate_coco_predictions(coco_gt_api(dataset), predictions, 0.5, 1000)
    ours = [summary[f"mask_{name}"] for name in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
    reference = pycocotools_segm_stats(dataset, predictions)
    assert np.allclose(ours, np.where(reference < 0, np.nan, reference), equal_nan=True, atol=1e-9)
    assert 5 < ours[0] < 95 and np.isfinite(ours[4])  # a non-trivial case, with medium nuclei


def test_mask_ap_counts_every_nucleus_of_a_crowded_image():
    labels = grid_labelmap(10, 15, 12, 4)  # 150 nuclei
    dataset = coco_gt_from_labelmaps([labels])
    predictions = results_from_labelmap(labels, 1, np.linspace(1.0, 0.5, 150))
    summary, _, _ = evaluate_coco_predictions(coco_gt_api(dataset), predictions, 0.5, 1000)
    assert summary["mask_AP"] == pytest.approx(100)
    # COCO's default maxDets=100 sees only 100 of the 150 perfect masks.
    assert pycocotools_segm_stats(dataset, predictions)[0] < 70


def test_no_predictions_give_zero_ap_and_zero_scores():
    coco_gt = coco_gt_api(coco_gt_from_labelmaps([labelmap([A, B])]))
    summary, _, _ = evaluate_coco_predictions(coco_gt, [], 0.5, 1000)
    assert summary["mask_AP"] == 0 and summary["dsb_score"] == 0 and summary["iou"] == 0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"image_id": 99}, r"absent from the ground truth, e.g. \[99\]"),
        (
            {"segmentation": encode_mask(np.ones((10, 10), bool))},
            "mask of size 10x10 but the image is 10x20",
        ),
        ({"category_id": 0}, "category_id 0, which is not in the ground truth's categories"),
        ({"score": None}, "scores must be finite numbers"),
        ({"segmentation": [[0, 0, 1, 1, 2, 2]]}, "segmentation must be an RLE dict"),
        # Runs that stop short of the mask's 200 pixels, or run past them (pycocotools would
        # decode either without a word, the second by writing past its buffer).
        ({"segmentation": {"size": [10, 20], "counts": [0, 16]}}, "RLE counts are not runs of a 10x20"),
        ({"segmentation": {"size": [10, 20], "counts": encode_mask(np.ones((20, 20), bool))["counts"]}},
         "summing to 200"),
        ({"segmentation": {"size": [10, 20], "counts": "~~"}}, "RLE counts are not runs"),
    ],
)
def test_bad_predictions_name_the_problem(change, message):
    coco_gt = coco_gt_api(coco_gt_from_labelmaps([labelmap([A])]))
    predictions = results_from_labelmap(labelmap([A]), 1, [0.9])
    with pytest.raises(UserInputError, match=message):
        evaluate_coco_predictions(coco_gt, [{**predictions[0], **change}], 0.5, 1000)


def test_predictions_in_crowd_regions_are_neither_right_nor_wrong():
    # A true nucleus and a crowd region (a clump nobody outlined): a prediction of the clump is
    # ignored by COCO's AP, and by the instance-map metrics as well, not counted as an extra.
    dataset = coco_gt_from_labelmaps([labelmap([A, C])])
    dataset["annotations"][1]["iscrowd"] = 1
    predictions = results_from_labelmap(labelmap([A, C]), 1, [0.9, 0.8])
    summary, rows, _ = evaluate_coco_predictions(coco_gt_api(dataset), predictions, 0.5, 1000)
    alone, _, _ = evaluate_coco_predictions(coco_gt_api(dataset), predictions[:1], 0.5, 1000)
    assert summary["mask_AP"] == pytest.approx(100)
    assert (rows[0]["num_true"], rows[0]["num_pred"]) == (1, 1)
    assert summary["iou"] == summary["precision@0.5"] == summary["dsb_score"] == 1.0
    assert {k: v for k, v in summary.items() if k != "mask_AP"} == pytest.approx(
        {k: v for k, v in alone.items() if k != "mask_AP"}, nan_ok=True)
    # Half of a prediction's area in the clump is COCO's IoU 0.5: ignored; less is an extra.
    half_in = labelmap([(6, 10, 3, 7)])  # 8 of 16 pixels in C (columns 0-4)
    summary, rows, _ = evaluate_coco_predictions(
        coco_gt_api(dataset), predictions[:1] + results_from_labelmap(half_in, 1, [0.8]), 0.5, 1000)
    assert rows[0]["num_pred"] == 1
    mostly_out = labelmap([(6, 10, 4, 8)])  # 4 of 16 pixels in C
    summary, rows, _ = evaluate_coco_predictions(
        coco_gt_api(dataset), predictions[:1] + results_from_labelmap(mostly_out, 1, [0.8]), 0.5, 1000)
    assert rows[0]["num_pred"] == 2 and summary["precision@0.5"] == 0.5


def nuclei_evaluator(tmp_path, true_labels, without_area=False):
    """A NucleiEvaluator writing to tmp_path/out, on a dataset of one image with ``true_labels``
    (its annotations lacking COCO's ``area`` if ``without_area``)."""
    dataset = coco_gt_from_labelmaps([true_labels])
    for annotation in dataset["annotations"] if without_area else ():
        del annotation["area"]
    (tmp_path / "gt.json").write_text(json.dumps(dataset))
    dataset_name = f"nuclei_evaluator_test_{tmp_path.name}"
    MetadataCatalog.get(dataset_name).set(json_file=str(tmp_path / "gt.json"))
    cfg = get_cfg()
    add_maskrcnnpp_config(cfg)
    evaluator = NucleiEvaluator(cfg, dataset_name, str(tmp_path / "out"))
    evaluator.reset()
    return evaluator


@pytest.mark.parametrize("without_area", [False, True], ids=["with area", "without area"])
def test_evaluator_agrees_with_the_shared_function(tmp_path, without_area):
    # A COCO file without 'area' (COCOeval's area ranges read it) gets the masks' areas.
    evaluator = nuclei_evaluator(tmp_path, labelmap([A, B, C]), without_area)
    pred_labels = labelmap([A, (0, 4, 6, 9), EXTRA])
    masks = torch.from_numpy(np.stack([pred_labels == k for k in (1, 2, 3)]))
    scores = torch.tensor([0.9, 0.8, 0.7])
    instances = Instances(
        SHAPE,
        pred_masks=masks,
        scores=scores,
        pred_classes=torch.zeros(3, dtype=torch.int64),
        pred_boxes=Boxes(torch.zeros(3, 4)),
    )
    evaluator.process([{"image_id": 1}], [{"instances": instances}])
    results = evaluator.evaluate()

    expected, _, _ = evaluate_coco_predictions(
        load_coco_gt(tmp_path / "gt.json"),
        results_from_labelmap(pred_labels, 1, [0.9, 0.8, 0.7]),
        0.5,
        1000,
    )
    box_ap = {f"box_{key}": value for key, value in results["bbox"].items() if "-" not in key}
    assert results["nuclei"] == pytest.approx({**expected, **box_ap}, nan_ok=True)
    # detectron2's EvalHook stores every value as a float.
    assert all(isinstance(float(value), float) for value in results["nuclei"].values())
    # A exact, 12 of B's 16 pixels, a 9-pixel extra, C (20) missed: 16 + 12 of 52 + 37 - 28.
    assert results["nuclei"]["iou"] == pytest.approx(28 / 61)
    assert results["nuclei"]["num_pred"] == 3 and results["nuclei"]["num_true"] == 3
    assert (tmp_path / "out" / "nuclei_metrics.json").is_file()
    assert (tmp_path / "out" / "nuclei_per_image.csv").read_text().count("\n") == 2


def test_metrics_per_image_type_equal_those_of_each_type_alone():
    rng = np.random.default_rng(2)
    labelmaps = [grid_labelmap(4, 4, 16, 4 + i) for i in range(4)]
    dataset = coco_gt_from_labelmaps(labelmaps)
    for image, kind in zip(dataset["images"], ["he_stained", "fluorescence", "fluorescence", "he_stained"]):
        image["image_type"] = kind
    predictions = noisy_predictions(labelmaps, rng)
    summary, rows, _ = evaluate_coco_predictions(coco_gt_api(dataset), predictions, 0.5, 1000)
    assert list(summary["by_type"]) == ["fluorescence", "he_stained"]  # the reports' order
    assert [row["image_type"] for row in rows] == ["he_stained", "fluorescence", "fluorescence", "he_stained"]
    for kind, ids in (("fluorescence", [2, 3]), ("he_stained", [1, 4])):
        alone, _, _ = evaluate_coco_predictions(coco_gt_api(dataset), predictions, 0.5, 1000, ids)
        by_type = summary["by_type"][kind]
        assert by_type["num_images"] == 2
        for key in ("mask_AP", "mask_AP50", "iou", "dsb_score", "aji", "pq", "num_true"):
            assert by_type[key] == pytest.approx(alone[key]), key
    per_type = format_summary(summary).split("Per image type:")[1]
    header = [cell.strip() for cell in per_type.splitlines()[1].split("|")]
    assert header[1:4] == ["metric", "fluorescence", "he_stained"]


def test_ground_truth_without_types_has_no_per_type_results():
    coco_gt = coco_gt_api(coco_gt_from_labelmaps([labelmap([A])]))
    summary, rows, _ = evaluate_coco_predictions(coco_gt, [], 0.5, 1000)
    assert "by_type" not in summary and rows[0]["image_type"] == "unknown"
    assert "Per image type" not in format_summary(summary)


def test_evaluator_of_a_box_only_model_gives_box_ap_and_no_mask_metrics(tmp_path):
    """RetinaNet's Instances carry no pred_masks: box AP only, and the files say why."""
    evaluator = nuclei_evaluator(tmp_path, labelmap([A, B, C]))
    boxes = [[left, top, right, bottom] for top, bottom, left, right in (A, B, EXTRA)]
    instances = Instances(SHAPE, pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
                          scores=torch.tensor([0.9, 0.8, 0.7]),
                          pred_classes=torch.zeros(3, dtype=torch.int64))
    evaluator.process([{"image_id": 1}], [{"instances": instances}])
    results = evaluator.evaluate()

    assert set(results) == {"bbox", "nuclei"}
    nuclei = results["nuclei"]
    assert set(nuclei) == {f"box_{name}" for name in COCO_AP_NAMES} | {"num_images", "max_dets"}
    # A and B found, C missed: the two best detections are right, recall stops at 2/3.
    assert nuclei["box_AP50"] == results["bbox"]["AP50"] == pytest.approx(100 * 67 / 101)
    assert nuclei["num_images"] == 1
    saved = json.loads((tmp_path / "out" / "nuclei_metrics.json").read_text())
    assert "mask_AP" not in saved and "iou" not in saved
    assert saved["mask_metrics"].startswith("not applicable: the model predicts boxes only")
    assert not (tmp_path / "out" / "nuclei_per_image.csv").exists()
    text = format_summary(nuclei)
    assert "box_AP50" in text and "mask" not in text.split("\n", 1)[1]
    assert "predicts boxes only, so the mask metrics" in text


def test_box_only_predictions_are_refused_by_the_mask_evaluation():
    coco_gt = coco_gt_api(coco_gt_from_labelmaps([labelmap([A])]))
    prediction = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "score": 0.9}
    with pytest.raises(UserInputError, match="has a box but no mask.*train_net.py --eval-only"):
        evaluate_coco_predictions(coco_gt, [prediction], 0.5, 1000)


# --- StarDist's matching table: precision, recall, F1, accuracy, mean matched IoU at IoU t -----

from scipy.optimize import linear_sum_assignment  # noqa: E402

from maskrcnnpp.evaluation.metrics import (  # noqa: E402
    MATCHING_IOU_THRESHOLDS,
    check_matching_thresholds,
    matching_scores,
    one_to_one_matches,
)

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
# Two true nuclei, three predictions: A exactly (IoU 1), 12 of the 20 pixels of B20 (IoU 12/20,
# exactly 0.6: it matches at t = 0.6 too, since StarDist matches at IoU >= t), and EXTRA, 9 pixels
# touching no nucleus.
B20, B20_PART = (0, 4, 6, 11), (0, 4, 6, 9)


def matching_of(summary, threshold):
    names = ("precision", "recall", "f1", "accuracy", "mean_matched_iou", "tp", "fp", "fn")
    return {name: summary[f"{name}@{threshold}"] for name in names}


def test_matching_table_of_one_image_worked_by_hand():
    values = evaluate_image(labelmap([A, B20]), labelmap([A, B20_PART, EXTRA]))
    summary = summarize_images([values])
    # t = 0.5 and 0.6: IoUs 1 and 0.6 match. TP 2, FP 1 (EXTRA), FN 0. Precision 2/3, recall 2/2,
    # F1 2*2/(2*2 + 1 + 0) = 4/5, accuracy 2/(2 + 1 + 0) = 2/3, mean matched IoU (1 + 0.6)/2.
    at_most_0_6 = dict(precision=F(2, 3), recall=1, f1=F(4, 5), accuracy=F(2, 3),
                       mean_matched_iou=F(4, 5), tp=2, fp=1, fn=0)
    # t = 0.7, 0.8, 0.9: only A matches. TP 1, FP 2, FN 1. Precision 1/3, recall 1/2,
    # F1 2/(2 + 2 + 1) = 2/5, accuracy 1/(1 + 2 + 1) = 1/4, mean matched IoU 1.
    above_0_6 = dict(precision=F(1, 3), recall=F(1, 2), f1=F(2, 5), accuracy=F(1, 4),
                     mean_matched_iou=1, tp=1, fp=2, fn=1)
    for threshold in THRESHOLDS:
        expected = at_most_0_6 if threshold <= 0.6 else above_0_6
        assert matching_of(summary, threshold) == pytest.approx(
            {key: float(value) for key, value in expected.items()}, abs=1e-12), threshold
    # The per-image counts behind it; FP and FN follow from num_pred and num_true.
    assert [values[f"tp@{t}"] for t in THRESHOLDS] == [2, 2, 1, 1, 1]
    assert values["tp_iou_sum@0.6"] == pytest.approx(1.6)
    # The DSB score and PQ keep their own rule, IoU above the threshold: 0.6 matches there at
    # 0.50 and 0.55 only, so DSB = (2 thresholds at 2/3 + 8 at 1/4) / 10; PQ's match count is 2.
    assert values["dsb_score"] == pytest.approx(float((2 * F(2, 3) + 8 * F(1, 4)) / 10))
    assert values["tp"] == 2


def test_matching_table_sums_counts_over_images_before_dividing():
    rows = [
        evaluate_image(labelmap([A, B20]), labelmap([A, B20_PART, EXTRA])),
        evaluate_image(labelmap([A, B, C]), labelmap([A])),
    ]
    summary = summarize_images(rows)
    # t = 0.5: image 1 TP 2, FP 1, FN 0, IoUs 1 + 0.6; image 2 TP 1, FP 0, FN 2, IoU 1.
    # Summed: TP 3, FP 1, FN 2. Precision 3/4, recall 3/5, F1 6/(6 + 1 + 2) = 2/3,
    # accuracy 3/(3 + 1 + 2) = 1/2, mean matched IoU (1 + 0.6 + 1)/3 = 13/15. (The means of the
    # two images' values would differ: precision (2/3 + 1)/2 = 5/6, recall (1 + 1/3)/2 = 2/3.)
    expected_0_5 = dict(precision=F(3, 4), recall=F(3, 5), f1=F(2, 3), accuracy=F(1, 2),
                        mean_matched_iou=F(13, 15), tp=3, fp=1, fn=2)
    # t = 0.7: image 1 TP 1, FP 2, FN 1; image 2 TP 1, FP 0, FN 2. Summed: TP 2, FP 2, FN 3.
    # Precision 2/4, recall 2/5, F1 4/(4 + 2 + 3) = 4/9, accuracy 2/(2 + 2 + 3) = 2/7, IoU 1.
    expected_0_7 = dict(precision=F(1, 2), recall=F(2, 5), f1=F(4, 9), accuracy=F(2, 7),
                        mean_matched_iou=1, tp=2, fp=2, fn=3)
    for threshold, expected in ((0.5, expected_0_5), (0.7, expected_0_7)):
        assert matching_of(summary, threshold) == pytest.approx(
            {key: float(value) for key, value in expected.items()}, abs=1e-12), threshold


def test_matching_below_one_half_is_still_one_to_one():
    # WHOLE (27 px) is split 18 + 9: IoUs 2/3 and 1/3, both >= 0.3 but one nucleus matches once;
    # the larger IoU is kept. TP 1, FP 1, FN 0: precision 1/2, recall 1, F1 2/3, accuracy 1/2.
    values = evaluate_image(labelmap([WHOLE]), labelmap([PART_OF_18, PART_OF_9]), [0.3])
    summary = summarize_images([values], [0.3])
    expected = dict(precision=F(1, 2), recall=1, f1=F(2, 3), accuracy=F(1, 2),
                    mean_matched_iou=F(2, 3), tp=1, fp=1, fn=0)
    assert matching_of(summary, 0.3) == pytest.approx(
        {key: float(value) for key, value in expected.items()}, abs=1e-12)


def test_matching_two_halves_of_a_nucleus_match_it_once_at_iou_one_half():
    # Two 4-pixel predictions cover the two halves of an 8-pixel nucleus: IoU 1/2 each, so both
    # reach t = 0.5, but the nucleus matches one of them: TP 1, FP 1, FN 0, mean IoU 1/2.
    values = evaluate_image(labelmap([HALF_TRUE]), labelmap([(0, 2, 0, 2), (0, 2, 2, 4)]))
    summary = summarize_images([values])
    assert matching_of(summary, 0.5) == pytest.approx(
        dict(precision=0.5, recall=1, f1=2 / 3, accuracy=0.5, mean_matched_iou=0.5,
             tp=1, fp=1, fn=0))


def test_matching_prefers_more_matches_to_a_larger_iou():
    # One row of pixels: true T1 = columns 0-19, T2 = 20-21; predicted P1 = 2-21, P2 = 0-1.
    # IoUs: P1-T1 18/22 = 9/11, P1-T2 2/20 = 1/10, P2-T1 2/20 = 1/10. At t = 1/10, taking the
    # best pair (P1-T1), or the largest IoU sum, would match once; StarDist's matching (and ours)
    # pairs P2-T1 and P1-T2 instead: two matches.
    true_labels = labelmap([(0, 1, 0, 20), (0, 1, 20, 22)], shape=(1, 22))
    pred_labels = labelmap([(0, 1, 2, 22), (0, 1, 0, 2)], shape=(1, 22))
    overlaps = instance_overlaps(true_labels, pred_labels)
    assert one_to_one_matches(overlaps, 0.1, inclusive=True).tolist() == [0.1, 0.1]
    assert one_to_one_matches(overlaps, 0.1).tolist() == [9 / 11]  # 1/10 is not above 1/10
    assert one_to_one_matches(overlaps, 0.2, inclusive=True).tolist() == [9 / 11]


def stardist_true_positives(true_labels, pred_labels, threshold):
    """TP as StarDist's ``matching`` counts it: a dense IoU matrix, one assignment."""
    true_values, pred_values = [np.unique(m)[1:] for m in (true_labels, pred_labels)]
    iou = np.array([[((true_labels == t) & (pred_labels == p)).sum()
                     / ((true_labels == t) | (pred_labels == p)).sum()
                     for p in pred_values] for t in true_values]).reshape(len(true_values), -1)
    if not min(iou.shape) or not (iou >= threshold).any():
        return 0
    rows, cols = linear_sum_assignment(-(iou >= threshold).astype(float) - iou / (2 * min(iou.shape)))
    return int((iou[rows, cols] >= threshold).sum())


def test_matching_counts_agree_with_a_dense_assignment_on_random_maps():
    rng = np.random.default_rng(3)
    for _ in range(5):
        true_labels = np.kron(rng.integers(0, 8, size=(6, 6)), np.ones((4, 4), int))
        pred_labels = np.roll(np.kron(rng.integers(0, 8, size=(6, 6)), np.ones((4, 4), int)),
                              rng.integers(-2, 3, size=2), axis=(0, 1))
        thresholds = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
        values = evaluate_image(true_labels, pred_labels, thresholds)
        for threshold in thresholds:
            assert values[f"tp@{threshold}"] == stardist_true_positives(
                true_labels, pred_labels, threshold), threshold


def test_matching_scores_are_zero_without_true_positives_as_in_stardist():
    assert matching_scores(0, 0, 0, 0.0) == dict(
        precision=0, recall=0, f1=0, accuracy=0, mean_matched_iou=0)
    assert matching_scores(0, 3, 2, 0.0)["precision"] == 0
    # An empty image predicted empty: DSB score 1 by its convention, F1 0 by StarDist's.
    summary = summarize_images([evaluate_image(labelmap([]), labelmap([]))])
    assert summary["dsb_score"] == 1 and summary["f1@0.5"] == 0 and summary["tp@0.5"] == 0


def test_matching_thresholds_are_checked_sorted_and_distinct():
    assert check_matching_thresholds([0.9, 0.5, 0.5]) == (0.5, 0.9)
    assert check_matching_thresholds(0.75) == (0.75,)
    assert check_matching_thresholds([]) == ()
    for bad in (0, 1, -0.1, 1.5, float("nan"), True, "high"):
        with pytest.raises(UserInputError) as error:
            check_matching_thresholds([0.5, bad])
        assert str(error.value) == (
            "Matching IoU thresholds must lie strictly between 0 and 1, e.g. 0.5 0.6 0.7 0.8 0.9; "
            f"got {bad!r}.")


def test_matching_thresholds_default_to_the_config_key():
    cfg = get_cfg()
    add_maskrcnnpp_config(cfg)
    assert tuple(cfg.TEST.NUCLEI.MATCHING_THRESHOLDS) == MATCHING_IOU_THRESHOLDS == THRESHOLDS


def test_coco_path_reports_the_matching_table_overall_and_per_type():
    dataset = coco_gt_from_labelmaps([labelmap([A, B20]), labelmap([A, B, C])])
    for image, kind in zip(dataset["images"], ["fluorescence", "brightfield"]):
        image["image_type"] = kind
    predictions = (results_from_labelmap(labelmap([A, B20_PART, EXTRA]), 1, [0.9, 0.8, 0.7])
                   + results_from_labelmap(labelmap([A]), 2, [0.9]))
    summary, rows, _ = evaluate_coco_predictions(
        coco_gt_api(dataset), predictions, 0.5, 1000, matching_thresholds=[0.7, 0.5])
    # The two images of test_matching_table_sums_counts_over_images_before_dividing.
    assert (summary["tp@0.5"], summary["fp@0.5"], summary["fn@0.5"]) == (3, 1, 2)
    assert summary["f1@0.5"] == pytest.approx(2 / 3) and summary["accuracy@0.7"] == pytest.approx(2 / 7)
    assert "f1@0.6" not in summary and rows[0]["tp@0.5"] == 2
    # Each type on its own image: fluorescence is image 1 (F1 4/5 at 0.5), brightfield image 2
    # (TP 1, FP 0, FN 2: F1 2/(2 + 0 + 2) = 1/2).
    assert summary["by_type"]["fluorescence"]["f1@0.5"] == pytest.approx(4 / 5)
    assert summary["by_type"]["brightfield"]["f1@0.5"] == pytest.approx(1 / 2)
    text = format_summary(summary)
    assert "Matching (StarDist): nuclei match one-to-one at IoU >= t" in text
    table = text.split("Matching (StarDist)")[1].split("Per image type:")[0]
    assert [line.split("|")[1].strip() for line in table.splitlines()[1:] if line][2:] == ["0.5", "0.7"]
    assert "| 0.5     | 0.7500      | 0.6000   | 0.6667 | 0.5000     | 0.8667" in table
    assert "| f1@0.5" in text.split("Per image type:")[1]
    with pytest.raises(UserInputError, match="strictly between 0 and 1.*got 1.0"):
        evaluate_coco_predictions(coco_gt_api(dataset), predictions, 0.5, 1000,
                                  matching_thresholds=[0.5, 1.0])


def test_evaluator_takes_the_thresholds_from_the_config(tmp_path):
    (tmp_path / "gt.json").write_text(json.dumps(coco_gt_from_labelmaps([labelmap([A])])))
    dataset_name = f"nuclei_matching_test_{tmp_path.name}"
    MetadataCatalog.get(dataset_name).set(json_file=str(tmp_path / "gt.json"))
    cfg = get_cfg()
    add_maskrcnnpp_config(cfg)
    cfg.TEST.NUCLEI.MATCHING_THRESHOLDS = (0.75,)
    evaluator = NucleiEvaluator(cfg, dataset_name)
    evaluator.reset()
    instances = Instances(SHAPE, pred_masks=torch.from_numpy(labelmap([A])[None] > 0),
                          scores=torch.tensor([0.9]), pred_classes=torch.zeros(1, dtype=torch.int64),
                          pred_boxes=Boxes(torch.tensor([[0.0, 0.0, 4.0, 4.0]])))
    evaluator.process([{"image_id": 1}], [{"instances": instances}])
    nuclei = evaluator.evaluate()["nuclei"]
    assert [key for key in nuclei if "@" in key] == [
        f"{name}@0.75" for name in
        ("precision", "recall", "f1", "accuracy", "mean_matched_iou", "tp", "fp", "fn")]
    assert nuclei["f1@0.75"] == 1
    cfg.TEST.NUCLEI.MATCHING_THRESHOLDS = (0.5, 1.0)
    with pytest.raises(UserInputError, match="got 1.0"):
        NucleiEvaluator(cfg, dataset_name)
