"""Export (maskrcnnpp/export.py, tools/export_model.py): the dense backbone scripts to exactly the
eager network for every option; a Mask R-CNN++ model scripted, traced and in ONNX (onnxruntime)
gives PyTorch's detections, also on an image size it was not traced on; what cannot be exported
is refused with one line that says what to do."""
import json

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import Boxes
from test_dense_fpn import TINY, VARIANTS, disc_batch, make_cfg, train_losses, variant_opts

import detectron2.export  # noqa: F401  (its import makes detectron2's ResNet scriptable)
from maskrcnnpp.errors import UserInputError
from maskrcnnpp.export import MIN_ONNX_OPSET, check_and_time, check_opset, compare, export, within

from conftest import run_tool

pytest.importorskip("onnxruntime")


def images(*sizes):
    return [disc_batch(1, size=size, seed=size)[0]["image"] for size in sizes]


@pytest.mark.parametrize("variant", VARIANTS, ids="-".join)
def test_scripted_dense_backbone_equals_eager(variant):
    backbone = build_backbone(make_cfg("maskrcnnpp_R50.yaml", *variant_opts(*variant))).eval()
    scripted = torch.jit.script(backbone)
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        eager, script = backbone(x), scripted(x)
    assert list(script) == list(eager) == ["p2", "p3", "p4", "p5", "p6"]
    for name in eager:
        assert torch.equal(script[name], eager[name]), name


@pytest.mark.parametrize("config,opts", [
    ("maskrcnnpp_R50.yaml", ["MODEL.DENSE_FPN.INFERENCE_DEPTH", 1]),  # pruned
    ("maskrcnnpp_R50.yaml", ["MODEL.BACKBONE.NAME", "build_retinanet_resnet_dense_fpn_backbone",
                             "MODEL.FPN.IN_FEATURES", ["res3", "res4", "res5"]]),  # p3-p7
])
def test_scripted_pruned_and_retinanet_backbones_equal_eager(config, opts):
    backbone = build_backbone(make_cfg(config, *opts)).eval()
    scripted = torch.jit.script(backbone)
    x = torch.rand(1, 3, 128, 96)
    with torch.no_grad():
        eager, script = backbone(x), scripted(x)
    assert list(script) == list(eager)
    assert all(torch.equal(script[name], eager[name]) for name in eager)


@pytest.fixture(scope="module")
def trained_dense():
    """A tiny Mask R-CNN++ trained 20 steps on discs, keeping its top 20 detections."""
    torch.manual_seed(0)
    model = build_model(make_cfg("maskrcnnpp_R50.yaml", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0))
    train_losses(model, disc_batch(), iterations=20)
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["scripting", "tracing", "onnx"])
def test_exported_model_gives_pytorchs_detections(trained_dense, method, tmp_path):
    traced_on, other = images(128, 96)
    names = list(trained_dense.state_dict())
    exported = export(trained_dense, method, traced_on, str(tmp_path))
    assert list(trained_dense.state_dict()) == names  # the model itself is left as it was
    checks = check_and_time(trained_dense, exported, [traced_on, other], repeats=1)
    for difference in checks["differences"]:
        assert difference["count"] is None and difference["detections"] > 0, difference
        assert within(difference), difference
    assert exported.path == str(tmp_path / ("model.onnx" if method == "onnx" else "model.ts"))
    assert [p.name for p in tmp_path.iterdir()] == [exported.path.split("/")[-1]]  # no temp file


@pytest.mark.slow  # trains the shared tiny model
def test_compare_finds_a_moved_box_a_changed_class_and_a_missing_detection(trained_dense):
    with torch.no_grad():
        (reference,) = trained_dense.inference([{"image": images(128)[0]}], do_postprocess=False)
    assert len(reference) > 1 and within(compare(reference, reference))
    moved = reference[:]
    moved.pred_boxes = Boxes(reference.pred_boxes.tensor.clone())
    moved.pred_boxes.tensor[0, 0] += 0.5
    assert compare(reference, moved)["box_pixels"] == pytest.approx(0.5) and not within(
        compare(reference, moved))
    relabelled = reference[:]
    relabelled.pred_classes = relabelled.pred_classes + 1
    assert not compare(reference, relabelled)["classes_equal"]
    assert compare(reference, reference[1:])["count"] == (len(reference), len(reference) - 1)


@pytest.mark.parametrize("opset", [9, 11, MIN_ONNX_OPSET - 1, 99])
def test_an_onnx_opset_that_cannot_hold_roialign_v2_is_refused(opset):
    with pytest.raises(UserInputError, match=f"ONNX opset {opset} cannot hold this model.*RoiAlign"):
        check_opset(opset)


@pytest.mark.slow
def test_an_op_onnx_cannot_export_is_named_with_what_to_do(tmp_path):
    # UNet 3+ max-pools finer levels to a size read from the image: not an ONNX op for any size.
    model = build_model(make_cfg("maskrcnnpp_R50.yaml", "MODEL.DENSE_FPN.TOPOLOGY", "fullscale"))
    image = images(128)[0]
    with pytest.raises(UserInputError, match=r"Export by onnx failed: Unsupported: ONNX export of "
                       r"operator adaptive pooling.*--method tracing or scripting"):
        export(model.eval(), "onnx", image, str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    exported = export(model, "tracing", image, str(tmp_path))  # the advice works
    assert within(check_and_time(model, exported, [image], repeats=1)["differences"][0])


@pytest.mark.slow
def test_export_tool_writes_the_model_and_a_report_of_agreement_and_latency(
        trained_dense, tiny_nuclei, tmp_path):
    weights = tmp_path / "model_final.pth"
    DetectionCheckpointer(trained_dense, save_dir=str(tmp_path)).save("model_final")
    cfg_opts = [str(v) for v in TINY] + ["INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128"]
    out = tmp_path / "export"
    result = run_tool("export_model.py", "--config-file", "configs/maskrcnnpp_R50.yaml",
                      "--weights", str(weights), "--method", "tracing", "--output", str(out),
                      "--repeats", "1", *tiny_nuclei["opts"], *cfg_opts)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "export_report.json").read_text())
    assert [image["agrees"] for image in report["images"]] == [True, True]
    assert report["eager_ms"] > 0 and report["exported_ms"] > 0 and (out / "model.ts").is_file()
    assert "Latency per image" in result.stdout

    bad = run_tool("export_model.py", "--config-file", "configs/maskrcnnpp_R50.yaml",
                   "--weights", str(weights), "--method", "onnx", "--opset", "11",
                   "--output", str(tmp_path / "bad"), *tiny_nuclei["opts"], *cfg_opts)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "ONNX opset 11 cannot hold this model" in bad.stderr and not (tmp_path / "bad").exists()
