"""Mask R-CNN (ResNet-50 + FPN) for nuclei as a LazyConfig: the twin of maskrcnn_R50_FPN.yaml.

Built as detectron2's configs/new_baselines are, from detectron2's own common/models/
mask_rcnn_fpn.py, with the nuclei choices of Base-Nuclei.yaml (one class, small anchors, GroupNorm
from scratch, room for crowded images, dsb2018_train / dsb2018_val) and a large-scale-jitter
recipe: each image zoomed by 0.5-2 and cropped to 512 x 512, flipped and rotated. Runs under
detectron2's tools/lazyconfig_train_net.py as well as tools/train_net.py:

    python tools/train_net.py --config-file configs/lazy/maskrcnn_R50_FPN.py train.max_iter=3000
"""
import detectron2.data.transforms as T
import torch
from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper, build_detection_test_loader, build_detection_train_loader
from detectron2.data import get_detection_dataset_dicts
from detectron2.model_zoo import get_config
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

import maskrcnnpp  # noqa: F401  (registers dsb2018_train / dsb2018_val and the nuclei components)
from maskrcnnpp.data.augment import RandomRot90
from maskrcnnpp.evaluation import NucleiEvaluator

on_gpu = torch.cuda.is_available()

# --- model: detectron2's Mask R-CNN with FPN, for nuclei ---------------------------------------
model = get_config("common/models/mask_rcnn_fpn.py").model
model.pixel_std = [57.375, 57.12, 58.395]            # dividing by std helps from-scratch training
model.backbone.bottom_up.freeze_at = 0               # nothing pretrained to freeze
model.backbone.bottom_up.stem.norm = "GN"
model.backbone.bottom_up.stages.norm = "GN"
model.backbone.bottom_up.stages.stride_in_1x1 = False
model.backbone.norm = "GN"
model.proposal_generator.anchor_generator.sizes = [[8], [16], [32], [64], [128]]  # 8-80 px nuclei
model.proposal_generator.pre_nms_topk = (2000, 2000)
model.proposal_generator.post_nms_topk = (2000, 1500)  # crowded images hold up to 375 nuclei
model.roi_heads.num_classes = 1
model.roi_heads.batch_size_per_image = 512
model.roi_heads.box_head.conv_dims = [256, 256, 256, 256]   # 4 convs + 1 fc, with GroupNorm
model.roi_heads.box_head.fc_dims = [1024]
model.roi_heads.box_head.conv_norm = "GN"
model.roi_heads.box_predictor.test_topk_per_image = 500      # >= 400 nuclei per image
model.roi_heads.mask_head.conv_norm = "GN"

# --- data: large-scale jitter at native pixel size -----------------------------------------------
image_size = 512
dataloader = get_config("common/data/coco.py").dataloader
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="dsb2018_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeScale)(min_scale=0.5, max_scale=2.0, target_height=image_size,
                             target_width=image_size),
            L(T.FixedSizeCrop)(crop_size=(image_size, image_size)),
            L(T.RandomFlip)(horizontal=True),
            L(T.RandomFlip)(horizontal=False, vertical=True),
            L(RandomRot90)(),
        ],
        image_format="BGR",
        use_instance_mask=True,
        instance_mask_format="bitmask",              # masks are stored as RLE
        recompute_boxes=True,                        # crops cut nuclei: boxes from the masks
    ),
    total_batch_size=16,
    num_workers=4,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="dsb2018_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=608, max_size=1333)],
        image_format="BGR",
    ),
    num_workers=4,
)
dataloader.evaluator = L(NucleiEvaluator)(    # box AP, mask AP and the nuclei metrics
    dataset_name="${..test.dataset.names}",
    output_dir="${...train.output_dir}",
    score_threshold=0.5,
    max_dets=1000,
    matching_thresholds=[0.5, 0.6, 0.7, 0.8, 0.9],   # StarDist's matching table
)

# --- solver: the GPU recipe of Base-Nuclei.yaml ---------------------------------------------------
optimizer = get_config("common/optim.py").SGD
optimizer.lr = 0.02                                  # for 16 images per step
train = get_config("common/train.py").train
train.max_iter = 2000
train.init_checkpoint = ""                           # from scratch: nothing is downloaded
train.output_dir = "./output/lazy_maskrcnn_R50_FPN"
train.amp.enabled = on_gpu                           # float16 autocast on a GPU only
train.device = "cuda" if on_gpu else "cpu"
train.checkpointer.period = 500
train.eval_period = 1000
lr_multiplier = L(WarmupParamScheduler)(     # in fractions of training: fits any train.max_iter
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[1500, 1800], num_updates=2000
    ),
    warmup_length=200 / 2000,
    warmup_factor=0.001,
)
