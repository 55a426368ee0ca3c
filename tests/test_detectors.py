"""Other detectron2 meta-architectures with the dense neck: Cascade Mask R-CNN++ and PointRend++,
each beside its FPN twin."""
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from test_dense_fpn import disc_batch, make_cfg, train_losses

from maskrcnnpp.modeling import DenseFPN

# (FPN twin, dense config): each pair differs only in the neck.
TWINS = [("cascade_maskrcnn_R50_FPN.yaml", "cascade_maskrcnnpp_R50.yaml"),
         ("pointrend_R50_FPN.yaml", "pointrend_maskrcnnpp_R50.yaml")]
NECK_KEYS = {"MODEL.BACKBONE.NAME", "OUTPUT_DIR"}


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


@pytest.mark.slow
@pytest.mark.parametrize("config", [config for twin in TWINS for config in twin])
def test_each_detector_trains_with_falling_loss_and_predicts_masks(config):
    torch.manual_seed(0)
    cfg = make_cfg(config, "TEST.DETECTIONS_PER_IMAGE", 5, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)
    model = build_model(cfg)
    assert isinstance(model.backbone, DenseFPN) == ("maskrcnnpp" in config)
    history = train_losses(model, disc_batch(), iterations=20)
    assert np.isfinite(history).all()
    assert np.mean(history[-3:]) < 0.75 * np.mean(history[:3]), history
    model.eval()
    with torch.no_grad():
        (output,) = model([{k: v for k, v in disc_batch(1, seed=1)[0].items() if k != "instances"}])
    instances = output["instances"]
    assert len(instances) == 5 and tuple(instances.pred_masks.shape) == (5, 128, 128)
    assert instances.pred_masks.dtype == torch.bool and instances.pred_masks.any()
