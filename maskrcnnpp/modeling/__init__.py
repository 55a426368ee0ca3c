"""The dense nested pyramid necks, their backbone builders and the deeply supervised R-CNN.

Importing this package registers ``build_resnet_dense_fpn_backbone`` (R-CNN: p2-p6) and
``build_retinanet_resnet_dense_fpn_backbone`` (RetinaNet: p3-p7) in BACKBONE_REGISTRY,
``DeeplySupervisedRCNN`` in META_ARCH_REGISTRY and ``HybridLossMaskHead`` in ROI_MASK_HEAD_REGISTRY.
"""

from .deep_supervision import DeeplySupervisedRCNN
from .dense_fpn import (
    DenseFPN,
    build_resnet_dense_fpn_backbone,
    build_retinanet_resnet_dense_fpn_backbone,
)
from .mask_head import HybridLossMaskHead
from .topology import WIRINGS, Edge, Node

__all__ = [
    "DeeplySupervisedRCNN",
    "DenseFPN",
    "build_retinanet_resnet_dense_fpn_backbone",
    "build_resnet_dense_fpn_backbone",
    "HybridLossMaskHead",
    "WIRINGS",
    "Edge",
    "Node",
]
