"""RetinaNet++ as a LazyConfig, the twin of retinanetpp_R50.yaml: retinanet_R50_FPN.py with its
FPN replaced by the dense neck of maskrcnnpp_R50.py, p6 and p7 still convolved from res5."""
from ._dense_neck import dense_neck
from .retinanet_R50_FPN import dataloader, lr_multiplier, model, optimizer, train

model.backbone = dense_neck(model.backbone)
train.output_dir = "./output/lazy_retinanetpp_R50"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
