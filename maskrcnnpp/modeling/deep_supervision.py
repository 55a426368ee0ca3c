"""Deep supervision of the nested pyramid (UNet++ section 3.2), carried to detection.

UNet++ puts a 1x1 segmentation head on each top-row node X^{0,1}...X^{0,4}, supervises all of
them, and at inference can stop at column j ("pruning"). On a pyramid, column j of the top row
is the finest level of the pyramid of depth d = j: P_i^(d) = X^{i, min(d, L-i)} takes from each
row the node of column d, or the row's last node when the row is shorter. So UNet++'s head on
X^{0,d} becomes the (shared) RPN and ROI heads run on the pyramid of depth d. The heads and the
per-level output convs are shared across depths, as RPN/ROI heads are shared across levels.
"""

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.utils.events import get_event_storage

from ..errors import UserInputError, check_choice

__all__ = ["DeeplySupervisedRCNN"]


@META_ARCH_REGISTRY.register()
class DeeplySupervisedRCNN(GeneralizedRCNN):
    """GeneralizedRCNN whose detection and mask losses are applied at several pyramid depths.

    In training, the grid is computed once, the shared RPN and ROI heads run on each supervised
    depth's pyramid, and the losses are summed; their keys get the depth as suffix
    (``loss_mask_d1``). At inference it is GeneralizedRCNN unchanged: the backbone returns the
    pyramid of ``MODEL.DENSE_FPN.INFERENCE_DEPTH``, computing only the nodes that depth needs.
    """

    @configurable
    def __init__(self, *, supervised_depths, **kwargs):
        """
        Args:
            supervised_depths (list[int]): depths whose pyramids get the losses.
            kwargs: the arguments of :class:`GeneralizedRCNN`; the backbone must be a DenseFPN.
        """
        super().__init__(**kwargs)
        self.supervised_depths = tuple(sorted(set(supervised_depths)))

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        backbone = ret["backbone"]
        if not hasattr(backbone, "forward_pyramids"):
            raise UserInputError(
                "DeeplySupervisedRCNN needs a dense pyramid backbone: set "
                "MODEL.BACKBONE.NAME='build_resnet_dense_fpn_backbone' "
                f"(got {cfg.MODEL.BACKBONE.NAME!r})."
            )
        depths = cfg.MODEL.DENSE_FPN.DEEP_SUPERVISION_DEPTHS
        if not depths:
            raise UserInputError(
                "DeeplySupervisedRCNN needs MODEL.DENSE_FPN.DEEP_SUPERVISION_DEPTHS, e.g. "
                f"{backbone.available_depths}; or use MODEL.META_ARCHITECTURE='GeneralizedRCNN'."
            )
        for depth in depths:
            check_choice(
                "MODEL.DENSE_FPN.DEEP_SUPERVISION_DEPTHS", depth, backbone.available_depths
            )
        ret["supervised_depths"] = depths
        return ret

    def forward(self, batched_inputs):
        """The losses of every supervised depth in training; GeneralizedRCNN's inference in eval."""
        if not self.training:
            return self.inference(batched_inputs)

        images = self.preprocess_image(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        pyramids = self.backbone.forward_pyramids(images.tensor, self.supervised_depths)

        losses = {}
        for depth, features in pyramids.items():
            proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
            _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
            for name, value in {**proposal_losses, **detector_losses}.items():
                losses[f"{name}_d{depth}"] = value
        if self.vis_period > 0 and get_event_storage().iter % self.vis_period == 0:
            self.visualize_training(batched_inputs, proposals)  # the deepest supervised pyramid's
        return losses
