"""Mask R-CNN++ as a LazyConfig: maskrcnn_R50_FPN.py with its FPN replaced by the dense nested
(UNet++) pyramid of maskrcnnpp_R50.yaml; everything else is the twin's, so a comparison changes
only the neck. Any DenseFPN option can be overridden, e.g. model.backbone.topology=nested."""
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from maskrcnnpp.modeling import DenseFPN

from .maskrcnn_R50_FPN import dataloader, lr_multiplier, model, optimizer, train

model.backbone = L(DenseFPN)(
    bottom_up=model.backbone.bottom_up,
    in_features=["res2", "res3", "res4", "res5"],
    out_channels=256,
    topology="dense",                # UNet++: each node sees every earlier node of its row
    fusion="concat",
    node_block="reduce_conv3x3",     # 1x1 reduce before the 3x3 keeps stride-4 nodes cheap
    node_width=128,                  # grid width; outputs are projected to out_channels
    norm="GN",
    upsample="nearest",
    inference_depth=0,               # 0 = full depth
    top_block=L(LastLevelMaxPool)(), # p6 for the RPN, as in FPN
)
train.output_dir = "./output/lazy_maskrcnnpp_R50"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
