"""The dense nested (UNet++) pyramid of maskrcnnpp_R50.py for any detector's FPN twin: each ++
LazyConfig replaces its twin's FPN by :func:`dense_neck` and changes nothing else. Not a config
(the leading underscore keeps it off maskrcnnpp.model_zoo's list)."""
import copy

from .maskrcnnpp_R50 import model as _maskrcnnpp

# What the neck takes from the FPN it replaces; all else is maskrcnnpp_R50.py's.
FROM_THE_TWIN = ("bottom_up", "in_features", "out_channels", "top_block")


def dense_neck(fpn):
    """maskrcnnpp_R50.py's DenseFPN over ``fpn``'s bottom-up, in-features, width and top block
    (LastLevelMaxPool from p5 for R-CNNs, LastLevelP6P7 from res5 for RetinaNet)."""
    neck = copy.deepcopy(_maskrcnnpp.backbone)
    neck.update({key: fpn[key] for key in FROM_THE_TWIN})
    return neck
