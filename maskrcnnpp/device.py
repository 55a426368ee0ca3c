"""The device and precision policy: MODEL.DEVICE and SOLVER.AMP.ENABLED against this machine."""
import logging

import torch
from detectron2.utils.logger import log_first_n

from .errors import UserInputError
from .machine import cpu_bfloat16_missing_reason, cuda_unavailable_reason


def check_device(device, key):
    """Raise unless ``device`` ('cpu', 'cuda' or 'cuda:N', set by config ``key``) runs here, saying
    why not: no GPU, a GPU this torch build cannot use, or a GPU index this machine lacks."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserInputError(
                f"{key}={device!r} needs a GPU, but {cuda_unavailable_reason(torch)}. "
                f"To run on the CPU, set {key} cpu."
            )
        if device != "cuda":
            index = device.partition(":")[2]
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise UserInputError(
                    f"{key}={device!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                    f"cuda:0 to cuda:{torch.cuda.device_count() - 1}; use one of them or 'cuda'."
                )
    elif device != "cpu":
        raise UserInputError(f"{key}={device!r} is not valid; use 'cuda', 'cuda:N' or 'cpu'.")


def autocast_dtype(device):
    """The mixed-precision type on ``device``: float16 on a GPU (detectron2's AMPTrainer), bfloat16
    on a CPU, whose float32-wide exponent needs no gradient scaling."""
    return torch.bfloat16 if device == "cpu" else torch.float16


def check_amp(enabled, device, key, device_key):
    """Raise if mixed precision is asked for on a CPU without bfloat16 instructions."""
    reason = enabled and device == "cpu" and cpu_bfloat16_missing_reason(torch)
    if reason:
        raise UserInputError(
            f"{key} True asks for mixed precision, which on the CPU is bfloat16 autocast, but "
            f"{reason}. Drop the override to train in float32, or run on a GPU ({device_key} cuda)."
        )


def resolve_device(cfg, device_chosen, amp_typed):
    """Check MODEL.DEVICE and SOLVER.AMP.ENABLED against this machine, in place.

    A CUDA device that the user chose (command line or config file) without a usable GPU is an
    error that says why (no GPU, or one that this torch build cannot use); detectron2's default
    device falls back to the CPU. Mixed precision is float16 autocast on a GPU and bfloat16
    autocast on a CPU that has bfloat16 instructions; on another CPU a config file's AMP is
    switched off, while AMP typed on the command line is an error.
    """
    fell_back = cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available() and not device_chosen
    if fell_back:
        cfg.MODEL.DEVICE = "cpu"
    check_device(cfg.MODEL.DEVICE, "MODEL.DEVICE")
    on_cpu_amp = cfg.SOLVER.AMP.ENABLED and cfg.MODEL.DEVICE == "cpu"
    amp_dropped = on_cpu_amp and cpu_bfloat16_missing_reason(torch) is not None
    if amp_dropped:
        if amp_typed:
            check_amp(True, "cpu", "SOLVER.AMP.ENABLED", "MODEL.DEVICE")
        cfg.SOLVER.AMP.ENABLED = False
    if fell_back or on_cpu_amp:
        precision = ""
        if on_cpu_amp:
            precision = (" in float32 (SOLVER.AMP.ENABLED False: no bfloat16 instructions)"
                         if amp_dropped else " in bfloat16 autocast (SOLVER.AMP.ENABLED)")
        log_first_n(
            logging.WARNING,
            f"{'No GPU available: running' if fell_back else 'Running'} on the CPU "
            f"(MODEL.DEVICE cpu){precision}.",
        )
