"""Mask R-CNN++ configs by name, like ``detectron2.model_zoo``: they ship inside the package."""
import os

from detectron2.modeling import build_model

from .checkpoint import load_weights
from .config_loader import build_cfg
from .errors import UserInputError, did_you_mean
from .lazy import build_lazy_model, is_lazy_config, load_lazy_config

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def list_configs():
    """Names of the shipped configs: ``maskrcnnpp_R50.yaml`` (yacs) and ``lazy/maskrcnnpp_R50.py``
    (LazyConfig)."""
    lazy = os.path.join(CONFIG_DIR, "lazy")
    return sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml")) + sorted(
        f"lazy/{f}" for f in os.listdir(lazy) if f.endswith(".py") and not f.startswith("_"))


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
    """A detectron2 CfgNode for a shipped YAML config, with Mask R-CNN++ keys added, or the
    LazyConfig of a shipped ``lazy/*.py`` one.

    No trained weights are published yet: ``trained=True`` raises instead of silently
    returning a randomly initialised model.
    """
    if trained:
        raise UserInputError(
            "No trained Mask R-CNN++ weights are published. Train one with tools/train_net.py "
            "and load it with MODEL.WEIGHTS=path/to/model_final.pth."
        )
    if is_lazy_config(config_path):
        return load_lazy_config(get_config_file(config_path))
    return build_cfg(get_config_file(config_path))


def get(config_path, trained=False, device=None):
    """Build the model of a shipped YAML config (on ``device``, default the config's), in eval
    mode; a LazyConfig's model is built the same way."""
    cfg = get_config(config_path, trained=trained)
    if is_lazy_config(config_path):
        return build_lazy_model(cfg, device).eval()
    if device is not None:
        cfg.MODEL.DEVICE = device
    model = build_model(cfg)
    load_weights(cfg, model)
    return model.eval()
