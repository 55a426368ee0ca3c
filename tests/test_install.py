"""scripts/install.sh and scripts/check_torch.py: a working torch is kept whatever its version,
nothing is fetched when everything is present, a broken or old torch gets one clear message, and
where none is installed pip's resolver picks the newest matching pair the index and pip's
constraints allow."""
import base64
import hashlib
import importlib.metadata
import os
import re
import subprocess
import sys
import sysconfig
import zipfile

import pytest
import torch
from conftest import REPO

from maskrcnnpp.machine import matching_torch, matching_torchvision, torch_requirements

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


@pytest.mark.parametrize("torchvision_version, series", [
    ("0.29.1+cu130", "2.14"), ("0.20.0", "2.5"), ("0.15.2", "2.0"), ("0.14.1", None), ("1.0.0", None),
])
def test_torch_series_follows_the_torchvision_release(torchvision_version, series):
    assert matching_torch(torchvision_version) == series


@pytest.mark.parametrize("pins, requirements", [
    (("", ""), ["torch>=2.3,<2.15", "torchvision>=0.18,<0.30"]),
    (("2.5.1", ""), ["torch==2.5.1", "torchvision==0.20.*"]),
    (("2.14.1", "0.29.1"), ["torch==2.14.1", "torchvision==0.29.1"]),
    (("", "0.29.1"), ["torch>=2.3,<2.15", "torchvision==0.29.1"]),
], ids=["the supported range", "torch named", "both named", "torchvision named"])
def test_installer_requirements_are_the_supported_range_or_what_the_user_names(pins, requirements):
    assert torch_requirements(*pins) == requirements
    printed = run([sys.executable, CHECK_TORCH, "--requirements", *pins]).stdout.split()
    assert printed == requirements


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


# --- the pair installed where none works, chosen by pip's resolver from a package index ----------

# A package index shaped like the registry's: torch releases older than supported (2.2), within the
# range and newer than tested (2.15); torchvision releases that require their torch exactly and, as
# some do, any newer one too (torch>=).
INDEX = {
    "torch": {version: [] for version in
              ("2.2.2", "2.3.1", "2.12.0", "2.13.0", "2.14.0", "2.14.1", "2.15.0")},
    "torchvision": {"0.17.2": ["torch==2.2.2"], "0.18.1": ["torch==2.3.1"],
                    "0.28.0": ["torch>=2.13.0"], "0.29.0": ["torch==2.14.0"],
                    "0.29.1": ["torch>=2.14.0"], "0.29.2": ["torch==2.14.1"],
                    "0.30.0": ["torch==2.15.0"]},
}


def fake_wheel(folder, name, version, requires, files):
    """A wheel of ``name`` ``version`` holding ``files`` ({path: text}) and its metadata."""
    dist = f"{name}-{version}.dist-info"
    files = dict(files, **{
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                            + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    })
    record = [f"{path},sha256="
              + base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
              + f",{len(text.encode())}" for path, text in files.items()]
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name_in_wheel, text in files.items():
            wheel.writestr(name_in_wheel, text)
    return path.name


@pytest.fixture(scope="module")
def package_index(tmp_path_factory):
    """INDEX as a PEP 503 index of small wheels. Their torch holds no code: it puts this Python's
    site-packages on the path (a .pth file), so that once it is installed the real torch,
    torchvision and detectron2 import, as after a real installation, without gigabytes of wheels."""
    root = tmp_path_factory.mktemp("index")
    (root / "files").mkdir()
    site_packages = sysconfig.get_paths()["purelib"]
    shim = {"maskrcnnpp_test_site.pth": f"import site; site.addsitedir({site_packages!r})\n"}
    for name, releases in INDEX.items():
        links = [fake_wheel(root / "files", name, version, requires, shim if name == "torch" else {})
                 for version, requires in releases.items()]
        (root / "simple" / name).mkdir(parents=True)
        (root / "simple" / name / "index.html").write_text(
            "".join(f'<a href="../../files/{link}">{link}</a>\n' for link in links))
    return root / "simple"


@pytest.mark.slow
@pytest.mark.parametrize("cap, steps, chosen", [
    ("torchvision<=0.29.1", [], ("2.14.1", "0.29.1")),
    ("torchvision<0.29", ["torchvision 0.28.0 is built for torch 2.13, not 2.14.1: installing torch 2.13.*"],
     ("2.13.0", "0.28.0")),
], ids=["newest torchvision capped", "a torchvision that accepts newer torch"])
def test_installer_installs_the_newest_matching_pair_the_index_and_constraints_allow(
        cap, steps, chosen, package_index, tmp_path):
    # A fresh venv without torch, pip configured with this index only and a constraints file
    # that caps torchvision below the newest release (as this machine's pip is).
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    python = str(tmp_path / "venv" / "bin" / "python")
    (tmp_path / "constraints.txt").write_text(cap + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(PYTHON=python, PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=package_index.as_uri(),
               PIP_CONSTRAINT=str(tmp_path / "constraints.txt"), PIP_DISABLE_PIP_VERSION_CHECK="1")
    result = subprocess.run(["bash", "scripts/install.sh"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("[install] ")]
    start = lines.index("[install] installing the newest torch + torchvision the package index "
                        "offers for torch>=2.3,<2.15 torchvision>=0.18,<0.30")
    assert lines[start + 1:start + 2 + len(steps)] == [
        *(f"[install] {step}" for step in steps), f"[install] chose torch {chosen[0]} + torchvision {chosen[1]}"]
    assert lines[-1] == "[install] done"
    installed = subprocess.run(
        [python, "-c", "from importlib.metadata import version; print(version('torch'), version('torchvision'))"],
        env=env, capture_output=True, text=True).stdout.split()
    assert tuple(installed) == chosen
