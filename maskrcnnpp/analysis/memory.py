"""Peak memory of one call: the activations and workspace it allocates, not the weights.

On CUDA, ``torch.cuda.max_memory_allocated`` during the call minus what was allocated before it.
On the CPU, the growth of the process's peak resident set size (Linux ``VmHWM``, reset through
``/proc/self/clear_refs``) over the resident size before the call, after glibc is told to give
freed blocks back to the system at once, so that memory cached from earlier calls does not hide
the growth. That setting slows allocation, so measure memory after any timing.
"""
import contextlib
import ctypes
import gc
import os

import torch

# How the meter of each device measures, as reports state it.
MEMORY_METHODS = {
    "cuda": "CUDA: torch.cuda.max_memory_allocated during one call, minus the memory allocated "
    "before it (weights excluded)",
    "cpu": "CPU: growth of the peak resident set size (Linux VmHWM, reset before the call) over "
    "the resident size before it, with glibc returning freed blocks to the system",
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
def peak_memory_meter(device):
    """Yield a function giving the peak memory growth (MB) of ``call()``, or None where the CPU
    meter is unsupported (not Linux with glibc).

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
