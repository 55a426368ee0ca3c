"""The device and precision policy: MODEL.DEVICE and SOLVER.AMP.ENABLED against this machine."""
import logging

import torch
from detectron2.utils.logger import log_first_n

from .errors import UserInputError
from .machine import cuda_unavailable_reason


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
