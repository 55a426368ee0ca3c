"""UNet++'s hybrid segmentation loss for the Mask R-CNN mask head: BCE plus soft Dice.

UNet++ (Zhou et al. 2019) trains with binary cross-entropy plus Dice: BCE scores each pixel alone,
Dice the overlap of the whole mask, which weighs a small nucleus' boundary pixels more than BCE
over its 28 x 28 box does. :class:`HybridLossMaskHead` is detectron2's MaskRCNNConvUpsampleHead
(same layers and weights, same inference) whose training loss adds
``DICE_WEIGHT * (1 - soft Dice)`` of each foreground ROI's mask, logged as ``loss_mask_dice``
beside detectron2's ``loss_mask`` (BCE).
"""
from typing import List

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.roi_heads import ROI_MASK_HEAD_REGISTRY
from detectron2.modeling.roi_heads.mask_head import (
    MaskRCNNConvUpsampleHead,
    mask_rcnn_inference,
    mask_rcnn_loss,
)
from detectron2.structures import Instances

from ..errors import UserInputError, check_choice

__all__ = ["HybridLossMaskHead", "MASK_LOSSES", "soft_dice_loss"]

# MODEL.ROI_MASK_HEAD.LOSS: whether the Dice term is added to detectron2's BCE.
MASK_LOSSES = ("BCE", "BCE+Dice")


@torch.jit.unused
def soft_dice_loss(pred_mask_logits: torch.Tensor, instances: List[Instances], smooth=1.0):
    """Mean over the foreground ROIs of 1 - (2|P.T| + s) / (|P| + |T| + s), with P the predicted
    probabilities of the ROI's true class and T its ground-truth mask cropped to the ROI, as
    detectron2's :func:`mask_rcnn_loss` builds it."""
    side = pred_mask_logits.size(2)
    targets, classes = [], []
    for image_instances in instances:
        if len(image_instances) == 0:
            continue
        targets.append(image_instances.gt_masks.crop_and_resize(
            image_instances.proposal_boxes.tensor, side).to(pred_mask_logits.device))
        classes.append(image_instances.gt_classes.to(torch.int64))
    if not targets:
        return pred_mask_logits.sum() * 0
    targets = cat(targets, dim=0).to(torch.float32).flatten(1)
    if pred_mask_logits.size(1) == 1:  # class-agnostic masks
        logits = pred_mask_logits[:, 0]
    else:
        logits = pred_mask_logits[torch.arange(len(targets)), cat(classes, dim=0)]
    probabilities = logits.float().sigmoid().flatten(1)
    overlap = (probabilities * targets).sum(dim=1)
    dice = (2 * overlap + smooth) / (probabilities.sum(dim=1) + targets.sum(dim=1) + smooth)
    return (1 - dice).mean()


@ROI_MASK_HEAD_REGISTRY.register()
class HybridLossMaskHead(MaskRCNNConvUpsampleHead):
    """MaskRCNNConvUpsampleHead trained with BCE (``MODEL.ROI_MASK_HEAD.LOSS "BCE"``: exactly
    detectron2's head) or BCE plus weighted soft Dice (``"BCE+Dice"``)."""

    @configurable
    def __init__(self, input_shape, *, dice_weight=0.0, **kwargs):
        """
        Args:
            dice_weight (float): weight of the soft Dice loss; 0 trains with BCE alone.
            input_shape, kwargs: those of MaskRCNNConvUpsampleHead.
        """
        super().__init__(input_shape, **kwargs)
        self.dice_weight = dice_weight

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        loss = check_choice("MODEL.ROI_MASK_HEAD.LOSS", cfg.MODEL.ROI_MASK_HEAD.LOSS, MASK_LOSSES)
        weight = cfg.MODEL.ROI_MASK_HEAD.DICE_WEIGHT
        if loss == "BCE+Dice" and not weight > 0:
            raise UserInputError(
                f"MODEL.ROI_MASK_HEAD.DICE_WEIGHT={weight}: the BCE+Dice loss needs a positive "
                "Dice weight (UNet++ weighs both terms alike: 1.0); or set LOSS 'BCE'."
            )
        ret["dice_weight"] = weight if loss == "BCE+Dice" else 0.0
        return ret

    def forward(self, x, instances: List[Instances]):
        # detectron2's BaseMaskRCNNHead.forward plus the Dice term; the test on ``self.training``
        # alone is what TorchScript resolves when exporting (detectron2.export freezes it).
        x = self.layers(x)
        if not self.training:
            mask_rcnn_inference(x, instances)
            return instances
        losses = {"loss_mask": mask_rcnn_loss(x, instances, self.vis_period) * self.loss_weight}
        if self.dice_weight > 0:
            losses["loss_mask_dice"] = (
                soft_dice_loss(x, instances) * self.dice_weight * self.loss_weight
            )
        return losses
