"""What a model costs: parameters and FLOPs of the neck, the backbone and the whole model.

FLOPs are fvcore's count, where one multiply-add is one flop, for one ``size`` x ``size`` image in
inference. The neck is the backbone minus its ``bottom_up`` ResNet, for detectron2's FPN and
DenseFPN alike. The whole model's count also depends on how many proposals and detections
reach the ROI heads, which with random weights varies a little between configs; the neck and
backbone counts do not depend on the data.
"""

import warnings

import fvcore.nn
import torch
from detectron2.modeling import build_model
from detectron2.utils.analysis import FlopCountAnalysis

__all__ = ["count_parameters", "measure_cost", "describe_neck", "cost_rows", "COST_RATIO_KEYS"]

# The costs also given as a ratio to the first config.
COST_RATIO_KEYS = ("neck_flops", "backbone_flops", "model_params", "model_flops")


def count_parameters(module):
    """Parameters of ``module`` and its children (fvcore's parameter_count)."""
    return fvcore.nn.parameter_count(module)[""]


def _silenced(analysis):
    """An fvcore analysis without its per-op warnings (elementwise ops are not counted anyway)."""
    return analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)


def measure_cost(cfg, size=512):
    """Parameters and inference FLOPs of ``cfg``'s model on one ``size`` x ``size`` image."""
    torch.manual_seed(0)  # same weights and image for every config: comparable proposal counts
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, size, size), dtype=torch.float32, device=model.device)
    # Tracing warns about every shape-dependent Python branch of the heads: noise for a count.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = model.preprocess_image([{"image": image}]).tensor
        backbone = _silenced(fvcore.nn.FlopCountAnalysis(model.backbone, batch))
        backbone_flops, bottom_up_flops = backbone.total(), backbone.by_module()["bottom_up"]
        model_flops = _silenced(FlopCountAnalysis(model, [{"image": image}])).total()
    backbone_params = count_parameters(model.backbone)
    return {
        "neck_params": backbone_params - count_parameters(model.backbone.bottom_up),
        "neck_flops": backbone_flops - bottom_up_flops,
        "backbone_params": backbone_params,
        "backbone_flops": backbone_flops,
        "model_params": count_parameters(model),
        "model_flops": model_flops,
    }


def describe_neck(cfg):
    """A short name for the neck of ``cfg``, e.g. "dense concat+reduce_conv3x3 w128"."""
    if not cfg.MODEL.BACKBONE.NAME.endswith("dense_fpn_backbone"):  # R-CNN's or RetinaNet's
        return cfg.MODEL.BACKBONE.NAME
    dense = cfg.MODEL.DENSE_FPN
    name = f"{dense.TOPOLOGY} {dense.FUSION}+{dense.NODE_BLOCK} w{dense.NODE_WIDTH}"
    if dense.UPSAMPLE != "nearest":
        name += f" {dense.UPSAMPLE}"
    if dense.INFERENCE_DEPTH:
        name += f" depth {dense.INFERENCE_DEPTH}"
    if cfg.MODEL.META_ARCHITECTURE == "DeeplySupervisedRCNN":
        name += f" supervised at {list(dense.DEEP_SUPERVISION_DEPTHS)}"
    return name


def cost_rows(named_cfgs, size=512, progress=None):
    """One row per (name, config): the neck's description, :func:`measure_cost` and the ratios of
    COST_RATIO_KEYS to the first config. ``progress``: a tqdm-like object, or None."""
    rows = []
    for name, cfg in named_cfgs:
        if progress is not None:
            progress.set_postfix_str(name)
        rows.append({"config": name, "neck": describe_neck(cfg), **measure_cost(cfg, size)})
        if progress is not None:
            progress.update()
    for row in rows:
        for key in COST_RATIO_KEYS:
            row[f"{key}_ratio"] = row[key] / rows[0][key]
    return rows
