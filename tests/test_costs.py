"""tools/benchmark.py --flops-only and maskrcnnpp.analysis.cost on tiny ResNet-18 configs at 64x64:
what a neck costs, as ratios to FPN."""

import json
from pathlib import Path

import pytest
from conftest import load_tool

from maskrcnnpp import cli
from maskrcnnpp.analysis.benchmark_report import format_costs, named_configs
from maskrcnnpp.analysis.cost import cost_rows
from maskrcnnpp.analysis.speed import BenchmarkSettings, benchmark_cfg

benchmark = load_tool("benchmark")

pytestmark = pytest.mark.slow  # runs the tool or builds several models

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
"""


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
    settings = BenchmarkSettings(image_size=64, detections=10)
    named = named_configs([configs[k] for k in ("fpn", "dense", "pruned", "ours_fpn")], [])
    return cost_rows([(name, benchmark_cfg(cfg, settings)) for name, cfg in named], 64)


def test_costs_and_ratios_to_the_first_config(rows):
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


def test_cost_table(rows):
    lines = format_costs({"image_size": 64, "results": rows}).splitlines()
    assert lines[0].startswith("Costs at 64x64 (fvcore: 1 multiply-add = 1 flop")
    assert "neck GFLOPs" in lines[2] and "backbone flops ratio" in lines[2]
    assert len(lines) == 4 + len(rows)
    assert lines[4].startswith("| fpn.yaml") and "1.00x" in lines[4]


def test_cli_prints_the_table_and_writes_json_or_markdown(configs, tmp_path, capsys):
    for out in (tmp_path / "report" / "costs.json", tmp_path / "costs.md"):
        argv = ["--config-file", configs["fpn"], configs["dense"], "--flops-only",
                "--image-size", "64", "--out", str(out)]
        assert cli.run(benchmark.main, argv) == 0
        assert "build_resnet_fpn_backbone" in capsys.readouterr().out
    report = json.loads((tmp_path / "report" / "costs.json").read_text())
    assert report["image_size"] == 64 and report["results"][0]["config"] == "fpn.yaml"
    assert report["results"][1]["backbone_flops_ratio"] > 1.0
    assert (tmp_path / "costs.md").read_text().startswith("Costs at 64x64")


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.yaml"], "does not exist"),
        (["{fpn}", "--out", "report.txt"], ".json or .md"),
        (["{fpn}", "--image-size", "16"], "image_size=16 is too small"),
    ],
)
def test_cli_reports_bad_input_as_one_line(configs, args, message, capsys):
    argv = ["--config-file", *[a.format(**configs) for a in args], "--flops-only"]
    assert cli.run(benchmark.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
