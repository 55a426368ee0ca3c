"""Speed and memory of Mask R-CNN configs, measured side by side in one process.

Several configs are measured *interleaved*: each repeat runs every model once, round-robin, so
that the noise of a shared machine hits all of them alike, and the report gives ratios to the
first config. Every model sees the same deterministic synthetic scenes
(:func:`maskrcnnpp.data.synthetic.render_scene`), fed at ``image_size`` x ``image_size`` without
test-time resizing. On a GPU, cuDNN picks its fastest algorithms for that one size first
(``cudnn.benchmark``), and ``--amp`` runs the models under float16 autocast.

Detections: a model with random weights keeps a random number of detections, and the mask head's
cost grows with it. A config without ``MODEL.WEIGHTS`` is therefore measured with exactly
``detections`` per image (score threshold 0, box NMS at IoU 1.0, ``TEST.DETECTIONS_PER_IMAGE``
= ``detections``); a config with weights keeps its own test settings, as a user would run it.
The detections actually kept are reported either way.

Memory: the peak above what was allocated before one call (activations and workspace, not the
weights), on CUDA from ``torch.cuda.max_memory_allocated``; on the CPU from the growth of the
peak resident set size (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``), after glibc
is told to give freed blocks back to the system so that memory cached from earlier calls does
not hide the growth. It is measured after all timings, because that setting slows allocation.
"""

import contextlib
import copy
import ctypes
import gc
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import BitMasks, Instances
from detectron2.utils.events import EventStorage
from tabulate import tabulate
from tqdm import tqdm

from .data.synthetic import render_scene
from .engine import build_cfg, parse_config_spec
from .errors import UserInputError, check_choice
from .io_utils import write_json
from .machine import cuda_unavailable_reason
from .machine import describe as describe_machine
from .modeling.cost import measure_cost

__all__ = [
    "BenchmarkSettings",
    "benchmark",
    "benchmark_config_files",
    "check_report_path",
    "format_benchmark",
    "write_benchmark",
]

SCENE_SEED = 2018  # scene i of every benchmark is render_scene(default_rng([SCENE_SEED, i]))

MEMORY_METHODS = {
    "cuda": "CUDA: torch.cuda.max_memory_allocated during one call, minus the memory allocated "
    "before it (weights excluded)",
    "cpu": "CPU: growth of the peak resident set size (Linux VmHWM, reset before the call) over "
    "the resident size before it, with glibc returning freed blocks to the system",
}

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

# (key, column title, format) of the printed table.
TABLE_COLUMNS = (
    ("model_params", "params (M)", lambda v: f"{v / 1e6:.2f}"),
    ("model_flops", "GFLOPs", lambda v: f"{v / 1e9:.1f}"),
    ("detections_per_image", "detections", lambda v: f"{v:.0f}"),
    ("latency_ms", "ms/batch median [p25, p75]",
     lambda v: f"{v['median']:.1f} [{v['p25']:.1f}, {v['p75']:.1f}]"),
    ("ms_per_image", "ms/image", lambda v: f"{v:.1f}"),
    ("images_per_s", "images/s", lambda v: f"{v:.2f}"),
    ("train_step_s", "train s/step", lambda v: f"{v:.3f}"),
    ("train_images_per_s", "train images/s", lambda v: f"{v:.2f}"),
    ("peak_memory_mb", "infer peak MB", lambda v: f"{v:.0f}"),
    ("train_peak_memory_mb", "train peak MB", lambda v: f"{v:.0f}"),
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
    amp: bool = False  # float16 autocast (CUDA only)
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
                f"--device cuda needs a GPU, but {cuda_unavailable_reason(torch)}. "
                "Measure on the CPU with --device cpu."
            )
        if self.amp and self.device != "cuda":
            raise UserInputError(
                "--amp measures float16 autocast, which runs on a GPU only; add --device cuda "
                "(or drop --amp on the CPU)."
            )
        for name, minimum in (("image_size", 32), ("batch_size", 1), ("warmup", 0),
                              ("repeats", 1), ("train_repeats", 0), ("detections", 1)):
            value = getattr(self, name)
            if value < minimum:
                option = "--" + name.replace("_", "-")
                raise UserInputError(f"{option} {value} is too small; use at least {minimum}.")


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
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
        cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = 1.0  # no box overlaps more than IoU 1: NMS keeps all
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


def _check_weights(cfg):
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise UserInputError(f"MODEL.WEIGHTS={weights!r} is not a file; pass a checkpoint.")


def _load_model(cfg):
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model.eval()


def _synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _autocast(settings):
    if settings.amp:
        return torch.autocast("cuda", dtype=torch.float16)
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


