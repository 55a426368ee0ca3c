"""The dense nested pyramid necks, their backbone builders and the deeply supervised R-CNN.

Importing this package registers ``build_resnet_dense_fpn_backbone`` in BACKBONE_REGISTRY,
``DeeplySupervisedRCNN`` in META_ARCH_REGISTRY and ``HybridLossMaskHead`` in ROI_MASK_HEAD_REGISTRY.
"""

from .deep_supervision import DeeplySupervisedRCNN
from .dense_fpn import DenseFPN, build_resnet_dense_fpn_backbone
from .mask_head import HybridLossMaskHead
from .topology import WIRINGS, Edge, Node

__all__ = [
    "DeeplySupervisedRCNN",
    "DenseFPN",
    "build_resnet_dense_fpn_backbone",
    "HybridLossMaskHead",
    "WIRINGS",
    "Edge",
    "Node",
]
