"""Mask R-CNN++ configs by name, like ``detectron2.model_zoo``: they ship inside the package."""
import os

from detectron2.modeling import build_model

from .checkpoint import load_weights
from .config import build_cfg
from .errors import UserInputError, did_you_mean

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def list_configs():
    """Names of the shipped configs, e.g. ``maskrcnnpp_R50.yaml``."""
    return sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml"))


def get_config_file(config_path):
    """Absolute path of a shipped config, given its name (``maskrcnnpp_R50.yaml``)."""
    path = os.path.join(CONFIG_DIR, config_path)
    if not os.path.isfile(path):
        raise UserInputError(
            f"{config_path!r} is not a Mask R-CNN++ config.{did_you_mean(config_path, list_configs())} "
            f"Available: {', '.join(list_configs())}."
        )
    return path


def get_config(config_path, trained=False):
    """A detectron2 CfgNode for a shipped config, with Mask R-CNN++ keys added.

    No trained weights are published yet: ``trained=True`` raises instead of silently
    returning a randomly initialised model.
    """
    if trained:
        raise UserInputError(
            "No trained Mask R-CNN++ weights are published. Train one with tools/train_net.py "
            "and load it with MODEL.WEIGHTS=path/to/model_final.pth."
        )
    return build_cfg(get_config_file(config_path))


def get(config_path, trained=False, device=None):
    """Build the model of a shipped config (on ``device``, default the config's), in eval mode."""
    cfg = get_config(config_path, trained=trained)
    if device is not None:
        cfg.MODEL.DEVICE = device
    model = build_model(cfg)
    load_weights(cfg, model)
    return model.eval()
