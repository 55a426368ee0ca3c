"""detectron2's PointRend mask head (projects/point_rend) for LazyConfigs.

detectron2 builds ``PointRendMaskHead`` from a yacs config only and ships no LazyConfig model for
it, so configs/lazy/pointrend_*.py call :func:`point_rend_mask_head` with the keys the yacs twins
set, and get the same head as pointrend_R50_FPN.yaml.
"""
from detectron2.config import get_cfg
from detectron2.projects.point_rend import PointRendMaskHead, add_pointrend_config

from ..errors import UserInputError, did_you_mean


def point_rend_mask_head(input_shape, num_classes, roi_mask_head=None, point_head=None):
    """``PointRendMaskHead(cfg, input_shape)`` with PointRend's defaults, ``num_classes`` for
    both heads, and the MODEL.ROI_MASK_HEAD and MODEL.POINT_HEAD keys given as dicts, e.g.
    ``point_head={"NUM_FC": 3}``; an unknown key is a UserInputError."""
    cfg = get_cfg()
    add_pointrend_config(cfg)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = cfg.MODEL.POINT_HEAD.NUM_CLASSES = num_classes
    for prefix, node, options in (("ROI_MASK_HEAD", cfg.MODEL.ROI_MASK_HEAD, roi_mask_head),
                                  ("POINT_HEAD", cfg.MODEL.POINT_HEAD, point_head)):
        for key, value in (options or {}).items():
            if key not in node:
                raise UserInputError(
                    f"The PointRend mask head has no option MODEL.{prefix}.{key}."
                    f"{did_you_mean(key, node)} Its options are {sorted(node)}."
                )
            default = node[key]  # a LazyConfig's list is a ListConfig: keep yacs' tuple or list
            node[key] = type(default)(value) if isinstance(default, (list, tuple)) else value
    return PointRendMaskHead(cfg, input_shape)
