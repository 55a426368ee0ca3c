"""tools/neck_report.py and maskrcnnpp.modeling.cost on tiny ResNet-18 configs at 64x64."""

import importlib.util
import json
from pathlib import Path

import pytest

from maskrcnnpp.modeling.cost import cost_table, write_cost_table

REPO = Path(__file__).resolve().parents[1]
TINY = """
MODEL:
  RESNETS: {{DEPTH: 18, RES2_OUT_CHANNELS: 64}}
  FPN: {{OUT_CHANNELS: 64}}
  DENSE_FPN: {{NODE_WIDTH: 32, {dense}}}
  RPN: {{PRE_NMS_TOPK_TEST: 200, POST_NMS_TOPK_TEST: 50}}
  ROI_BOX_HEAD: {{NUM_CONV: 0, FC_DIM: 128}}
  ROI_MASK_HEAD: {{NUM_CONV: 1, CONV_DIM: 64}}
  DEVICE: "cpu"
TEST: {{DETECTIONS_PER_IMAGE: 10}}
"""


def _load_cli():
    spec = importlib.util.spec_from_file_location("neck_report", REPO / "tools" / "neck_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


neck_report = _load_cli()


def tiny_config(tmp_path, name, base, dense="INFERENCE_DEPTH: 0"):
    path = tmp_path / name
    path.write_text(f'_BASE_: "{REPO / "configs" / base}"\n' + TINY.format(dense=dense))
    return str(path)


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("configs")
    return {
        "fpn": tiny_config(tmp_path, "fpn.yaml", "maskrcnn_R50_FPN.yaml"),
        "dense": tiny_config(tmp_path, "dense.yaml", "maskrcnnpp_R50.yaml"),
        "pruned": tiny_config(tmp_path, "pruned.yaml", "maskrcnnpp_R50.yaml", "INFERENCE_DEPTH: 1"),
        # The FPN topology of the framework at FPN's width: must cost exactly what FPN costs.
        "ours_fpn": tiny_config(
            tmp_path, "ours_fpn.yaml", "maskrcnnpp_R50_fpn.yaml", "NODE_WIDTH: 64"
        ),
    }


@pytest.fixture(scope="module")
def rows(configs):
    return cost_table(
        [configs["dense"], configs["pruned"], configs["ours_fpn"]], size=64, baseline=configs["fpn"]
    )


def test_costs_and_ratios_to_the_baseline(rows):
    fpn, dense, pruned, ours_fpn = rows
    assert [r["config"] for r in rows] == ["fpn.yaml", "dense.yaml", "pruned.yaml", "ours_fpn.yaml"]
    assert fpn["neck"] == "build_resnet_fpn_backbone"
    assert dense["neck"] == "dense concat+reduce_conv3x3 w32"
    assert pruned["neck"] == "dense concat+reduce_conv3x3 w32 depth 1"
    assert fpn["neck_flops_ratio"] == fpn["model_params_ratio"] == 1.0
    for key in ["neck_params", "neck_flops", "backbone_flops", "model_params"]:
        assert ours_fpn[key] == fpn[key], key
    assert 0 < dense["neck_flops"] < dense["backbone_flops"]
    assert (
        dense["backbone_flops"] - dense["neck_flops"] == fpn["backbone_flops"] - fpn["neck_flops"]
    )
    assert pruned["neck_flops"] < dense["neck_flops"]
    assert pruned["model_params"] == dense["model_params"]  # pruning skips nodes, keeps weights
    assert dense["neck_flops_ratio"] == pytest.approx(dense["neck_flops"] / fpn["neck_flops"])


def test_markdown_table(rows, tmp_path):
    path = tmp_path / "costs.md"
    write_cost_table(rows, str(path), size=64)
    lines = path.read_text().splitlines()
    assert lines[0] == "Costs at 64x64 (fvcore: 1 multiply-add = 1 flop)"
    assert "neck GFLOPs" in lines[2] and "backbone flops ratio" in lines[2]
    assert len(lines) == 4 + len(rows)
    assert lines[4].startswith("| fpn.yaml") and "1.00x" in lines[4]


def test_cli_prints_the_table_and_writes_json(configs, tmp_path, capsys):
    out = tmp_path / "report" / "costs.json"
    assert neck_report.main([configs["fpn"], "--size", "64", "--out", str(out)]) == 0
    assert "build_resnet_fpn_backbone" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["image_size"] == 64
    assert report["rows"][0]["config"] == "fpn.yaml"
    assert report["rows"][0]["backbone_flops_ratio"] == 1.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.yaml"], "does not exist"),
        (["{fpn}", "--out", "report.txt"], ".md or .json"),
        (["{fpn}", "--size", "16"], "--size 16 is too small"),
        (["{dense}+MODEL.DENSE_FPN.NODE_WIDTH"], "write a config variant as path.yaml+KEY=VALUE"),
    ],
)
def test_cli_reports_bad_input_as_one_line(configs, args, message, capsys):
    assert neck_report.main([a.format(**configs) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_a_config_variant_costs_what_the_equivalent_config_costs(configs, rows):
    (variant,) = cost_table([configs["dense"] + "+MODEL.DENSE_FPN.INFERENCE_DEPTH=1"], size=64)
    pruned = next(row for row in rows if row["config"] == "pruned.yaml")
    assert variant["config"] == "dense.yaml+MODEL.DENSE_FPN.INFERENCE_DEPTH=1"
    assert variant["neck"].endswith("depth 1")
    assert variant["neck_flops"] == pruned["neck_flops"]
