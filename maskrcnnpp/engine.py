"""Config loading with clear errors, input checks, and the Trainer that every tool shares."""
import logging
import os
import re

import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import DefaultTrainer, defaults
from detectron2.utils import comm
from detectron2.utils.logger import log_first_n

from .config import add_maskrcnnpp_config
from .data import register_nuclei_coco
from .data.augment import build_nuclei_train_mapper
from .errors import UserInputError, did_you_mean
from .evaluation import NucleiEvaluator
from .inference.predict import PredictorModel, read_bgr
from .machine import cuda_unavailable_reason

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
    if cfg.MODEL.ROI_MASK_HEAD.LOSS != "BCE" and cfg.MODEL.ROI_MASK_HEAD.NAME != "HybridLossMaskHead":
        raise UserInputError(
            f"MODEL.ROI_MASK_HEAD.LOSS={cfg.MODEL.ROI_MASK_HEAD.LOSS!r} is computed by "
            f"HybridLossMaskHead, not {cfg.MODEL.ROI_MASK_HEAD.NAME!r}: set "
            "MODEL.ROI_MASK_HEAD.NAME HybridLossMaskHead (same layers and weights)."
        )
    register_config_datasets(cfg)
    return cfg


def _file_sets(config_file, key):
    """Whether ``config_file`` (or a ``_BASE_`` it builds on) sets ``key`` itself."""
    node = CfgNode.load_yaml_with_base(config_file, allow_unsafe=True)
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


def data_loader_workers(cfg):
    """DATALOADER.NUM_WORKERS; -1 means the CPU cores this process may use, shared with the other
    training processes of this machine, at most 8 (beyond that, workers rarely feed a GPU faster)."""
    if cfg.DATALOADER.NUM_WORKERS >= 0:
        return cfg.DATALOADER.NUM_WORKERS
    return max(1, min(8, len(os.sched_getaffinity(0)) // comm.get_local_size()))


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with nuclei augmentations, and an evaluation of the model as
    tools/predict.py runs it, scored by NucleiEvaluator (box and mask AP, nuclei metrics)."""

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(
            cfg, mapper=build_nuclei_train_mapper(cfg), num_workers=data_loader_workers(cfg)
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """Decoded images for :class:`PredictorModel`, which prepares them as predict.py does."""
        return build_detection_test_loader(
            cfg, dataset_name, mapper=read_bgr, num_workers=data_loader_workers(cfg)
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's evaluation, with the model run as tools/predict.py runs it: whole images,
        or overlap-tile inference for those larger than TEST.TILE.SIZE."""
        return super().test(cfg, PredictorModel(cfg, model), evaluators)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """Box AP, mask AP and the nuclei metrics in one pass (see NucleiEvaluator)."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return NucleiEvaluator(cfg, dataset_name, output_folder)
