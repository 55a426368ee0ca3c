"""Training: detectron2's DefaultTrainer with the nuclei data pipeline and evaluation, and
multi-process training on CPUs."""
import os

from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, defaults
from detectron2.utils import comm

from .data.augment import build_nuclei_train_mapper
from .evaluation import NucleiEvaluator
from .inference.predict import PredictorModel, read_bgr


def enable_cpu_ddp():
    """Let DefaultTrainer wrap CPU models for several processes (gloo) as it does GPU ones (NCCL).

    detectron2's ``create_ddp_model`` gives DistributedDataParallel ``device_ids=[local_rank]``
    even for a CPU model, which DDP rejects; DefaultTrainer looks the function up in its module,
    so that name is pointed at a version that leaves ``device_ids`` out for CPU models. Call it in
    each training process before building the Trainer.
    """
    if defaults.create_ddp_model is not _create_cpu_aware_ddp_model:
        _create_cpu_aware_ddp_model.original = defaults.create_ddp_model
        defaults.create_ddp_model = _create_cpu_aware_ddp_model


def _create_cpu_aware_ddp_model(model, **kwargs):
    if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return _create_cpu_aware_ddp_model.original(model, **kwargs)


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
