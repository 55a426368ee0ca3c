"""Cascade Mask R-CNN (ResNet-50 + FPN) for nuclei as a LazyConfig: the twin of
cascade_maskrcnn_R50_FPN.yaml. maskrcnn_R50_FPN.py (its nuclei choices, data and schedule) with
the ROI heads of detectron2's common/models/cascade_rcnn.py: three box stages trained at IoU 0.5,
0.6 and 0.7, each with the nuclei box head (4 convs with GroupNorm, 1 fc), as the yacs
CascadeROIHeads builds them.

    python tools/train_net.py --config-file configs/lazy/cascade_maskrcnn_R50_FPN.py
"""
import copy

from detectron2.model_zoo import get_config

from .maskrcnn_R50_FPN import dataloader, lr_multiplier, model, optimizer, train

_cascade = get_config("common/models/cascade_rcnn.py").model.roi_heads
_box_head = model.roi_heads.pop("box_head")
_box_predictor = model.roi_heads.pop("box_predictor")
model.roi_heads.pop("proposal_matcher")               # one matcher per stage instead
for _predictor in _cascade.box_predictors:            # class-agnostic, finer box weights per stage
    _predictor.test_topk_per_image = _box_predictor.test_topk_per_image  # >= 400 nuclei per image
model.roi_heads.update(
    _target_=_cascade._target_,                       # detectron2's CascadeROIHeads
    proposal_matchers=_cascade.proposal_matchers,     # IoU 0.5, 0.6, 0.7
    box_heads=[copy.deepcopy(_box_head) for _ in _cascade.box_heads],
    box_predictors=_cascade.box_predictors,
)
train.output_dir = "./output/lazy_cascade_maskrcnn_R50_FPN"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
