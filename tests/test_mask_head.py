"""UNet++'s hybrid mask loss: soft Dice on worked cases, and a head that is detectron2's with BCE."""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from maskrcnnpp.analysis.speed import BenchmarkSettings, synthetic_batch
from maskrcnnpp.config_loader import build_cfg
from maskrcnnpp.errors import UserInputError
from maskrcnnpp.modeling.mask_head import soft_dice_loss

QUICKSTART = "configs/quickstart_synthetic.yaml"
SMALL = ["MODEL.RPN.POST_NMS_TOPK_TRAIN", "100", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32"]


def left_half_nucleus():
    """One ROI covering a 4x4 image whose left half (8 pixels) is the nucleus."""
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[:, :, :2] = True
    instances = Instances((4, 4), gt_masks=BitMasks(mask), gt_classes=torch.tensor([0]),
                          proposal_boxes=Boxes(torch.tensor([[0.0, 0.0, 4.0, 4.0]])))
    return mask, instances


@pytest.mark.parametrize("logits, expected", [
    (lambda mask: torch.where(mask, 30.0, -30.0), 0.0),       # certain and right: Dice 1
    (lambda mask: torch.zeros(mask.shape), 1 - 9 / 17),        # p = 0.5: (2*4 + 1) / (8 + 8 + 1)
    (lambda mask: torch.where(mask, -30.0, 30.0), 1 - 1 / 17),  # certain and wrong: (0 + 1) / (8 + 8 + 1)
])
def test_soft_dice_loss_worked_cases(logits, expected):
    mask, instances = left_half_nucleus()
    loss = soft_dice_loss(logits(mask)[:, None], [instances])
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def losses(loss_name, seed=0):
    cfg = build_cfg(QUICKSTART, [*SMALL, "MODEL.ROI_MASK_HEAD.LOSS", loss_name])
    torch.manual_seed(seed)
    model = build_model(cfg).train()
    batch = synthetic_batch(cfg, BenchmarkSettings(image_size=128, batch_size=2), with_targets=True)
    torch.manual_seed(seed)  # the same proposals are sampled for both losses
    with EventStorage():
        return model, model(batch)


def test_bce_is_detectron2s_loss_and_bce_dice_adds_the_dice_term():
    bce_model, bce = losses("BCE")
    hybrid_model, hybrid = losses("BCE+Dice")
    assert "loss_mask_dice" not in bce and set(hybrid) == set(bce) | {"loss_mask_dice"}
    assert hybrid["loss_mask"].item() == pytest.approx(bce["loss_mask"].item())
    assert 0 < hybrid["loss_mask_dice"].item() < 1
    # same layers, so detectron2 MaskRCNNConvUpsampleHead weights load into either
    assert bce_model.state_dict().keys() == hybrid_model.state_dict().keys()
    hybrid["loss_mask_dice"].backward()
    assert hybrid_model.roi_heads.mask_head.predictor.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("opts, message", [
    (["MODEL.ROI_MASK_HEAD.LOSS", "Dice"], "MODEL.ROI_MASK_HEAD.LOSS='Dice' is not valid"),
    (["MODEL.ROI_MASK_HEAD.LOSS", "BCE+Dice", "MODEL.ROI_MASK_HEAD.DICE_WEIGHT", "0.0"],
     "needs a positive Dice weight"),
    (["MODEL.ROI_MASK_HEAD.LOSS", "BCE+Dice", "MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead"],
     "is computed by HybridLossMaskHead"),
])
def test_bad_mask_loss_settings(opts, message):
    with pytest.raises(UserInputError, match=message):
        build_model(build_cfg(QUICKSTART, opts))
