"""Inference beyond DefaultPredictor: overlap-tile prediction for images larger than a tile."""
from .tiling import CroppedMasks, TiledPredictor

__all__ = ["CroppedMasks", "TiledPredictor"]
