"""Mask R-CNN++'s config keys: ``add_maskrcnnpp_config`` adds each, with its default and a comment,
to a detectron2 CfgNode (as PointRend's config.py does); building a config is config_loader.py's job."""
from detectron2.config import CfgNode as CN
from detectron2.projects.point_rend import add_pointrend_config


def add_maskrcnnpp_config(cfg):
    """Add every Mask R-CNN++ key to ``cfg`` (a detectron2 CfgNode), with its default, and
    detectron2's PointRend keys (``add_pointrend_config``: MODEL.POINT_HEAD, the coarse mask
    head's ROI_MASK_HEAD.FC_DIM...), so the pointrend_*.yaml configs load like any other."""
    add_pointrend_config(cfg)
    # The pyramid neck built by the dense backbone builders (see maskrcnnpp/modeling).
    cfg.MODEL.DENSE_FPN = CN()
    # Wiring of the nested grid: "fpn", "nested" (UNet+), "dense" (UNet++), "fullscale" (UNet 3+).
    cfg.MODEL.DENSE_FPN.TOPOLOGY = "dense"
    # How a node merges its inputs: "concat" (UNet++) or "sum" (FusionNet).
    cfg.MODEL.DENSE_FPN.FUSION = "concat"
    # Block applied after fusion: "conv3x3", "reduce_conv3x3" (1x1 then 3x3), "residual" (FusionNet)
    # or "identity" (FPN's plain merge; needs FUSION "sum").
    cfg.MODEL.DENSE_FPN.NODE_BLOCK = "reduce_conv3x3"
    # Channels of every grid node (laterals included); outputs are projected to FPN.OUT_CHANNELS.
    cfg.MODEL.DENSE_FPN.NODE_WIDTH = 128
    # Normalization in lateral, node and output convs ("" for none, "GN", "BN", "SyncBN", ...).
    cfg.MODEL.DENSE_FPN.NORM = "GN"
    # Upsampling of coarser nodes: "nearest", "bilinear" or "transposed" (learned).
    cfg.MODEL.DENSE_FPN.UPSAMPLE = "nearest"
    # Pyramid depth used at inference (UNet++ pruning); 0 means the full depth.
    cfg.MODEL.DENSE_FPN.INFERENCE_DEPTH = 0
    # Depths whose pyramids get the detection and mask losses in training (deep supervision), e.g.
    # [1, 2, 3]; read by META_ARCHITECTURE "DeeplySupervisedRCNN".
    cfg.MODEL.DENSE_FPN.DEEP_SUPERVISION_DEPTHS = []

    # How MODEL.WEIGHTS and checkpoints load (maskrcnnpp/checkpoint.py).
    cfg.MODEL.LOAD = CN()
    # Allow weights that fit only part of the model (e.g. FPN weights into the dense neck); ImageNet
    # weights of the whole bottom-up ResNet load without it.
    cfg.MODEL.LOAD.PARTIAL = False
    # Allow .pkl weights that the restricted unpickler refuses (detectron2's and Detectron's arrays
    # load without it): such a pickle runs whatever code it contains; only for trusted files.
    cfg.MODEL.LOAD.ALLOW_PICKLE = False

    # Mask head loss (HybridLossMaskHead): "BCE" (detectron2's) or "BCE+Dice" (UNet++'s hybrid).
    cfg.MODEL.ROI_MASK_HEAD.LOSS = "BCE"
    # Weight of the soft Dice term when LOSS is "BCE+Dice" (UNet++: 1.0, the two terms alike).
    cfg.MODEL.ROI_MASK_HEAD.DICE_WEIGHT = 1.0

    # Extra COCO nuclei datasets to register, each [name, json_file, image_root]; then name them in
    # DATASETS.TRAIN / DATASETS.TEST.
    cfg.DATASETS.COCO_NUCLEI = []

    # NucleiEvaluator (maskrcnnpp/evaluation); also the defaults of tools/evaluate.py.
    cfg.TEST.NUCLEI = CN()
    # Predictions scoring at least this form the instance maps behind IoU, Dice, DSB score, AJI, PQ.
    cfg.TEST.NUCLEI.SCORE_THRESHOLD = 0.5
    # COCO maxDets for mask AP (masks kept per image); COCO's 100 truncates crowded images.
    cfg.TEST.NUCLEI.MAX_DETS = 1000
    # IoU thresholds (each in (0, 1)) of StarDist's matching table: precision, recall, F1, accuracy.
    cfg.TEST.NUCLEI.MATCHING_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)

    # Nuclei training augmentations (maskrcnnpp/data/augment.py), after detectron2's own.
    cfg.INPUT.NUCLEI_AUG = CN()
    # Applied in order; any of scaled_crop hflip vflip rot90 scale brightness contrast gamma stain
    # elastic. With INPUT.MIN_SIZE_TRAIN (0,), "scaled_crop" trains at native pixel size.
    cfg.INPUT.NUCLEI_AUG.NAMES = []
    # "scale", "scaled_crop": range of the random zoom factor (applied after detectron2's resize).
    cfg.INPUT.NUCLEI_AUG.SCALE_RANGE = (0.8, 1.25)
    # "scaled_crop": side in pixels of the training crop, taken after the zoom.
    cfg.INPUT.NUCLEI_AUG.CROP_SIZE = 256
    # "brightness": range of the intensity factor (detectron2 RandomBrightness).
    cfg.INPUT.NUCLEI_AUG.BRIGHTNESS_RANGE = (0.8, 1.2)
    # "contrast": range of the contrast factor around the image mean (detectron2 RandomContrast).
    cfg.INPUT.NUCLEI_AUG.CONTRAST_RANGE = (0.8, 1.2)
    # "gamma": range of the gamma exponent, drawn log-uniformly.
    cfg.INPUT.NUCLEI_AUG.GAMMA_RANGE = (0.8, 1.25)
    # "stain": spread of the H&E-DAB stain jitter (alpha in 1 +- sigma, beta in +- sigma).
    cfg.INPUT.NUCLEI_AUG.STAIN_SIGMA = 0.05
    # "elastic": control points per side of the coarse displacement grid (U-Net: 3).
    cfg.INPUT.NUCLEI_AUG.ELASTIC_GRID = 3
    # "elastic": std of the control-point displacements in pixels (U-Net: 10).
    cfg.INPUT.NUCLEI_AUG.ELASTIC_SIGMA = 10.0

    # Overlap-tile inference for large images (maskrcnnpp/inference/tiling.py).
    cfg.TEST.TILE = CN()
    # Tile side in input pixels; each tile is resized like a whole image (INPUT.MIN/MAX_SIZE_TEST).
    cfg.TEST.TILE.SIZE = 640
    # Overlap of neighbouring tiles; keep it >= the largest nucleus + 16 px (DSB2018: 139 px).
    cfg.TEST.TILE.OVERLAP = 160
    # Tiles per model call; the memory of each call grows with this.
    cfg.TEST.TILE.BATCH_SIZE = 4
    # Image borders: "mirror" (U-Net: mirror-pad by OVERLAP/2) or "shift" (edge tiles moved inside).
    cfg.TEST.TILE.BORDER = "mirror"
