"""Report the torch + torchvision pair of this Python, for scripts/install.sh.

A pair works when torchvision's compiled ``nms`` runs with this torch, on the CPU and, where
``torch.cuda.is_available()``, on the GPU too. Prints what it found (torch, CUDA, GPUs) and exits
with one of the codes below, so that the installer keeps any working pair whatever its version
and installs the pinned one only where none works.

    python3 scripts/check_torch.py                       # exit code: WORKS, NO_TORCH, ...
    python3 scripts/check_torch.py --torchvision-for 2.5.1   # prints 0.20
    python3 scripts/check_torch.py --torch-for 0.20.1        # prints 2.5
    python3 scripts/check_torch.py --requirements "" ""      # torch>=2.3,<2.15 torchvision>=0.18,<0.30
    python3 scripts/check_torch.py --installed           # the torch and torchvision pip installed
"""
import importlib.util
import os
import sys

WORKS, NO_TORCH, NO_TORCHVISION, TOO_OLD = 0, 10, 11, 12


def load_machine_module():
    """maskrcnnpp/machine.py by path: the package itself needs detectron2, maybe not there yet."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "maskrcnnpp", "machine.py")
    spec = importlib.util.spec_from_file_location("maskrcnnpp_machine", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_nms(torch, torchvision, device):
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10]], device=device)
    keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8], device=device), 0.5)
    if keep.tolist() != [0]:
        raise RuntimeError(f"torchvision.ops.nms on {device} returned {keep.tolist()}, not [0]")


def main(machine):
    try:
        import torch
    except ImportError:
        print("torch: not installed")
        return NO_TORCH
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none: a CPU-only build'}) "
          f"at {os.path.dirname(torch.__file__)}")
    if machine.version_tuple(torch.__version__) < machine.MIN_TORCH:
        print(f"torch {torch.__version__} is older than "
              f"{'.'.join(map(str, machine.MIN_TORCH))}, the oldest Mask R-CNN++ runs with.")
        return TOO_OLD
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        print(f"GPUs: {len(names)} ({', '.join(names)})")
    else:
        print(f"GPUs: none usable; {machine.cuda_unavailable_reason(torch)}")
    try:
        import torchvision
    except ImportError as e:
        print(f"torchvision: does not import ({e})")
        return NO_TORCHVISION
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    try:
        for device in devices:
            check_nms(torch, torchvision, device)
    except Exception as e:  # noqa: BLE001  (whatever fails, this pair does not work)
        first_line = (str(e).splitlines() or [""])[0]
        print(f"torchvision {torchvision.__version__}: nms does not run with this torch "
              f"({type(e).__name__}: {first_line})")
        return NO_TORCHVISION
    print(f"torchvision {torchvision.__version__}: nms runs on {' and '.join(devices)}")
    return WORKS


def installed_versions():
    """The versions of the torch and torchvision distributions, as pip sees them (a torch that
    imports without pip's metadata, e.g. from PYTHONPATH, by its __version__)."""
    from importlib import import_module, metadata

    versions = []
    for name in ("torch", "torchvision"):
        try:
            versions.append(metadata.version(name))
        except metadata.PackageNotFoundError:
            versions.append(import_module(name).__version__)
    return versions


if __name__ == "__main__":
    machine = load_machine_module()
    if len(sys.argv) == 3 and sys.argv[1] == "--torchvision-for":
        print(machine.matching_torchvision(sys.argv[2]) or "")
        sys.exit(0)
    if len(sys.argv) == 3 and sys.argv[1] == "--torch-for":
        print(machine.matching_torch(sys.argv[2]) or "")
        sys.exit(0)
    if len(sys.argv) == 4 and sys.argv[1] == "--requirements":
        print(" ".join(machine.torch_requirements(sys.argv[2], sys.argv[3])))
        sys.exit(0)
    if sys.argv[1:] == ["--installed"]:
        try:
            print(" ".join(installed_versions()))
        except ImportError as e:
            sys.exit(f"not installed: {e}")
        sys.exit(0)
    sys.exit(main(machine))
