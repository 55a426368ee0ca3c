"""maskrcnnpp.model_zoo works like detectron2.model_zoo, from any directory, after a plain install."""
import os
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO

from maskrcnnpp import model_zoo
from maskrcnnpp.errors import UserInputError

USE_ZOO = """
import os, sys, maskrcnnpp
from maskrcnnpp import model_zoo
assert os.path.dirname(maskrcnnpp.__file__).startswith(sys.argv[1]), maskrcnnpp.__file__
print(model_zoo.get_config_file("maskrcnnpp_R50.yaml"))
cfg = model_zoo.get_config("maskrcnnpp_R50.yaml")
assert cfg.MODEL.BACKBONE.NAME == "build_resnet_dense_fpn_backbone", cfg.MODEL.BACKBONE.NAME
assert cfg.MODEL.DENSE_FPN.TOPOLOGY == "dense"
assert model_zoo.get_config("lazy/maskrcnnpp_R50.py").model.backbone.topology == "dense"
print("configs:", len(model_zoo.list_configs()))
"""


def test_lists_and_finds_the_shipped_configs():
    names = model_zoo.list_configs()
    assert {"Base-Nuclei.yaml", "maskrcnn_R50_FPN.yaml", "maskrcnnpp_R50.yaml",
            "lazy/maskrcnn_R50_FPN.py", "lazy/maskrcnnpp_R50.py"} <= set(names)
    for detector in ("cascade_maskrcnnpp_R50", "pointrend_maskrcnnpp_R50", "retinanetpp_R50"):
        assert {f"{detector}.yaml", f"lazy/{detector}.py"} <= set(names)
    assert "lazy/_dense_neck.py" not in names  # a helper of the configs, not one
    assert os.path.isfile(model_zoo.get_config_file("maskrcnn_R50_FPN.yaml"))


def test_unknown_config_name_suggests_the_closest():
    with pytest.raises(UserInputError, match="Did you mean 'maskrcnnpp_R50.yaml'"):
        model_zoo.get_config_file("maskrcnnpp_R5.yaml")


@pytest.mark.parametrize("name", ["maskrcnnpp_R50.yaml", "lazy/maskrcnnpp_R50.py"])
def test_get_builds_the_dense_model_on_cpu(name):
    model = model_zoo.get(name, device="cpu")
    assert not model.training
    assert type(model.backbone).__name__ == "DenseFPN"
    with pytest.raises(UserInputError, match="No trained Mask R-CNN\\+\\+ weights"):
        model_zoo.get("maskrcnnpp_R50.yaml", trained=True)


@pytest.mark.slow
def test_works_from_a_non_editable_install_in_another_directory(tmp_path):
    """The configs ship as package data: a wheel installed elsewhere finds them from any cwd."""
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "cwd"
    elsewhere.mkdir()
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", REPO, "--no-deps", "--no-build-isolation", "-q", "-w", wheels],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("maskrcnnpp-*.whl")
    zipfile.ZipFile(wheel).extractall(target)
    result = subprocess.run(
        [sys.executable, "-c", USE_ZOO, str(target)], cwd=elsewhere, capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=str(target)),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0] == str(target / "maskrcnnpp" / "configs" / "maskrcnnpp_R50.yaml")
