"""Building a config from a file and overrides, with one clear error per mistake, checked against
this machine (device.py) and with the datasets it names registered."""
import os
import re

import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .config import add_maskrcnnpp_config
from .data.datasets import register_config_datasets
from .device import resolve_device
from .errors import UserInputError, did_you_mean
from .modeling.mask_head import HybridLossMaskHead


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
