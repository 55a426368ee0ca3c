"""scripts/install.sh and scripts/check_torch.py: a working torch is kept whatever its version,
nothing is fetched when everything is present, and a broken or old torch gets one clear message."""
import importlib.metadata
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from maskrcnnpp.machine import matching_torchvision

CHECK_TORCH = os.path.join(REPO, "scripts", "check_torch.py")
WORKS, NO_TORCHVISION, TOO_OLD = 0, 11, 12


def run(command, stubs=None, env=None, timeout=600):
    """Run ``command`` in the repository; ``stubs`` is a folder put first on PYTHONPATH."""
    full_env = dict(os.environ, **(env or {}))
    if stubs:
        full_env["PYTHONPATH"] = str(stubs)
    return subprocess.run(command, cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def stub_module(folder, name, source):
    """A package ``name`` in ``folder`` that shadows the installed one."""
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text(source)
    return folder


@pytest.mark.parametrize("torch_version, series", [
    ("2.14.1+cu130", "0.29"), ("2.5.1", "0.20"), ("2.0.0+cu118", "0.15"), ("1.13.1", None),
])
def test_torchvision_series_follows_the_torch_release(torch_version, series):
    assert matching_torchvision(torch_version) == series


@pytest.mark.slow
def test_the_installed_pair_works_and_is_described():
    result = run([sys.executable, CHECK_TORCH])
    assert result.returncode == WORKS, result.stdout
    assert f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}" in result.stdout
    devices = "cpu and cuda" if torch.cuda.is_available() else "cpu"
    assert result.stdout.strip().endswith(f"nms runs on {devices}")


@pytest.mark.slow
def test_a_torchvision_that_does_not_import_is_reported(tmp_path):
    stubs = stub_module(tmp_path, "torchvision", "raise ImportError('built for another torch')")
    result = run([sys.executable, CHECK_TORCH], stubs)
    assert result.returncode == NO_TORCHVISION
    assert "torchvision: does not import (built for another torch)" in result.stdout


@pytest.mark.slow
def test_a_torch_older_than_the_minimum_is_reported(tmp_path):
    stubs = stub_module(tmp_path, "torch", "__version__ = '1.13.1'\nclass version:\n    cuda = None\n")
    result = run([sys.executable, CHECK_TORCH], stubs)
    assert result.returncode == TOO_OLD
    assert "torch 1.13.1 is older than 2.3" in result.stdout


def test_offline_requirement_list_covers_maskrcnnpp_and_detectron2():
    with open(os.path.join(REPO, "scripts", "requirements-offline.txt")) as f:
        listed = {re.split(r"[<>=!~;\[ ]", line.strip())[0].lower().replace("_", "-")
                  for line in f if line.strip() and not line.startswith("#")}
    needed = set()
    for package in ("maskrcnnpp", "detectron2"):
        for requirement in importlib.metadata.requires(package) or []:
            if "extra ==" in requirement and "extra == \"test\"" not in requirement:
                continue  # optional extras of detectron2 (all, dev)
            name = re.split(r"[<>=!~;\[ ]", requirement)[0].lower().replace("_", "-")
            needed.add(name)
    needed -= {"dataclasses"}  # detectron2 needs it only on Python < 3.7
    assert needed <= listed, f"missing from requirements-offline.txt: {sorted(needed - listed)}"


@pytest.mark.slow
def test_installer_keeps_a_working_torch_that_is_not_the_pinned_one_and_needs_no_index(tmp_path):
    # The pins name a pair that does not exist; the installed pair works, so it is kept, and with
    # no package index and an empty wheel folder nothing has to be downloaded.
    empty = tmp_path / "wheels"
    empty.mkdir()
    result = run(["bash", "scripts/install.sh"], env={
        "TORCH_VERSION": "0.0.1", "TORCHVISION_VERSION": "0.0.1", "WHEELS": str(empty),
    })
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "[install] keeping this torch + torchvision" in result.stdout
    assert "installing torch" not in result.stdout
    assert f"torch {torch.__version__}" in result.stdout
    assert result.stdout.rstrip().endswith("[install] done")


@pytest.mark.slow
def test_installer_installs_torchvision_for_the_kept_torch_and_explains_a_failure(tmp_path):
    stubs = stub_module(tmp_path / "stubs", "torchvision", "raise ImportError('broken build')")
    empty = tmp_path / "wheels"
    empty.mkdir()
    result = run(["bash", "scripts/install.sh"], stubs, env={"WHEELS": str(empty)})
    series = matching_torchvision(torch.__version__)
    assert result.returncode == 1
    assert f"torch {torch.__version__} is kept; installing torchvision {series}.*" in result.stdout
    assert f"ERROR: torchvision {series} does not run with torch {torch.__version__}" in result.stderr
    assert "Traceback" not in result.stderr
    assert torch.__version__ in run([sys.executable, "-c", "import torch; print(torch.__version__)"]).stdout
