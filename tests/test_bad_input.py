"""Bad input gives one clear error that says what is wrong and how to fix it, and writes nothing."""
import json
import os

import pytest
import torch
from conftest import run_tool

from maskrcnnpp.config import build_cfg
from maskrcnnpp.data.datasets import check_datasets
from maskrcnnpp.errors import UserInputError

QUICKSTART = "configs/quickstart_synthetic.yaml"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def error_of(*opts, config_file=QUICKSTART):
    with pytest.raises(UserInputError) as info:
        cfg = build_cfg(config_file, opts)
        check_datasets(cfg, cfg.DATASETS.TRAIN + cfg.DATASETS.TEST)
    return str(info.value)


@pytest.mark.slow
def test_cli_prints_one_error_line_and_writes_nothing(tmp_path):
    output_dir = tmp_path / "out"
    result = run_tool("train_net.py", "--config-file", "configs/no_such.yaml", "OUTPUT_DIR", output_dir)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: Config file configs/no_such.yaml does not exist"
    )
    assert not output_dir.exists()


def test_missing_config_file():
    assert "list the shipped ones" in error_of(config_file="configs/no_such.yaml")


def test_misspelled_key_suggests_the_right_one():
    message = error_of("SOLVER.MAX_ITERS", "5")
    assert "unknown config key SOLVER.MAX_ITERS" in message
    assert "Did you mean 'SOLVER.MAX_ITER'?" in message


def test_misspelled_key_in_config_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{os.path.abspath(QUICKSTART)}"\nMODEL:\n  DENSE_FPN:\n    TOPOLGY: "dense"\n')
    message = error_of(config_file=str(bad))
    assert "unknown config key MODEL.DENSE_FPN.TOPOLGY" in message
    assert "MODEL.DENSE_FPN.TOPOLOGY" in message


def test_wrong_value_type():
    assert "SOLVER.MAX_ITER" in error_of("SOLVER.MAX_ITER", "'many'")


def test_unregistered_dataset():
    message = error_of("DATASETS.TRAIN", "('nuclei_synthetic_trian',)")
    assert "Dataset 'nuclei_synthetic_trian' is not registered" in message
    assert "Did you mean 'nuclei_synthetic_train'?" in message


@pytest.mark.slow
def test_missing_data_names_the_prepare_command(tmp_path):
    result = run_tool(
        "train_net.py", "--config-file", QUICKSTART, "DATASETS.TRAIN", "('dsb2018_train',)",
        "OUTPUT_DIR", tmp_path / "out", env={"DETECTRON2_DATASETS": str(tmp_path / "empty")},
    )
    assert result.returncode == 2
    assert "does not exist. Prepare it with: python datasets/prepare_nuclei.py dsb2018" in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_image_folder(tmp_path):
    (tmp_path / "annotations.json").write_text("{}")
    entry = str([["no_images", str(tmp_path / "annotations.json"), str(tmp_path / "images")]])
    message = error_of("DATASETS.COCO_NUCLEI", entry, "DATASETS.TRAIN", "('no_images',)")
    assert f"image folder {tmp_path / 'images'} does not exist" in message


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("not_json", "{not json", "is not valid JSON"),
        ("not_coco", json.dumps({"images": []}), "is not a COCO instance file"),
    ],
)
def test_malformed_coco_file(tmp_path, name, content, problem):
    (tmp_path / "images").mkdir()
    annotations = tmp_path / "annotations.json"
    annotations.write_text(content)
    entry = str([[name, str(annotations), str(tmp_path / "images")]])
    message = error_of("DATASETS.COCO_NUCLEI", entry, "DATASETS.TRAIN", f"('{name}',)")
    assert f"Dataset '{name}': {annotations} {problem}" in message


@pytest.mark.slow
def test_eval_only_without_weights(tmp_path):
    result = run_tool(
        "train_net.py", "--config-file", QUICKSTART, "--eval-only", "MODEL.WEIGHTS", "nope.pth",
        "OUTPUT_DIR", tmp_path / "out",
    )
    assert result.returncode == 2
    assert "--eval-only needs trained weights" in result.stderr


no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="tests the machine without a GPU")


@pytest.mark.slow
@no_gpu
def test_a_chosen_cuda_device_without_a_gpu_says_why_and_how_to_run_on_the_cpu(tmp_path):
    result = run_tool("train_net.py", "--config-file", QUICKSTART, "MODEL.DEVICE", "cuda",
                      "OUTPUT_DIR", tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: MODEL.DEVICE='cuda' needs a GPU, but no GPU is visible here")
    assert "set MODEL.DEVICE cpu" in result.stderr
    assert not (tmp_path / "out").exists()


@no_gpu
def test_amp_typed_on_the_command_line_of_a_cpu_run_is_refused():
    assert "runs on a GPU only" in error_of("SOLVER.AMP.ENABLED", "True")


@no_gpu
def test_the_gpu_recipe_falls_back_to_float32_on_the_cpu():
    cfg = build_cfg("configs/maskrcnnpp_R50.yaml")
    assert (cfg.MODEL.DEVICE, cfg.SOLVER.AMP.ENABLED) == ("cpu", False)


@pytest.mark.slow
@no_gpu
def test_benchmark_on_cuda_without_a_gpu_says_why(tmp_path):
    result = run_tool("benchmark.py", "--config-file", QUICKSTART, "--device", "cuda")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Measuring on device 'cuda' needs a GPU, but no GPU is visible here" in result.stderr


@pytest.mark.parametrize("opts, message", [
    (("MODEL.DEVICE", "tpu"), "MODEL.DEVICE='tpu' is not valid"),
    (("DATALOADER.NUM_WORKERS", "-2"), "DATALOADER.NUM_WORKERS=-2: use 0"),
])
def test_bad_device_and_worker_settings(opts, message):
    assert message in error_of(*opts)
