"""Speed and memory of Mask R-CNN configs, measured side by side in one process.

Several configs are measured *interleaved*: each repeat runs every model once, round-robin, so
that the noise of a shared machine hits all of them alike, and the report gives ratios to the
first config. Every model sees the same deterministic synthetic scenes
(:func:`maskrcnnpp.data.synthetic.render_scene`), fed at ``image_size`` x ``image_size`` without
test-time resizing. On a GPU, cuDNN picks its fastest algorithms for that one size first
(``cudnn.benchmark``), and ``--amp`` runs the models under autocast: float16 on a GPU, bfloat16
on a CPU that has bfloat16 instructions.

Detections: a model with random weights keeps a random number of detections, and the mask head's
cost grows with it. A config without ``MODEL.WEIGHTS`` is therefore measured with exactly
``detections`` per image (score threshold 0 and box NMS at IoU 1.0, in the ROI heads or
RetinaNet's, ``TEST.DETECTIONS_PER_IMAGE``
= ``detections``); a config with weights keeps its own test settings, as a user would run it.
The detections actually kept are reported either way.

Memory: the peak above what was allocated before one call (:mod:`.memory`), measured after all
timings.
"""

import contextlib
import copy
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import BitMasks, Instances
from detectron2.utils.events import EventStorage

from ..checkpoint import load_weights
from ..data.synthetic import render_scene
from ..device import autocast_dtype, check_amp
from ..errors import UserInputError, check_choice
from ..machine import cuda_unavailable_reason
from ..machine import describe as describe_machine
from ..preflight import check_model
from .cost import measure_cost
from .memory import MEMORY_METHODS, peak_memory_meter

__all__ = ["BenchmarkSettings", "benchmark", "benchmark_cfg", "synthetic_batch", "RATIO_KEYS"]

SCENE_SEED = 2018  # scene i of every benchmark is render_scene(default_rng([SCENE_SEED, i]))

# Measured numbers also given as a ratio to the first config.
RATIO_KEYS = (
    "model_params",
    "model_flops",
    "ms_per_image",
    "images_per_s",
    "train_step_s",
    "train_images_per_s",
    "peak_memory_mb",
    "train_peak_memory_mb",
)

# Device -> (warmup, repeats, train_repeats) where not given. On a 2-core CPU, two R50 configs
# at 512 px take about 9 s per inference and 22 s per training step; GPU timings are short and
# need more calls to settle (allocator, cuDNN algorithm choice).
DEFAULT_REPEATS = {"cpu": (1, 3, 2), "cuda": (10, 50, 20)}


@dataclass
class BenchmarkSettings:
    """How every config of one benchmark is measured."""

    device: str = "cpu"
    image_size: int = 512
    batch_size: int = 1
    amp: bool = False  # autocast: float16 on a GPU, bfloat16 on a CPU with bfloat16 instructions
    warmup: int = None  # untimed calls per model before each timed phase
    repeats: int = None  # timed inference calls per model
    train_repeats: int = None  # timed training steps per model; 0 skips training
    detections: int = 100  # detections per image for models without weights

    def __post_init__(self):
        defaults = DEFAULT_REPEATS.get(self.device, DEFAULT_REPEATS["cpu"])
        for name, default in zip(("warmup", "repeats", "train_repeats"), defaults):
            if getattr(self, name) is None:
                setattr(self, name, default)

    def check(self):
        check_choice("device", self.device, ("cpu", "cuda"))
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UserInputError(
                f"Measuring on device 'cuda' needs a GPU, but {cuda_unavailable_reason(torch)}. "
                "Measure on the CPU (device 'cpu')."
            )
        check_amp(self.amp, self.device, "amp", "device")
        for name, minimum in (("image_size", 32), ("batch_size", 1), ("warmup", 0),
                              ("repeats", 1), ("train_repeats", 0), ("detections", 1)):
            value = getattr(self, name)
            if value < minimum:
                raise UserInputError(f"{name}={value} is too small; use at least {minimum}.")


@dataclass
class _Subject:
    """One config under measurement and what has been measured of it so far."""

    name: str
    cfg: object
    model: torch.nn.Module
    inputs: list
    train_inputs: list
    latencies: list = field(default_factory=list)
    detections: list = field(default_factory=list)
    step_times: list = field(default_factory=list)
    train_model: torch.nn.Module = None  # the training phase's copy, its optimizer and scaler
    optimizer: torch.optim.Optimizer = None
    scaler: torch.amp.GradScaler = None


