"""Mask R-CNN++'s config: the keys it adds to detectron2's defaults, and building a config from
a file and overrides with one clear error per mistake, checked against this machine."""
import logging
import os
import re

import torch
import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.projects.point_rend import add_pointrend_config
from detectron2.utils.logger import log_first_n

from .data.datasets import register_config_datasets
from .errors import UserInputError, did_you_mean
from .machine import cuda_unavailable_reason
from .modeling.mask_head import HybridLossMaskHead


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
    # Allow weights that fit only part of the model (fine-tuning from FPN or ImageNet weights).
    cfg.MODEL.LOAD.PARTIAL = False
    # Allow .pkl weights: a pickle runs whatever code it contains when loaded; only for trusted files.
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
    # Tiles per model call; memory grows with this, not with the image.
    cfg.TEST.TILE.BATCH_SIZE = 4
    # Image borders: "mirror" (U-Net: mirror-pad by OVERLAP/2) or "shift" (edge tiles moved inside).
    cfg.TEST.TILE.BORDER = "mirror"


def config_keys(node, prefix=""):
    """Every full key ("MODEL.RPN.NMS_THRESH") of a CfgNode, to suggest the intended one."""
    for key, value in node.items():
        if isinstance(value, dict):
            yield from config_keys(value, prefix + key + ".")
        else:
            yield prefix + key


def _merge_or_explain(cfg, merge, source):
    """Run one yacs merge, turning its KeyError/ValueError into a UserInputError that names the fix."""
    try:
        merge()
    except yaml.YAMLError as e:
        raise UserInputError(f"{source} is not valid YAML: {e}") from None
    except (KeyError, ValueError, AssertionError) as e:
        message = str(e).strip("'\"")
        match = re.search(r"Non-existent (?:config )?key: (\S+)", message)
        if not match:
            raise UserInputError(f"{source}: {message}") from None
        key = match.group(1)
        raise UserInputError(
            f"{source} sets unknown config key {key}.{did_you_mean(key, config_keys(cfg))} "
            "Check its spelling against detectron2's and Mask R-CNN++'s keys "
            "(maskrcnnpp/config.py)."
        ) from None


def build_cfg(config_file, opts=()):
    """detectron2 config with Mask R-CNN++ keys, ``config_file`` and ``opts`` merged in.

    Datasets named in ``DATASETS.COCO_NUCLEI`` are registered, and the device and precision are
    checked against this machine (:func:`resolve_device`), so every config runs on a laptop too.
    """
    if not os.path.isfile(config_file):
        raise UserInputError(
            f"Config file {config_file} does not exist. Pass a YAML file such as "
            "configs/maskrcnnpp_R50.yaml, or list the shipped ones with "
            "`python -c 'import maskrcnnpp; print(maskrcnnpp.model_zoo.list_configs())'`."
        )
    cfg = get_cfg()
    add_maskrcnnpp_config(cfg)
    _merge_or_explain(cfg, lambda: cfg.merge_from_file(config_file), f"Config file {config_file}")
    _merge_or_explain(cfg, lambda: cfg.merge_from_list(list(opts)), "The command line")
    typed = list(opts)[::2]
    resolve_device(
        cfg,
        device_chosen="MODEL.DEVICE" in typed or _file_sets(config_file, "MODEL.DEVICE"),
        amp_typed="SOLVER.AMP.ENABLED" in typed,
    )
    if cfg.DATALOADER.NUM_WORKERS < -1:
        raise UserInputError(
            f"DATALOADER.NUM_WORKERS={cfg.DATALOADER.NUM_WORKERS}: use 0 (load in the training "
            "process), a number of worker processes, or -1 (one per CPU core, up to 8)."
        )
    if cfg.MODEL.ROI_MASK_HEAD.LOSS != "BCE" and cfg.MODEL.ROI_MASK_HEAD.NAME != HybridLossMaskHead.__name__:
        raise UserInputError(
            f"MODEL.ROI_MASK_HEAD.LOSS={cfg.MODEL.ROI_MASK_HEAD.LOSS!r} is computed by "
            f"HybridLossMaskHead, not {cfg.MODEL.ROI_MASK_HEAD.NAME!r}: set "
            "MODEL.ROI_MASK_HEAD.NAME HybridLossMaskHead (same layers and weights)."
        )
    register_config_datasets(cfg)
    return cfg


def _file_sets(config_file, key):
    """Whether ``config_file`` (or a ``_BASE_`` it builds on) sets ``key`` itself."""
    node = CN.load_yaml_with_base(config_file, allow_unsafe=True)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def resolve_device(cfg, device_chosen, amp_typed):
    """Check MODEL.DEVICE and SOLVER.AMP.ENABLED against this machine, in place.

    A CUDA device that the user chose (command line or config file) without a usable GPU is an
    error that says why (no GPU, or one that this torch build cannot use); detectron2's default
    device falls back to the CPU. Mixed precision (float16 autocast) runs on CUDA only: on the CPU
    a config file's AMP is switched off, while AMP typed on the command line is an error.
    """
    device = cfg.MODEL.DEVICE
    fell_back = False
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            if device_chosen:
                raise UserInputError(
                    f"MODEL.DEVICE={device!r} needs a GPU, but {cuda_unavailable_reason(torch)}. "
                    "To run on the CPU, set MODEL.DEVICE cpu."
                )
            cfg.MODEL.DEVICE = "cpu"
            fell_back = True
        elif device != "cuda":
            index = device.partition(":")[2]
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise UserInputError(
                    f"MODEL.DEVICE={device!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                    f"cuda:0 to cuda:{torch.cuda.device_count() - 1}; use one of them or 'cuda'."
                )
    elif device != "cpu":
        raise UserInputError(f"MODEL.DEVICE={device!r} is not valid; use 'cuda', 'cuda:N' or 'cpu'.")
    amp_dropped = False
    if cfg.SOLVER.AMP.ENABLED and cfg.MODEL.DEVICE == "cpu":
        if amp_typed:
            raise UserInputError(
                "SOLVER.AMP.ENABLED True asks for mixed precision (float16 autocast), which runs on "
                "a GPU only, and this run is on the CPU. Drop the override, or run on a GPU "
                "(MODEL.DEVICE cuda)."
            )
        cfg.SOLVER.AMP.ENABLED = False
        amp_dropped = True
    if fell_back or amp_dropped:
        log_first_n(
            logging.WARNING,
            f"{'No GPU available: running' if fell_back else 'Running'} on the CPU "
            f"(MODEL.DEVICE cpu){' in float32 (SOLVER.AMP.ENABLED False)' if amp_dropped else ''}.",
        )
