"""How fast one data-loader worker feeds a training: the images (crops) per second of a config's
training loader, read, cropped and augmented in this one process as each worker does, to size
the workers a GPU needs (docs/gpu_lease.md). tools/benchmark.py --data-loader runs it."""
import time

import torch

from ..errors import UserInputError
from ..machine import describe as describe_machine
from ..training import Trainer


def loader_throughput(cfg, batches, progress=None):
    """Time ``batches`` batches of ``cfg``'s training loader with no worker processes (this
    process does one worker's work, on one torch thread as PyTorch gives each worker: with all
    threads, torch's mask stacking and flips ran 5x slower), after one untimed batch; returns a
    JSON-ready report."""
    if batches < 1:
        raise UserInputError(f"--data-loader {batches}: time at least 1 batch.")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.freeze()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loader = iter(Trainer.build_train_loader(cfg))
        next(loader)  # the first batch also starts the sampler and warms the file cache
        images, start = 0, time.perf_counter()
        for _ in range(batches):
            images += len(next(loader))
            if progress is not None:
                progress.update()
        seconds = time.perf_counter() - start
        worker_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    return {
        "dataset": list(cfg.DATASETS.TRAIN), "batches": batches, "images": images,
        "seconds": seconds, "images_per_second_per_worker": images / seconds,
        "torch_threads": worker_threads,
        "augmentations": list(cfg.INPUT.NUCLEI_AUG.NAMES), "crop_size": cfg.INPUT.NUCLEI_AUG.CROP_SIZE,
        "machine": describe_machine(torch),
    }


def format_throughput(report):
    """One paragraph for the terminal and the .md report."""
    return (f"Training data loader of {', '.join(report['dataset'])} ({report['crop_size']}-px "
            f"crops; {', '.join(report['augmentations'])}): {report['images']} images in "
            f"{report['seconds']:.1f} s, {report['images_per_second_per_worker']:.1f} images/s "
            f"per worker process ({report['machine']['cpu_count']} CPU threads on this machine).")
