"""Shared fixtures: a tiny synthetic nuclei set, and the project's command-line tools run in a
subprocess or loaded in-process."""
import functools
import importlib.util
import logging
import os
import subprocess
import sys

import pytest

from maskrcnnpp.data.synthetic import generate_synthetic_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A model and schedule small enough for a few CPU iterations in seconds, on top of the quickstart.
TINY_TRAINING = [
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()",
    "DATALOADER.NUM_WORKERS", "0", "TEST.DETECTIONS_PER_IMAGE", "50",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "100", "SEED", "0",
]


@pytest.fixture(autouse=True)
def restore_logging_handlers():
    """A tool run in-process (train_net's setup_logger) attaches handlers that write to the
    captured output of the test that ran it; the next tests would log into those closed streams
    ("--- Logging error ---" above their one error line). Each test leaves the handlers as it
    found them."""
    loggers = [logging.getLogger(name) for name in (None, "maskrcnnpp", "detectron2", "fvcore")]
    before = [list(logger.handlers) for logger in loggers]
    yield
    for logger, handlers in zip(loggers, before):
        logger.handlers[:] = handlers


NO_BFLOAT16 = "this CPU (AVX2) lacks the bfloat16 instructions (AVX512-BF16 or AMX) that CPU mixed precision needs"


@pytest.fixture
def cpu_without_bfloat16(monkeypatch):
    """This CPU, as one that lacks bfloat16 instructions, whatever it has (the reason given is
    the one such a CPU gets)."""
    monkeypatch.setattr("maskrcnnpp.device.cpu_bfloat16_missing_reason", lambda torch: NO_BFLOAT16)


@pytest.fixture
def cpu_with_bfloat16(monkeypatch):
    """This CPU, as one with bfloat16 instructions (torch emulates them where it lacks them:
    slower, computed the same)."""
    monkeypatch.setattr("maskrcnnpp.device.cpu_bfloat16_missing_reason", lambda torch: None)


@pytest.fixture(scope="session")
def tiny_nuclei(tmp_path_factory):
    """A 4-image synthetic COCO set, and the command-line options that register and use it."""
    folder = str(tmp_path_factory.mktemp("data") / "tiny")
    generate_synthetic_dataset(folder, num_images=4, seed=3, image_size=(128, 128))
    entry = str([["tiny_nuclei", os.path.join(folder, "annotations.json"), os.path.join(folder, "images")]])
    return {
        "folder": folder,
        "opts": ["DATASETS.COCO_NUCLEI", entry,
                 "DATASETS.TRAIN", "('tiny_nuclei',)", "DATASETS.TEST", "('tiny_nuclei',)"],
    }


def run_tool(script, *args, env=None, timeout=600):
    """Run ``tools/<script>`` as a user would; returns the CompletedProcess (text output)."""
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("DETECTRON2_DATASETS", os.path.join(REPO, "datasets"))
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", script), *map(str, args)],
        cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


@functools.cache
def load_tool(name):
    """``tools/<name>.py`` loaded from its file, for tests that run the tool in-process (its
    ``main``): the tools are scripts, not a package. Cached: one module per tool, as an import
    gives, so that monkeypatching it reaches its callers."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool
