"""Measuring tools/predict.py on large images: grey test images with synthetic nuclei, one
predict.py process per image with its peak resident memory and its time, and the table
(scripts/measure_predict_memory.py writes docs/results/predict_memory.md with it)."""
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np

from ..data.synthetic import render_scene
from ..machine import cpu_name

# Side of the synthetic scene a test image repeats (rendering a whole 8000 px scene is slow).
SCENE_BLOCK = 500
# What predict.py prints: "Predicted 1 of 1 images: N predictions, M nuclei scoring >= ...".
_SUMMARY = re.compile(r"Predicted \d+ of \d+ images: (\d+) predictions, (\d+) nuclei")


def grey_nuclei_image(size, seed=0):
    """A size x size uint8 grey image of synthetic fluorescent nuclei: one rendered scene of
    ``SCENE_BLOCK`` px, repeated."""
    scene, _ = render_scene(np.random.default_rng(seed), SCENE_BLOCK, SCENE_BLOCK, "fluorescence")
    grey = cv2.cvtColor(scene, cv2.COLOR_RGB2GRAY)
    repeats = -(-size // SCENE_BLOCK)
    return np.ascontiguousarray(np.tile(grey, (repeats, repeats))[:size, :size])


# Runs a Python script (argv[2:]) and at exit writes the process's own peak resident set size
# (VmHWM, kB) to argv[1]. The parent cannot take it from os.wait4 or getrusage: Linux counts into
# a child's ru_maxrss the memory of the process it was forked from (here, one holding torch).
_REPORTING_LAUNCHER = """
import atexit, runpy, sys
def report(path=sys.argv[1]):
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM"))
    with open(path, "w") as f:
        f.write(peak)
atexit.register(report)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@dataclass
class ChildRun:
    """One child process: exit code (None if we killed it), wall seconds, its peak resident set
    size in MiB, and what it printed."""

    returncode: object
    seconds: float
    peak_rss_mib: float
    killed: object  # None, or why we killed it: "time" or "memory"
    stdout: str
    cpu_seconds: float  # the child's own user + system time
    others_cores: float  # the cores the rest of the machine kept busy meanwhile, on average


def run_python_measured(script, args=(), env=None, timeout=None, cwd=None, memory_limit_mib=None):
    """Run the Python ``script`` with ``args`` in a child process and measure it
    (:class:`ChildRun`). It is killed past ``timeout`` seconds or once its resident memory
    exceeds ``memory_limit_mib`` (read every half second), before it takes the machine's memory
    from other processes; its peak is then the last one read from /proc."""
    with tempfile.TemporaryDirectory() as folder:
        report = os.path.join(folder, "vmhwm_kb")
        command = [sys.executable, "-c", _REPORTING_LAUNCHER, report, script, *map(str, args)]
        start, peak_kb, killed, output = time.monotonic(), 0, None, []
        busy_before, children_before = _busy_seconds(), _children_cpu_seconds()
        with subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) as child:
            reader = threading.Thread(target=lambda: output.extend(child.stdout), daemon=True)
            reader.start()
            while child.poll() is None:
                peak_kb = max(peak_kb, _vmhwm_kb(child.pid))
                if timeout is not None and time.monotonic() - start > timeout:
                    killed = "time"
                elif memory_limit_mib is not None and peak_kb > memory_limit_mib * 1024:
                    killed = "memory"
                if killed:
                    child.kill()
                    child.wait()
                    break
                time.sleep(0.5)
            seconds = time.monotonic() - start
            reader.join()
        cpu = _children_cpu_seconds() - children_before
        others = max(0.0, (_busy_seconds() - busy_before - cpu) / seconds)
        if os.path.exists(report):
            with open(report) as f:
                peak_kb = max(peak_kb, int(f.read()))
    return ChildRun(None if killed else child.returncode, seconds, peak_kb / 1024, killed,
                    "".join(output), cpu, others)


def _busy_seconds():
    """CPU seconds all cores of this machine have spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(value) for value in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _vmhwm_kb(pid):
    """The process's peak resident set size so far (kB), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next((int(line.split()[1]) for line in status if line.startswith("VmHWM")), 0)
    except OSError:
        return 0


def predict_args(config, weights, image, output, opts=()):
    """tools/predict.py's arguments for one image."""
    return ["--config-file", config, "--weights", weights, "--input", image, "--output", output,
            *map(str, opts)]


def counts_printed(stdout):
    """(predictions, nuclei in the label map) from predict.py's summary line, or (None, None)."""
    found = _SUMMARY.search(stdout)
    return (int(found.group(1)), int(found.group(2))) if found else (None, None)


def machine():
    """The CPU, its cores, the memory and Python: what a timing is published with."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return f"{cpu_name()}, {os.cpu_count()} CPU threads, {memory:.0f} GiB RAM, Python {platform.python_version()}"


def format_table(rows):
    """Markdown rows of measured predict.py runs: ``rows`` are dicts with size, tiles, seconds,
    peak_rss_mib, predictions, nuclei, label_file, others_cores and killed (as in
    :class:`ChildRun`); s/Mpx is also given as a ratio to the first row's."""
    lines = ["| image | tiles | predictions | nuclei in label map | label map | peak RSS | time "
             "| s/Mpx | s/Mpx ÷ first row's | other processes (cores busy) |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    reference = None
    for row in rows:
        per_mpx = row["seconds"] / (row["size"] ** 2 / 1e6)
        reference = reference or per_mpx
        at_least = "≥ " if row["killed"] else ""
        how_long = {None: "", "time": "killed after ", "memory": "killed (memory) after "}
        lines.append(" | ".join([
            f"| {row['size']}²", str(row["tiles"]), _or_dash(row["predictions"]),
            _or_dash(row["nuclei"]), _or_dash(row["label_file"]),
            f"{at_least}{row['peak_rss_mib'] / 1024:.2f} GiB",
            f"{how_long[row['killed']]}{row['seconds']:.0f} s",
            f"{at_least}{per_mpx:.1f}", f"{at_least}{per_mpx / reference:.2f}",
            f"{row['others_cores']:.1f} |",
        ]))
    return "\n".join(lines)


def _or_dash(value):
    return "—" if value is None else str(value)
