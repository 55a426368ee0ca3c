"""Inference beyond DefaultPredictor: overlap-tile prediction for images larger than a tile."""
from .cropped_masks import CroppedMasks
from .tiling import TiledPredictor

__all__ = ["CroppedMasks", "TiledPredictor"]