def benchmark_cfg(cfg, settings):
    """``cfg`` as it is measured: on ``settings.device``, and with a fixed number of detections
    unless it has trained weights (see the module docstring)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = settings.device
    if not cfg.MODEL.WEIGHTS:
        for head in (cfg.MODEL.ROI_HEADS, cfg.MODEL.RETINANET):  # R-CNNs, or RetinaNet
            head.SCORE_THRESH_TEST = 0.0
            head.NMS_THRESH_TEST = 1.0  # no box overlaps more than IoU 1: NMS keeps all
        cfg.TEST.DETECTIONS_PER_IMAGE = settings.detections
    cfg.freeze()
    return cfg


def synthetic_batch(cfg, settings, with_targets):
    """``batch_size`` model inputs of ``image_size`` pixels; ``with_targets`` adds ground truth."""
    size = settings.image_size
    batch = []
    for index in range(settings.batch_size):
        image, labels = render_scene(np.random.default_rng([SCENE_SEED, index]), size, size)
        if cfg.INPUT.FORMAT == "BGR":
            image = image[:, :, ::-1]
        item = {
            "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))).float(),
            "height": size,
            "width": size,
        }
        if with_targets:
            ids = np.unique(labels)[1:]
            masks = BitMasks(torch.as_tensor(labels[None] == ids[:, None, None]))
            instances = Instances((size, size))
            instances.gt_boxes = masks.get_bounding_boxes()
            instances.gt_classes = torch.zeros(len(ids), dtype=torch.int64)
            instances.gt_masks = masks
            item["instances"] = instances
        batch.append(item)
    return batch


def _load_model(cfg):
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        load_weights(cfg, model)
    return model.eval()


def _synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _autocast(settings):
    if settings.amp:
        return torch.autocast(settings.device, dtype=autocast_dtype(settings.device))
    return contextlib.nullcontext()


def _timed(call, device):
    """Seconds that ``call()`` takes, the device's queued work included, and its result."""
    _synchronize(device)
    start = time.perf_counter()
    result = call()
    _synchronize(device)
    return time.perf_counter() - start, result


def _spread(seconds):
    """Median, quartiles and extremes of timings, in milliseconds."""
    ms = 1000 * np.asarray(seconds)
    return {
        "median": float(np.median(ms)),
        "p25": float(np.percentile(ms, 25)),
        "p75": float(np.percentile(ms, 75)),
        "min": float(ms.min()),
        "max": float(ms.max()),
    }


def _infer(subject, settings):
    with torch.no_grad(), _autocast(settings):
        return subject.model(subject.inputs)


def _train_step(subject, settings):
    """Forward, backward and optimizer step on the synthetic batch.

    The learning rate is 0, so repeated steps on one batch keep the weights, and every repeat
    does the same work (same proposals, same sampled ROIs).
    """
    model, optimizer, scaler = subject.train_model, subject.optimizer, subject.scaler
    with EventStorage(), _autocast(settings):  # the models log training statistics there
        loss = sum(model(subject.train_inputs).values())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def _prepare_training(subject, settings):
    """A training copy of the model (BatchNorm statistics of the inference model stay intact)."""
    subject.train_model = copy.deepcopy(subject.model).train()
    subject.optimizer = build_optimizer(subject.cfg, subject.train_model)
    for group in subject.optimizer.param_groups:
        group["lr"] = 0.0
    # bfloat16 (the CPU) keeps float32's exponent range: only float16 needs its gradients scaled.
    subject.scaler = torch.amp.GradScaler(settings.device,
                                          enabled=settings.amp and settings.device == "cuda")


def _round_robin(subjects, rounds, progress, phase, call):
    """Call ``call(subject)`` ``rounds`` times per subject, one subject after the other."""
    for _ in range(rounds):
        for subject in subjects:
            progress.set_postfix_str(f"{phase}: {subject.name}")
            call(subject)
            progress.update()


def _measure_inference(subject, settings):
    seconds, outputs = _timed(lambda: _infer(subject, settings), settings.device)
    subject.latencies.append(seconds)
    subject.detections += [len(output["instances"]) for output in outputs]


def _measure_training(subject, settings):
    seconds, _ = _timed(lambda: _train_step(subject, settings), settings.device)
    subject.step_times.append(seconds)


