"""The device and precision policy: MODEL.DEVICE and SOLVER.AMP.ENABLED against this machine."""
import logging

import torch
from detectron2.utils.logger import log_first_n

from .errors import UserInputError
from .machine import cuda_unavailable_reason


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


def check_amp(enabled, device, key, device_key):
    """Raise if mixed precision (float16 autocast, CUDA only) is asked for a run on the CPU."""
    if enabled and device == "cpu":
        raise UserInputError(
            f"{key} True asks for mixed precision (float16 autocast), which runs on a GPU only, "
            f"and this run is on the CPU. Drop the override, or run on a GPU ({device_key} cuda)."
        )


def resolve_device(cfg, device_chosen, amp_typed):
    """Check MODEL.DEVICE and SOLVER.AMP.ENABLED against this machine, in place.

    A CUDA device that the user chose (command line or config file) without a usable GPU is an
    error that says why (no GPU, or one that this torch build cannot use); detectron2's default
    device falls back to the CPU. Mixed precision (float16 autocast) runs on CUDA only: on the CPU
    a config file's AMP is switched off, while AMP typed on the command line is an error.
    """
    fell_back = cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available() and not device_chosen
    if fell_back:
        cfg.MODEL.DEVICE = "cpu"
    check_device(cfg.MODEL.DEVICE, "MODEL.DEVICE")
    amp_dropped = cfg.SOLVER.AMP.ENABLED and cfg.MODEL.DEVICE == "cpu"
    if amp_dropped:
        if amp_typed:
            check_amp(True, "cpu", "SOLVER.AMP.ENABLED", "MODEL.DEVICE")
        cfg.SOLVER.AMP.ENABLED = False
    if fell_back or amp_dropped:
        log_first_n(
            logging.WARNING,
            f"{'No GPU available: running' if fell_back else 'Running'} on the CPU "
            f"(MODEL.DEVICE cpu){' in float32 (SOLVER.AMP.ENABLED False)' if amp_dropped else ''}.",
        )
