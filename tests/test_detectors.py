"""Other detectron2 meta-architectures with the dense neck: Cascade Mask R-CNN++, PointRend++ and
RetinaNet++ (boxes only), each beside its FPN twin."""
import json

import numpy as np
import pytest
import torch
from conftest import TINY_TRAINING, run_tool
from detectron2.modeling import build_model
from test_dense_fpn import disc_batch, make_cfg, train_losses

from maskrcnnpp.analysis.cost import describe_neck
from maskrcnnpp.analysis.speed import BenchmarkSettings, benchmark
from maskrcnnpp.data.coco_io import write_rgb_png
from maskrcnnpp.data.synthetic import render_scene
from maskrcnnpp.inference import predict_files
from maskrcnnpp.modeling import DenseFPN


# (FPN twin, dense config): each pair differs only in the neck.
MASK_TWINS = [("cascade_maskrcnn_R50_FPN.yaml", "cascade_maskrcnnpp_R50.yaml"),
              ("pointrend_R50_FPN.yaml", "pointrend_maskrcnnpp_R50.yaml")]
BOX_TWINS = [("retinanet_R50_FPN.yaml", "retinanetpp_R50.yaml")]
TWINS = MASK_TWINS + BOX_TWINS
DENSE = {dense for _, dense in TWINS}
NECK_KEYS = {"MODEL.BACKBONE.NAME", "OUTPUT_DIR"}
# Keep every detection of a model with few iterations or random weights, at a small input size.
KEEP_ALL = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "MODEL.RETINANET.SCORE_THRESH_TEST", 0.0,
            "INPUT.MIN_SIZE_TEST", 128, "INPUT.MAX_SIZE_TEST", 128]


def flat(cfg, prefix=""):
    items = {}
    for key, value in cfg.items():
        if hasattr(value, "items"):
            items.update(flat(value, f"{prefix}{key}."))
        else:
            items[prefix + key] = value
    return items


@pytest.mark.parametrize("fpn,dense", TWINS)
def test_each_dense_detector_differs_from_its_fpn_twin_only_in_the_neck(fpn, dense):
    a, b = flat(make_cfg(fpn, tiny=False)), flat(make_cfg(dense, tiny=False))
    assert {key for key in a if a[key] != b[key]} == NECK_KEYS


@pytest.mark.parametrize("dense", sorted(DENSE))
def test_each_dense_detector_has_the_neck_of_maskrcnnpp(dense):
    assert make_cfg(dense).MODEL.DENSE_FPN == make_cfg("maskrcnnpp_R50.yaml").MODEL.DENSE_FPN


def trained_prediction(config):
    """What ``config``'s tiny model predicts for a new image after 20 iterations on discs, in
    which its loss must fall; it keeps 5 detections whatever their scores."""
    torch.manual_seed(0)
    model = build_model(make_cfg(config, "TEST.DETECTIONS_PER_IMAGE", 5, *KEEP_ALL))
    assert isinstance(model.backbone, DenseFPN) == (config in DENSE)
    history = train_losses(model, disc_batch(), iterations=20)
    assert np.isfinite(history).all()
    assert np.mean(history[-3:]) < 0.75 * np.mean(history[:3]), history
    model.eval()
    with torch.no_grad():
        (output,) = model([{k: v for k, v in disc_batch(1, seed=1)[0].items() if k != "instances"}])
    return output["instances"]


@pytest.mark.slow
@pytest.mark.parametrize("config", [config for twin in MASK_TWINS for config in twin])
def test_each_detector_trains_with_falling_loss_and_predicts_masks(config):
    instances = trained_prediction(config)
    assert len(instances) == 5 and tuple(instances.pred_masks.shape) == (5, 128, 128)
    assert instances.pred_masks.dtype == torch.bool and instances.pred_masks.any()


@pytest.mark.slow
@pytest.mark.parametrize("config", [config for twin in BOX_TWINS for config in twin])
def test_each_box_detector_trains_with_falling_loss_and_predicts_boxes(config):
    instances = trained_prediction(config)
    assert len(instances) == 5 and not instances.has("pred_masks")
    boxes = instances.pred_boxes.tensor
    assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes >= 0).all() and (boxes <= 128).all()


def test_predict_draws_the_boxes_of_a_box_only_model(tmp_path, monkeypatch):
    """tools/predict.py on RetinaNet++ (random weights): the image larger than a tile goes through
    overlap-tile inference; overlays of boxes, COCO results with boxes, no label maps."""
    torch.manual_seed(0)
    cfg = make_cfg("retinanetpp_R50.yaml", *KEEP_ALL, "TEST.NUCLEI.SCORE_THRESHOLD", 0.0,
                   "TEST.TILE.SIZE", 128, "TEST.TILE.OVERLAP", 32)
    monkeypatch.setattr(predict_files, "category_ids", lambda name: {0: 1})
    images = []
    for index, (height, width) in enumerate([(128, 128), (160, 200)]):
        images.append(str(tmp_path / f"image{index}.png"))
        write_rgb_png(images[-1], render_scene(np.random.default_rng(index), height, width)[0])
    results, nuclei, skipped, with_masks = predict_files.predict_images(cfg, images, str(tmp_path))
    assert with_masks is False and not skipped and nuclei == len(results) > 0
    assert {r["file_name"] for r in results} == {"image0.png", "image1.png"}
    assert all(len(r["bbox"]) == 4 and "segmentation" not in r for r in results)
    assert sorted(path.name for path in tmp_path.glob("*_*.png")) == [
        "image0_overlay.png", "image1_overlay.png"]


@pytest.mark.slow
def test_the_benchmark_measures_retinanet_with_fixed_detections():
    """As tools/compare.py measures trained models and tools/benchmark.py random ones."""
    cfg = make_cfg("retinanetpp_R50.yaml")
    assert describe_neck(cfg) == "dense concat+reduce_conv3x3 w32"
    settings = BenchmarkSettings(image_size=128, warmup=0, repeats=1, train_repeats=0,
                                 detections=20)
    (measured,) = benchmark([("retinanetpp", cfg)], settings)["results"]
    assert measured["detections_per_image"] == 20 and measured["neck_flops"] > 0


@pytest.mark.slow
def test_train_net_evaluates_a_box_only_model_on_boxes(tiny_nuclei, tmp_path):
    """RetinaNet++ (ResNet-18) through tools/train_net.py: the data without masks, overlap-tile
    evaluation, and NucleiEvaluator's box AP with the note that the mask metrics do not apply."""
    result = run_tool(
        "train_net.py", "--config-file", "configs/retinanetpp_R50.yaml", *TINY_TRAINING,
        *tiny_nuclei["opts"], "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "metrics.json") as f:
        evaluated = [entry for entry in map(json.loads, f) if "bbox/AP" in entry]
    assert evaluated and "nuclei/box_AP" in evaluated[-1]
    assert not any(key.startswith(("segm/", "nuclei/mask_", "nuclei/iou")) for key in evaluated[-1])
    final = json.loads((tmp_path / "inference" / "tiny_nuclei" / "nuclei_metrics.json").read_text())
    assert final["num_images"] == 4 and "mask_AP" not in final
    assert final["mask_metrics"].startswith("not applicable")