def _result(subject, settings, costs, peak_memory, train_peak_memory):
    latency = _spread(subject.latencies)
    trains = settings.train_repeats > 0
    return {
        "config": subject.name,
        "weights": subject.cfg.MODEL.WEIGHTS,
        "detections_mode": "trained weights, config's test settings" if subject.cfg.MODEL.WEIGHTS
        else f"random weights, fixed {settings.detections} detections per image",
        "detections_per_image": float(np.mean(subject.detections)),
        **costs,
        "latency_ms": latency,
        "ms_per_image": latency["median"] / settings.batch_size,
        "images_per_s": 1000 * settings.batch_size / latency["median"],
        "train_step_ms": _spread(subject.step_times) if trains else None,
        "train_step_s": float(np.median(subject.step_times)) if trains else None,
        "train_images_per_s": settings.batch_size / float(np.median(subject.step_times))
        if trains else None,
        "peak_memory_mb": peak_memory,
        "train_peak_memory_mb": train_peak_memory,
    }


def _add_ratios(results):
    reference = results[0]
    for result in results:
        for key in RATIO_KEYS:
            valid = result[key] is not None and reference[key]
            result[f"{key}_ratio"] = result[key] / reference[key] if valid else None


def benchmark(named_cfgs, settings, progress=None):
    """Measure configs interleaved; returns the report (settings, machine, one result per config).

    Args:
        named_cfgs (list[tuple[str, CfgNode]]): (name, config) pairs; ratios refer to the first.
        settings (BenchmarkSettings): how to measure.
        progress: a tqdm-like object told about each call (``reset(total)``, ``update()``,
            ``set_postfix_str(phase)``), or None.
    """
    settings.check()
    if settings.device == "cuda":
        torch.backends.cudnn.benchmark = True  # every call has one input size: tune it once
    named_cfgs = [(name, benchmark_cfg(cfg, settings)) for name, cfg in named_cfgs]
    for _, cfg in named_cfgs:
        check_model(cfg)  # before minutes of measuring
    trains = settings.train_repeats > 0
    calls_per_config = (
        1 + settings.warmup + settings.repeats + 1  # FLOPs, warm-up, timing, memory
        + (settings.warmup + settings.train_repeats + 1 if trains else 0)
    )
    progress = _NoProgress() if progress is None else progress
    progress.reset(total=calls_per_config * len(named_cfgs))
    subjects, costs = [], {}
    for name, cfg in named_cfgs:
        progress.set_postfix_str(f"FLOPs: {name}")
        costs[name] = measure_cost(cfg, settings.image_size)
        progress.update()
        subjects.append(_Subject(
            name, cfg, _load_model(cfg), inputs=synthetic_batch(cfg, settings, False),
            train_inputs=synthetic_batch(cfg, settings, True) if trains else None,
        ))

    _round_robin(subjects, settings.warmup, progress, "warm-up",
                 lambda s: _infer(s, settings))
    _round_robin(subjects, settings.repeats, progress, "inference",
                 lambda s: _measure_inference(s, settings))
    if trains:
        for subject in subjects:
            _prepare_training(subject, settings)
        _round_robin(subjects, settings.warmup, progress, "warm-up training",
                     lambda s: _train_step(s, settings))
        _round_robin(subjects, settings.train_repeats, progress, "training",
                     lambda s: _measure_training(s, settings))

    results = []
    with peak_memory_meter(settings.device) as memory_meter:
        for subject in subjects:
            progress.set_postfix_str(f"memory: {subject.name}")
            peak, train_peak = None, None
            if memory_meter is not None:
                peak = memory_meter(lambda: _infer(subject, settings))
                if trains:
                    train_peak = memory_meter(lambda: _train_step(subject, settings))
            progress.update(1 + trains)
            results.append(_result(subject, settings, costs[subject.name], peak, train_peak))
    memory_method = MEMORY_METHODS[settings.device] if memory_meter else (
        "not measured: needs Linux with glibc on the CPU")
    _add_ratios(results)
    return {
        "settings": asdict(settings),
        "machine": describe_machine(torch, settings.device),
        "memory_method": memory_method,
        "results": results,
    }


class _NoProgress:
    """Stands in for a progress bar when the caller shows none."""

    def reset(self, total):
        pass

    def update(self, n=1):
        pass

    def set_postfix_str(self, text):
        pass
