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
        raise UserInputError(f"{source} is not valid YAML: {_one_line(e)}") from None
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


def _one_line(error):
    """A YAML error as one line: what is wrong and where (PyYAML spreads it over several)."""
    mark = getattr(error, "problem_mark", None)
    if getattr(error, "problem", None) and mark is not None:
        context = f"{error.context}, " if getattr(error, "context", None) else ""
        return f"{context}{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(error).split())


def _base_path(base, config_file):
    """Where detectron2 looks for a ``_BASE_`` named in ``config_file``: beside it unless absolute
    (or ``~``, or a URL)."""
    base = os.path.expanduser(base) if base.startswith("~") else base
    if base.startswith(("/", "https://", "http://")):
        return base
    return os.path.join(os.path.dirname(config_file), base)


def _check_yaml_files(config_file, including=()):
    """Raise a UserInputError naming the file unless ``config_file`` and every ``_BASE_`` it
    builds on (one path or a list of paths each) is a YAML mapping of config keys that exists and
    does not include itself. The files are only parsed (yaml.compose), not built, so an unsafe tag
    runs nothing here; detectron2 would fail on these with a traceback."""
    chain = [*including, config_file]
    source = f"Config file {config_file}"
    source += f" (the _BASE_ of {including[-1]})" if including else ""
    try:
        with open(config_file) as f:
            node = yaml.compose(f)
    except yaml.YAMLError as e:
        raise UserInputError(f"{source} is not valid YAML: {_one_line(e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserInputError(f"{source} cannot be read: {e}.") from None
    needed = "a config file is a mapping of config keys (KEY: value lines such as 'SEED: 0')"
    if node is None:
        raise UserInputError(f"{source} is empty; {needed}.")
    if isinstance(node, yaml.SequenceNode):
        raise UserInputError(f"{source} holds a list, not a mapping; {needed}.")
    if not isinstance(node, yaml.MappingNode):
        raise UserInputError(
            f"{source} holds the single value {node.value!r}, not a mapping; {needed}."
        )
    bases = [value for key, value in node.value if key.value == "_BASE_"]
    if not bases:
        return
    names = bases[-1].value if isinstance(bases[-1], yaml.SequenceNode) else [bases[-1]]
    for name in names:
        if not isinstance(name, yaml.ScalarNode) or not name.value:
            raise UserInputError(f"{source}: _BASE_ must name a config file (or a list of them).")
        path = _base_path(name.value, config_file)
        if "://" in path:
            continue
        if not os.path.isfile(path):
            raise UserInputError(
                f"{source} has _BASE_ {name.value!r}, but {path} "
                f"{'is a folder' if os.path.isdir(path) else 'does not exist'}. A relative _BASE_ "
                "is read from the folder of the file that names it."
            )
        loop = [os.path.realpath(p) for p in chain]
        if os.path.realpath(path) in loop:
            cycle = " -> ".join([*chain[loop.index(os.path.realpath(path)):], path])
            raise UserInputError(
                f"{source} has _BASE_ {name.value!r}, which closes a loop of includes ({cycle}): "
                "a config cannot build on itself. Remove that _BASE_."
            )
        _check_yaml_files(path, chain)


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
    _check_yaml_files(config_file)
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
