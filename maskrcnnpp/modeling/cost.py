"""What a neck costs: parameters and FLOPs of the neck, the backbone and the whole model.

FLOPs are fvcore's count, where one multiply-add is one flop, for one ``size`` x ``size`` image in
inference. The neck is the backbone minus its ``bottom_up`` ResNet, for detectron2's FPN and
DenseFPN alike. The whole model's count also depends on how many proposals and detections
reach the ROI heads, which with random weights varies a little between configs; the neck and
backbone counts do not depend on the data.
"""

import os
import warnings

import fvcore.nn
import torch
from tabulate import tabulate
from tqdm import tqdm

from detectron2.modeling import build_model
from detectron2.utils.analysis import FlopCountAnalysis

from ..engine import build_cfg, parse_config_spec
from ..errors import UserInputError
from ..io_utils import write_json, write_text

__all__ = [
    "count_parameters",
    "measure_cost",
    "describe_neck",
    "cost_table",
    "format_cost_table",
    "check_report_path",
    "write_cost_table",
]

# (key, column title, scale) of the measured numbers, in table order.
_COLUMNS = [
    ("neck_params", "neck params (M)", 1e6),
    ("neck_flops", "neck GFLOPs", 1e9),
    ("backbone_flops", "backbone GFLOPs", 1e9),
    ("model_params", "model params (M)", 1e6),
    ("model_flops", "model GFLOPs", 1e9),
]
# The numbers also reported as a ratio to the baseline (the 1.3x budgets).
_RATIOS = ["neck_flops", "backbone_flops", "model_params", "model_flops"]


def count_parameters(module):
    return sum(p.numel() for p in module.parameters())


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
    if cfg.MODEL.BACKBONE.NAME != "build_resnet_dense_fpn_backbone":
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


def cost_table(config_files, size=512, baseline=None):
    """One row per config with its costs and their ratios to ``baseline`` (default: the first).

    A baseline that is not among ``config_files`` is measured too and listed first.
    """
    config_files = list(config_files)
    baseline = baseline or config_files[0]
    if baseline not in config_files:
        config_files.insert(0, baseline)
    # A bad config fails before any measuring.
    cfgs = [build_cfg(*parse_config_spec(spec)) for spec in config_files]
    rows = []
    for spec, cfg in zip(tqdm(config_files, desc="measuring", unit="config"), cfgs):
        row = {"config": os.path.basename(spec), "neck": describe_neck(cfg)}
        rows.append({**row, **measure_cost(cfg, size)})
    reference = rows[config_files.index(baseline)]
    for row in rows:
        for key in _RATIOS:
            row[f"{key}_ratio"] = row[key] / reference[key]
    return rows


def format_cost_table(rows):
    """The rows as a Markdown table: costs in millions/billions, ratios to the baseline."""
    headers = ["config", "neck"] + [title for _, title, _ in _COLUMNS]
    headers += [f"{key.replace('_', ' ')} ratio" for key in _RATIOS]
    body = [
        [row["config"], row["neck"]]
        + [f"{row[key] / scale:.2f}" for key, _, scale in _COLUMNS]
        + [f"{row[key + '_ratio']:.2f}x" for key in _RATIOS]
        for row in rows
    ]
    return tabulate(body, headers=headers, tablefmt="pipe")


def check_report_path(path):
    """Raise unless ``path`` names a format the report is written in (.md or .json)."""
    if not path.endswith((".md", ".json")):
        raise UserInputError(f"{path}: the cost report is written as .md or .json; rename it.")


def write_cost_table(rows, path, size):
    """Write the rows to ``path``: Markdown for .md, JSON (with the image size) for .json."""
    check_report_path(path)
    if path.endswith(".md"):
        title = f"Costs at {size}x{size} (fvcore: 1 multiply-add = 1 flop)"
        write_text(f"{title}\n\n{format_cost_table(rows)}\n", path)
    else:
        write_json({"image_size": size, "rows": rows}, path, indent=2)
