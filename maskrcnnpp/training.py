"""Training: detectron2's DefaultTrainer with the nuclei data pipeline and evaluation, safe
checkpoints, exact resumption, one line for a diverging run, and multi-process training on CPUs."""
import contextlib
import logging
import os
import random
import shutil
import weakref

import numpy as np
import torch

from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, HookBase, SimpleTrainer, defaults
from detectron2.utils import comm

from .checkpoint import NucleiCheckpointer
from .device import autocast_dtype
from .data.augment import build_nuclei_train_mapper
from .errors import TrainingDiverged
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


def clear_training_run(output_dir):
    """Remove what a training run wrote into ``output_dir`` (checkpoints, logs, evaluation), so a
    new run started there (train_net.py --overwrite) leaves no file of the one it replaces."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name == "inference" and os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.isfile(path) and (
                name in ("last_checkpoint", "metrics.json", "config.yaml")
                or (name.startswith("model_") and name.endswith(".pth"))
                or name.startswith(("events.out.tfevents.", "log.txt"))):
            os.remove(path)


def random_states():
    """The random states of torch (CPU), NumPy and Python, as plain data a checkpoint can hold."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_random_states(states):
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(states["python"])


@contextlib.contextmanager
def preserved_random_states():
    """Run a block without changing what the random generators give afterwards."""
    states = random_states()
    try:
        yield
    finally:
        set_random_states(states)


class ExactResume(HookBase):
    """A resumed run continues as if it had never stopped, where training is deterministic (e.g.
    on the CPU): checkpoints carry the random states of torch, NumPy and Python, and on resuming
    the data loader is replayed to the resumed iteration (the sampler's order, the augmentation
    draws) before those states are restored. Without this, detectron2 restarts the data order and
    the random streams from the seed, so a resumed run trains on other batches."""

    def __init__(self):
        self._resumed_states = None

    def state_dict(self):
        return {"random_states": random_states()}

    def load_state_dict(self, state_dict):
        self._resumed_states = state_dict["random_states"]

    def before_train(self):
        if self._resumed_states is None:
            return
        batches = self.trainer._trainer._data_loader_iter
        # minutes on a CPU (12,000 batches: 5 minutes on 2 cores) in which nothing else is logged
        logging.getLogger(__name__).info(
            f"Resuming at iteration {self.trainer.start_iter}: replaying the data loader's first "
            f"{self.trainer.start_iter} batches (loading and augmenting, no training) so that the "
            "run goes on with the batches it would have had")
        for _ in range(self.trainer.start_iter):
            next(batches)
        set_random_states(self._resumed_states)


# Set by tools/compare.py --jobs N for the N trainings it runs at once on this machine.
CONCURRENT_RUNS_ENV = "MASKRCNNPP_CONCURRENT_RUNS"


def concurrent_run_env(jobs):
    """The environment of one of ``jobs`` trainings run at once: each is told how many share the
    machine (for its data-loader workers) and gets its share of the cores for torch's threads,
    unless OMP_NUM_THREADS is set. Left on every core, two runs on 2 cores took twice as long
    together as one after the other, their threads spinning against each other (docs/compare.md)."""
    env = {**os.environ, CONCURRENT_RUNS_ENV: str(jobs)}
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // jobs))
    return env


@contextlib.contextmanager
def autocast_forward(module, device_type):
    """Inside this block, ``module``'s forward calls (the model and its losses) run under
    autocast to ``device_type``'s mixed-precision type, and nothing else does: the backward pass
    and optimizer step that follow run outside it, as PyTorch advises."""
    contexts = []

    def enter(module, args):
        contexts.append(torch.autocast(device_type, dtype=autocast_dtype(device_type)))
        contexts[-1].__enter__()

    def leave(module, args, output):
        contexts.pop().__exit__(None, None, None)

    handles = [module.register_forward_pre_hook(enter),
               module.register_forward_hook(leave, always_call=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class BFloat16CPUTrainer(SimpleTrainer):
    """detectron2's training step with the forward pass under bfloat16 autocast on the CPU, where
    detectron2's AMPTrainer (float16, CUDA only) cannot run; bfloat16 needs no gradient scaling."""

    def run_step(self):
        with autocast_forward(self.model, "cpu"):
            super().run_step()


def step_trainer(model, data_loader, optimizer, *, amp, device):
    """The detectron2 trainer for a run's precision: SimpleTrainer in float32, AMPTrainer (float16)
    on a GPU, BFloat16CPUTrainer on a CPU."""
    if not amp:
        return SimpleTrainer(model, data_loader, optimizer)
    cls = BFloat16CPUTrainer if device == "cpu" else AMPTrainer
    return cls(model, data_loader, optimizer)


def data_loader_workers(cfg):
    """DATALOADER.NUM_WORKERS; -1 means the CPU cores this process may use, shared with the other
    processes of this training and with the other runs tools/compare.py --jobs trains at once
    (CONCURRENT_RUNS_ENV), at most 8 (beyond that, workers rarely feed a GPU faster)."""
    if cfg.DATALOADER.NUM_WORKERS >= 0:
        return cfg.DATALOADER.NUM_WORKERS
    sharing = comm.get_local_size() * max(1, int(os.environ.get(CONCURRENT_RUNS_ENV, "1")))
    return max(1, min(8, len(os.sched_getaffinity(0)) // sharing))


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with nuclei augmentations, an evaluation of the model as
    tools/predict.py runs it, scored by NucleiEvaluator (box and mask AP, nuclei metrics), and
    checkpoints that load safely and are written whole (NucleiCheckpointer), and mixed precision
    on the CPU in bfloat16 (SOLVER.AMP.ENABLED; see step_trainer)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        step = self._trainer  # DefaultTrainer's choice knows CUDA's float16 only
        self._trainer = step_trainer(step.model, step.data_loader, step.optimizer,
                                     amp=cfg.SOLVER.AMP.ENABLED, device=cfg.MODEL.DEVICE)

    def build_hooks(self):
        # DefaultTrainer made its checkpointer just before; replace it before the hooks take it.
        self.checkpointer = NucleiCheckpointer.from_config(
            self.cfg, self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        return super().build_hooks() + [ExactResume()]

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError:
            amp = "; or train in float32 (SOLVER.AMP.ENABLED False)" if self.cfg.SOLVER.AMP.ENABLED else ""
            raise TrainingDiverged.at(
                self.iter, f"Lower SOLVER.BASE_LR (now {self.cfg.SOLVER.BASE_LR:g}) or lengthen "
                f"SOLVER.WARMUP_ITERS (now {self.cfg.SOLVER.WARMUP_ITERS}){amp}"
            ) from None

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
        with preserved_random_states():  # evaluating does not change the training that follows
            return super().test(cfg, PredictorModel(cfg, model), evaluators)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """Box AP, mask AP and the nuclei metrics in one pass (see NucleiEvaluator)."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return NucleiEvaluator(cfg, dataset_name, output_folder)
