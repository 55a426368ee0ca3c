"""Config loading with clear errors, input checks, and the Trainer that every tool shares."""
import logging
import os
import re

import torch
import yaml
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.engine import DefaultTrainer, defaults
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from detectron2.utils import comm
from detectron2.utils.logger import log_first_n

from .config import add_maskrcnnpp_config
from .data import register_nuclei_coco
from .data.augment import build_nuclei_train_mapper
from .errors import UserInputError, did_you_mean
from .evaluation import NucleiEvaluator

logger = logging.getLogger(__name__)


def _config_keys(node, prefix=""):
    """Every full key ("MODEL.RPN.NMS_THRESH") of a CfgNode, to suggest the intended one."""
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _config_keys(value, prefix + key + ".")
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
            f"{source} sets unknown config key {key}.{did_you_mean(key, _config_keys(cfg))} "
            "Check its spelling against detectron2's and Mask R-CNN++'s keys "
            "(maskrcnnpp/config.py)."
        ) from None


def build_cfg(config_file, opts=()):
    """detectron2 config with Mask R-CNN++ keys, ``config_file`` and ``opts`` merged in.

    Datasets named in ``DATASETS.COCO_NUCLEI`` are registered, and a CUDA device is replaced by the
    CPU when no GPU is present, so every config runs on a laptop too.
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
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        log_first_n(logging.WARNING, "No GPU available: running on the CPU (MODEL.DEVICE=cpu).")
        cfg.MODEL.DEVICE = "cpu"
    register_config_datasets(cfg)
    return cfg


def parse_config_spec(spec):
    """``path.yaml`` or a variant of it, ``path.yaml+KEY=VALUE+...`` -> (path, override list).

    Variants let one report price a design choice (e.g. ``+MODEL.DENSE_FPN.NODE_WIDTH=256``)
    without a config file per choice.
    """
    path, *overrides = spec.split("+")
    opts = []
    for override in overrides:
        key, separator, value = override.partition("=")
        if not separator or not key:
            raise UserInputError(
                f"{spec!r}: write a config variant as path.yaml+KEY=VALUE, e.g. "
                "configs/maskrcnnpp_R50.yaml+MODEL.DENSE_FPN.NODE_WIDTH=256."
            )
        opts += [key, value]
    return path, opts


def register_config_datasets(cfg):
    """Register each ``[name, json_file, image_root]`` of DATASETS.COCO_NUCLEI (once per process)."""
    for entry in cfg.DATASETS.COCO_NUCLEI:
        if len(entry) != 3:
            raise UserInputError(
                f"DATASETS.COCO_NUCLEI entry {list(entry)} must be [name, json_file, image_root]."
            )
        name, json_file, image_root = entry
        if name in DatasetCatalog.list():
            if MetadataCatalog.get(name).get("json_file") == json_file:
                continue
            raise UserInputError(
                f"Dataset name {name!r} in DATASETS.COCO_NUCLEI is already registered; pick another name."
            )
        register_nuclei_coco(name, json_file, image_root)


def check_datasets(cfg, names):
    """Fail early, in the launching process, if a dataset is unknown, missing or malformed.

    Loading each dataset once also generates the synthetic set before workers start.
    """
    registered = DatasetCatalog.list()
    for name in names:
        if name not in registered:
            nuclei = sorted(n for n in registered if "nuclei" in n or "dsb" in n)
            raise UserInputError(
                f"Dataset {name!r} is not registered.{did_you_mean(name, registered)} "
                f"Built-in nuclei datasets: {nuclei}. Register your own COCO set with "
                "DATASETS.COCO_NUCLEI \"[['NAME', 'path/to/annotations.json', 'path/to/images']]\"."
            )
        if not DatasetCatalog.get(name):
            raise UserInputError(f"Dataset {name!r} holds no images.")


def split_overrides(argv):
    """Split a command line into (tool options, config overrides ``KEY VALUE ...``).

    The overrides start at the first config key: a full key (``SEED``) or a dotted name in one of
    the config's sections (``SOLVER.MAX_ITER``, misspelt ones included, for build_cfg to explain),
    so options taking several values (``--configs A.yaml B.yaml``) can precede them without
    swallowing them, while files such as ``SCAN.TIF`` stay options.
    """
    cfg = get_cfg()
    add_maskrcnnpp_config(cfg)
    keys = set(_config_keys(cfg))
    sections = {name for name, value in cfg.items() if isinstance(value, dict)}
    is_key = [token in keys or ("." in token and token.split(".")[0] in sections)
              for token in argv]
    start = is_key.index(True) if any(is_key) else len(argv)
    options, overrides = list(argv[:start]), list(argv[start:])
    misplaced = [token for token in overrides[::2] if token.startswith("--")]
    if misplaced:
        raise UserInputError(
            f"Option {misplaced[0]} comes after the config overrides; put KEY VALUE pairs last."
        )
    return options, overrides


def parse_with_overrides(parser, argv):
    """Parse a tool's command line; trailing config overrides ``KEY VALUE ...`` go to ``args.opts``."""
    options, overrides = split_overrides(argv)
    args = parser.parse_args(options)
    args.opts = overrides
    return args


def _create_ddp_model(model, **kwargs):
    """detectron2 gives DDP ``device_ids=[local_rank]`` even for CPU models, which DDP rejects."""
    if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return _detectron2_create_ddp_model(model, **kwargs)


# DefaultTrainer looks create_ddp_model up in its module; route it through the CPU-aware version so
# that multi-process training on CPUs (gloo) works as on GPUs (NCCL).
_detectron2_create_ddp_model = defaults.create_ddp_model
defaults.create_ddp_model = _create_ddp_model


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with nuclei augmentations and nuclei evaluation beside COCO's."""

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=build_nuclei_train_mapper(cfg))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return DatasetEvaluators(
            [
                COCOEvaluator(
                    dataset_name,
                    tasks=("bbox", "segm"),
                    output_dir=output_folder,
                    max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
                ),
                NucleiEvaluator(cfg, dataset_name, output_folder),
            ]
        )
