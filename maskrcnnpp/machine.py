"""What this machine offers Mask R-CNN++: the torch build, its CUDA, the GPUs and their driver.

Standard library and torch only, and no imports from the package: scripts/check_torch.py loads
this file by path before detectron2 or the package are installed.
"""
import os
import platform
import shutil
import subprocess

# torch.amp.GradScaler(device) and torch.autocast(device), as the tools use them, need 2.3.
MIN_TORCH = (2, 3)
# The newest torch release series this project has been tested with: scripts/install.sh installs
# the newest pair the package index offers from MIN_TORCH up to this series.
NEWEST_TESTED_TORCH = (2, 14)


def version_tuple(version):
    """(major, minor) of a version string such as "2.14.1+cu130"."""
    return tuple(int(part) for part in version.split("+")[0].split(".")[:2])


def matching_torchvision(torch_version):
    """The torchvision release series built for a torch 2.x release (2.M -> 0.M+15), or None."""
    major, minor = version_tuple(torch_version)
    return f"0.{minor + 15}" if major == 2 else None


def matching_torch(torchvision_version):
    """The torch release series a torchvision 0.N release was built for (0.N -> 2.N-15), or None."""
    major, minor = version_tuple(torchvision_version)
    return f"2.{minor - 15}" if major == 0 and minor >= 15 else None


def torch_requirements(torch_version="", torchvision_version=""):
    """The pip requirements scripts/install.sh installs torch + torchvision with: a version
    given is pinned exactly; without one, the range from MIN_TORCH to NEWEST_TESTED_TORCH (and the
    torchvision series built for it), so that pip's resolver picks the newest pair the index
    offers, each torchvision naming the torch it was built for."""
    if torch_version:
        torch, series = f"torch=={torch_version}", matching_torchvision(torch_version)
        torchvision = f"torchvision=={series}.*" if series else "torchvision"
    else:
        (major, low), (_, high) = MIN_TORCH, NEWEST_TESTED_TORCH
        torch = f"torch>={major}.{low},<{major}.{high + 1}"
        torchvision = (f"torchvision>={matching_torchvision(f'{major}.{low}')},"
                       f"<{matching_torchvision(f'{major}.{high + 1}')}")
    if torchvision_version:
        torchvision = f"torchvision=={torchvision_version}"
    return [torch, torchvision]


def _nvidia_smi(*args):
    """Lines nvidia-smi prints for ``args``; none where there is no NVIDIA driver."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        result = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def nvidia_smi_gpus():
    """The GPUs the NVIDIA driver lists ("GPU 0: NVIDIA H100 ..."), whatever torch can use."""
    return [line for line in _nvidia_smi("-L") if line.startswith("GPU ")]


def cuda_unavailable_reason(torch):
    """Why ``torch`` cannot use a GPU here, and what to do about it (call only when it cannot)."""
    gpus = nvidia_smi_gpus()
    if not gpus:
        return f"no GPU is visible here (torch {torch.__version__}; nvidia-smi lists none)"
    build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
    return (
        f"nvidia-smi lists {len(gpus)} GPU(s) ({gpus[0]}) but torch {torch.__version__} ({build}) "
        "cannot use them: install the torch build that matches the driver (`nvidia-smi` shows the "
        "CUDA version it supports; https://pytorch.org/get-started/locally/), then run "
        "scripts/install.sh again, which keeps a working torch"
    )


def cpu_bfloat16_missing_reason(torch):
    """Why this CPU cannot run bfloat16 autocast at speed, or None where it can: oneDNN's
    bfloat16 kernels need AVX512-BF16 or AMX (without them torch emulates bfloat16, slower than
    float32)."""
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    return (f"this CPU ({capability}) lacks the bfloat16 instructions (AVX512-BF16 or AMX) that "
            "CPU mixed precision needs")


def cpu_name():
    """The CPU's model name ("AMD EPYC"), read from /proc/cpuinfo where there is one: platform
    names only the architecture on Linux."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def describe(torch, device="cpu"):
    """The facts a measurement on ``device`` should be published with."""
    facts = {
        "device": "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu": cpu_name(),
        # the vector instructions torch's kernels use ("AVX2", "AVX512"): CPUs of one model name
        # differ in them, and in speed with them
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if device == "cuda":
        facts.update(
            device=torch.cuda.get_device_name(),
            cudnn=torch.backends.cudnn.version(),
            driver=(_nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader") or [None])[0],
        )
    return facts


def label(facts):
    """One line naming the hardware of :func:`describe`'s ``facts``: the GPU, or the CPU with its
    vector instructions and threads."""
    if facts["device"] != "cpu":
        return facts["device"]
    return f"{facts['cpu']} ({facts['cpu_capability']}), {facts['cpu_count']} CPU threads"
