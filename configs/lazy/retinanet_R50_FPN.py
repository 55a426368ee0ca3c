"""RetinaNet (ResNet-50 + FPN) for nuclei as a LazyConfig: the twin of retinanet_R50_FPN.yaml.
detectron2's common/models/retinanet.py with the nuclei choices of maskrcnn_R50_FPN.py taken from
it (ResNet with GroupNorm from scratch, pixel std, anchor sizes, detections per image), its data
and schedule, and detectron2's RetinaNet learning rate. It predicts boxes only: the evaluation
reports box AP and says the mask metrics do not apply. The data loader still reads the masks, so
the boxes of nuclei cut by a crop are recomputed from them.

    python tools/train_net.py --config-file configs/lazy/retinanet_R50_FPN.py
"""
from detectron2.model_zoo import get_config

from .maskrcnn_R50_FPN import dataloader, lr_multiplier, optimizer, train
from .maskrcnn_R50_FPN import model as _mask_rcnn

model = get_config("common/models/retinanet.py").model
model.pixel_std = _mask_rcnn.pixel_std
model.backbone.bottom_up = _mask_rcnn.backbone.bottom_up    # GroupNorm, nothing frozen
model.backbone.bottom_up.out_features = ["res3", "res4", "res5"]  # p3-p7, as RetinaNet's
model.backbone.norm = _mask_rcnn.backbone.norm
model.head.norm = _mask_rcnn.backbone.norm                 # the head trains from scratch too
model.anchor_generator.sizes = [                  # RetinaNet's three scales per octave, from 8 px
    [size, size * 2 ** (1 / 3), size * 2 ** (2 / 3)]
    for (size,) in _mask_rcnn.proposal_generator.anchor_generator.sizes
]
model.num_classes = _mask_rcnn.roi_heads.num_classes
model.max_detections_per_image = _mask_rcnn.roi_heads.box_predictor.test_topk_per_image
optimizer.lr = 0.01                               # detectron2's RetinaNet rate for 16 images
train.output_dir = "./output/lazy_retinanet_R50_FPN"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
