"""Mask R-CNN++: UNet++-style dense nested feature pyramids for detectron2, for nuclei.

Importing the package registers its datasets, backbones, meta-architectures and evaluators
in detectron2's catalogs and registries.
"""
from . import data  # noqa: F401  (registers the nuclei datasets)
from . import modeling  # noqa: F401  (registers the dense backbones and meta-architecture)
from . import model_zoo  # noqa: F401
from .config import add_maskrcnnpp_config

__all__ = ["add_maskrcnnpp_config", "model_zoo"]