def _status_kib(field_name):
    """A memory figure of this process from /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field_name + ":"))
    return int(line.split()[1])


CLEAR_PEAK_RSS = "/proc/self/clear_refs"  # writing "5" resets VmHWM to the current resident size
# glibc mallopt: blocks above M_MMAP_THRESHOLD are mmapped, so freeing them unmaps them at once.
M_MMAP_THRESHOLD = -3
EAGER_RETURN_BYTES = 128 * 1024
AFTERWARDS_BYTES = 32 * 2**20  # glibc's own ceiling for the threshold on 64-bit systems


def _cpu_peak_growth_mb(libc, call):
    gc.collect()
    libc.malloc_trim(0)
    before = _status_kib("VmRSS")
    with open(CLEAR_PEAK_RSS, "w") as f:
        f.write("5")
    call()
    return (_status_kib("VmHWM") - before) / 1024


def _cuda_peak_growth_mb(call):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    call()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


@contextlib.contextmanager
def _peak_memory_meter(device):
    """Yield a function giving the peak memory growth (MB) of a call, or None where unsupported.

    On the CPU, glibc returns freed blocks to the system while the meter is in use; afterwards
    its threshold is left at glibc's usual ceiling, so allocation stays fast.
    """
    if device == "cuda":
        yield _cuda_peak_growth_mb
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        usable = os.access(CLEAR_PEAK_RSS, os.W_OK)
    except OSError:  # not glibc
        usable = False
    if not usable:
        yield None
        return
    libc.mallopt(M_MMAP_THRESHOLD, EAGER_RETURN_BYTES)
    try:
        yield lambda call: _cpu_peak_growth_mb(libc, call)
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, AFTERWARDS_BYTES)


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
    subject.scaler = torch.amp.GradScaler(settings.device, enabled=settings.amp)


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


def benchmark(named_cfgs, settings):
    """Measure configs interleaved; returns the report (settings, machine, one result per config).

    Args:
        named_cfgs (list[tuple[str, CfgNode]]): (name, config) pairs; ratios refer to the first.
        settings (BenchmarkSettings): how to measure.
    """
    settings.check()
    if settings.device == "cuda":
        torch.backends.cudnn.benchmark = True  # every call has one input size: tune it once
    named_cfgs = [(name, benchmark_cfg(cfg, settings)) for name, cfg in named_cfgs]
    for _, cfg in named_cfgs:
        _check_weights(cfg)  # before minutes of measuring
    trains = settings.train_repeats > 0
    calls_per_config = (
        1 + settings.warmup + settings.repeats + 1  # FLOPs, warm-up, timing, memory
        + (settings.warmup + settings.train_repeats + 1 if trains else 0)
    )
    progress = tqdm(total=calls_per_config * len(named_cfgs), desc="benchmark", unit="call")
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
    with _peak_memory_meter(settings.device) as memory_meter:
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
    progress.close()
    _add_ratios(results)
    return {
        "settings": asdict(settings),
        "machine": describe_machine(torch, settings.device),
        "memory_method": memory_method,
        "results": results,
    }


def benchmark_config_files(config_files, opts=(), settings=BenchmarkSettings()):
    """:func:`benchmark` of config files (or variants ``path.yaml+KEY=VALUE``), each named by its
    file name, ``opts`` applied to all."""
    named = []
    for spec in config_files:
        path, variant_opts = parse_config_spec(spec)
        named.append((os.path.basename(spec), build_cfg(path, [*opts, *variant_opts])))
    names = [name for name, _ in named]
    if len(set(names)) < len(names):  # same file name in two folders: name them by path
        named = [(path, cfg) for path, (_, cfg) in zip(config_files, named)]
    return benchmark(named, settings)


def format_benchmark(report):
    """The report as a Markdown table, with ratios to the first config."""
    headers = ["config"] + [title for _, title, _ in TABLE_COLUMNS] + ["ratios to first"]
    rows = []
    for result in report["results"]:
        cells = [result["config"]]
        cells += ["n/a" if result[key] is None else show(result[key])
                  for key, _, show in TABLE_COLUMNS]
        ratios = [f"{key.replace('_', ' ')} {result[key + '_ratio']:.2f}x"
                  for key in ("ms_per_image", "train_step_s", "model_flops", "peak_memory_mb")
                  if result[key + "_ratio"] is not None]
        rows.append(cells + [", ".join(ratios)])
    settings = report["settings"]
    title = (
        f"{settings['image_size']}x{settings['image_size']} px, batch {settings['batch_size']}, "
        f"{report['machine']['device']}{' AMP' if settings['amp'] else ''}; medians of "
        f"{settings['repeats']} inference calls and {settings['train_repeats']} training steps "
        f"after {settings['warmup']} warm-up, measured interleaved. Memory: "
        f"{report['memory_method']}."
    )
    return title + "\n\n" + tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True)


def check_report_path(path):
    """Raise unless ``path`` names a JSON file (before minutes of measuring)."""
    if not path.endswith(".json"):
        raise UserInputError(f"--out {path}: the benchmark is written as JSON; name it *.json.")


def write_benchmark(report, path):
    check_report_path(path)
    write_json(report, path, indent=2)
