"""PointRend (ResNet-50 + FPN) for nuclei as a LazyConfig: the twin of pointrend_R50_FPN.yaml.
maskrcnn_R50_FPN.py (its nuclei choices, data and schedule) whose mask head is detectron2's
PointRendMaskHead (projects/point_rend): a coarse 7x7 mask refined at the most uncertain points
from p2's fine features. detectron2 builds that head from a yacs config only, so it is made by
maskrcnnpp.modeling.point_rend.point_rend_mask_head from the keys the yacs twin sets.

    python tools/train_net.py --config-file configs/lazy/pointrend_R50_FPN.py
"""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from maskrcnnpp.modeling.point_rend import point_rend_mask_head

from .maskrcnn_R50_FPN import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.train_on_pred_boxes = True      # the point head trains on the boxes it will refine
model.roi_heads.mask_in_features = ["p2"]
model.roi_heads.mask_pooler = None              # the head samples p2 itself, no RoI pooling
model.roi_heads.mask_head = L(point_rend_mask_head)(
    input_shape={"p2": ShapeSpec(channels=256, stride=4)},
    num_classes="${..num_classes}",
    roi_mask_head={                             # the coarse head
        "FC_DIM": 1024,
        "NUM_FC": 2,
        "OUTPUT_SIDE_RESOLUTION": 7,            # the coarse mask
        "IN_FEATURES": ["p2"],
        "POINT_HEAD_ON": True,
    },
    point_head={                                # the point head: an MLP over sampled features
        "FC_DIM": 256,
        "NUM_FC": 3,
        "IN_FEATURES": ["p2"],
    },
)
train.output_dir = "./output/lazy_pointrend_R50_FPN"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
