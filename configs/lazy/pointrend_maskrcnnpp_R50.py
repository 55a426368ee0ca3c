"""PointRend++ as a LazyConfig, the twin of pointrend_maskrcnnpp_R50.yaml: pointrend_R50_FPN.py
with its FPN replaced by the dense neck of maskrcnnpp_R50.py."""
from ._dense_neck import dense_neck
from .pointrend_R50_FPN import dataloader, lr_multiplier, model, optimizer, train

model.backbone = dense_neck(model.backbone)
train.output_dir = "./output/lazy_pointrend_maskrcnnpp_R50"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
