"""The napari plugin (maskrcnnpp/napari_plugin.py) in a real napari viewer: its manifest is valid,
its Labels layer is tools/predict.py's label map of the same image (16-bit grey and larger than a
tile; RGB), its Points layer holds the kept nuclei's scores, and bad input is one error message
that leaves the viewer as it was.

napari draws its canvas with OpenGL, which Qt's offscreen platform cannot host (Qt 6 refuses
QOpenGLWidget there), so the viewer runs on an X display: the user's, or a virtual one (Xvfb).
"""
import json
import os
import shutil
import subprocess

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, run_tool
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from maskrcnnpp.config_loader import build_cfg
from maskrcnnpp.data.coco_io import write_rgb_png
from maskrcnnpp.data.synthetic import render_scene
from maskrcnnpp.inference.tiling import batch_count

napari = pytest.importorskip("napari", reason='the napari extra: pip install -e ".[napari]"')
from npe2 import PluginManifest  # noqa: E402  (napari's dependency)

from maskrcnnpp.napari_plugin import CONFIG_FROM_FILE  # noqa: E402

# A small model whose random weights score about 0.5: the model keeps every detection, and the
# score threshold (0.5, the default) keeps about half. 128-px tiles overlapping by 32, as in
# tests/test_predict.py: a 160 x 200 image goes through overlap-tile inference.
TINY_CONFIG = """\
_BASE_: "{base}"
INPUT: {{MIN_SIZE_TEST: 128, MAX_SIZE_TEST: 128}}
MODEL: {{ROI_HEADS: {{SCORE_THRESH_TEST: 0.0}}, RPN: {{POST_NMS_TOPK_TEST: 100}}}}
TEST: {{DETECTIONS_PER_IMAGE: 50, TILE: {{SIZE: 128, OVERLAP: 32}}}}
"""
TILE_SIZE, SCORE_THRESHOLD = 128, 0.5
SEGMENTATION_TIMEOUT_MS = 120_000


@pytest.fixture(scope="session")
def x_display():
    """An X display for napari's OpenGL canvas: the user's, else a virtual one (Xvfb) for the
    session, which Qt reaches through its xcb platform."""
    if os.environ.get("DISPLAY"):
        yield
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip("no X display and no Xvfb for napari's canvas: apt-get install xvfb (.ci/run "
                    "installs it and the X libraries Qt needs)")
    read, write = os.pipe()
    server = subprocess.Popen([xvfb, "-displayfd", str(write), "-screen", "0", "1280x1024x24",
                               "-nolisten", "tcp"], pass_fds=(write,),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as numbers:  # Xvfb writes the display's number once it listens
        display = numbers.readline().strip()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DISPLAY", f":{display}")
        env.setenv("QT_QPA_PLATFORM", "xcb")
        yield
    server.terminate()
    server.wait()


@pytest.fixture(scope="session")
def qapp(x_display, qapp):
    """pytest-qt's QApplication, made once the X display is set."""
    return qapp


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """The config file and random-init weights of a small Mask R-CNN (the quickstart's)."""
    folder = tmp_path_factory.mktemp("model")
    config = folder / "config.yaml"
    config.write_text(TINY_CONFIG.format(base=os.path.join(REPO, "configs",
                                                           "quickstart_synthetic.yaml")))
    torch.manual_seed(0)
    model = build_model(build_cfg(str(config)))
    DetectionCheckpointer(model, save_dir=str(folder)).save("model_final")
    return str(config), str(folder / "model_final.pth")


@pytest.fixture(scope="module")
def predicted(tiny_model, tmp_path_factory):
    """Two images (16-bit grey larger than a tile; RGB smaller) and tools/predict.py's output."""
    folder = tmp_path_factory.mktemp("predict")
    images = folder / "images"
    images.mkdir()
    grey = render_scene(np.random.default_rng(0), 160, 200)[0][:, :, 0]
    cv2.imwrite(str(images / "grey16.png"), grey.astype(np.uint16) * 200 + 1000)
    write_rgb_png(images / "rgb.png", render_scene(np.random.default_rng(1), 100, 120)[0])
    config, weights = tiny_model
    result = run_tool("predict.py", "--config-file", config, "--weights", weights,
                      "--input", images, "--output", folder / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    return images, folder / "out"


@pytest.fixture
def viewer_and_widget(make_napari_viewer):
    """A napari viewer with the plugin's widget docked, found through its manifest."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("maskrcnnpp", "Segment nuclei")
    return viewer, widget


def segment(qtbot, widget, layer, config, weights, score_points=False, tile_size=TILE_SIZE):
    """Fill in the widget, click Segment and wait until its worker ends."""
    widget.image.value = layer
    if config.endswith(".yaml") and os.path.isabs(config):
        widget.config.value, widget.config_file.value = CONFIG_FROM_FILE, config
    else:
        widget.config.value = config
    widget.weights.value = weights
    widget.tile_size.value = tile_size
    widget.score_threshold.value = SCORE_THRESHOLD
    widget.score_points.value = score_points
    widget.segment_button.native.click()
    qtbot.waitUntil(lambda: widget.segment_button.enabled, timeout=SEGMENTATION_TIMEOUT_MS)


def test_the_manifest_is_valid_and_names_an_importable_widget():
    manifest = PluginManifest.from_distribution("maskrcnnpp")
    manifest.validate_imports()  # npe2 validate --imports
    assert [widget.display_name for widget in manifest.contributions.widgets] == ["Segment nuclei"]


@pytest.mark.slow  # runs tools/predict.py
@pytest.mark.parametrize("name", ["grey16.png", "rgb.png"])
def test_the_labels_are_predict_pys_label_map_and_the_points_its_scores(
        viewer_and_widget, qtbot, tiny_model, predicted, name):
    viewer, widget = viewer_and_widget
    images, out = predicted
    [layer] = viewer.open(str(images / name), plugin="napari")
    config, weights = tiny_model
    widget.weights.value = weights
    assert str(widget.config_file.value) == config  # the training run's config.yaml, beside it
    segment(qtbot, widget, layer, config, weights, score_points=True)
    # the progress bar counted the model's loading and each tile batch
    batches = batch_count(build_cfg(config, ["TEST.TILE.SIZE", TILE_SIZE]), *layer.data.shape[:2])
    assert widget.worker.pbar.n == widget.worker.pbar.total == 1 + batches
    stem = name[:-4]
    expected = cv2.imread(str(out / f"{stem}_labels.png"), cv2.IMREAD_UNCHANGED)
    labels = viewer.layers[f"{stem} nuclei"]
    assert isinstance(labels, napari.layers.Labels)
    assert labels.data.shape == expected.shape and np.array_equal(labels.data, expected)
    results = [r for r in json.loads((out / "coco_instances_results.json").read_text())
               if r["file_name"] == name]
    kept = [r for r in results if r["score"] >= SCORE_THRESHOLD]
    assert 0 < expected.max() == len(kept) < len(results)  # the threshold leaves some out
    points = viewer.layers[f"{stem} scores"]
    assert np.allclose(points.features["score"], [r["score"] for r in kept])
    # each point is its nucleus' box centre, in napari's pixel coordinates
    centres = [(y + h / 2 - 0.5, x + w / 2 - 0.5) for x, y, w, h in (r["bbox"] for r in kept)]
    assert np.allclose(points.data, centres, atol=1e-3)


def layer_names(viewer):
    return [(layer.name, type(layer).__name__) for layer in viewer.layers]


def last_error():
    from napari.utils.notifications import notification_manager
    return notification_manager.records[-1].message


@pytest.mark.parametrize("shape, kind", [((3, 64, 64), "a stack"), ((64, 64, 2), "two channels")])
def test_a_3d_or_multichannel_layer_is_refused_and_nothing_added(
        viewer_and_widget, qtbot, tiny_model, shape, kind):
    viewer, widget = viewer_and_widget
    layer = viewer.add_image(np.zeros(shape, np.uint16), name=kind, rgb=False)
    before = layer_names(viewer)
    segment(qtbot, widget, layer, *tiny_model)
    assert last_error() == (
        f"Layer {kind!r} has shape {shape}: it is 3-D or multichannel, and the model reads one "
        "2-D grey or RGB image. Segment one plane or channel: right-click the layer and choose "
        "Split Stack (or Split RGB), then pick one of the new layers.")
    assert layer_names(viewer) == before


def test_no_weights_is_refused_and_nothing_added(viewer_and_widget, qtbot):
    viewer, widget = viewer_and_widget
    layer = viewer.add_image(np.zeros((64, 64), np.uint8), name="grey")
    segment(qtbot, widget, layer, "quickstart_synthetic.yaml", None)
    assert last_error().startswith("No weights file chosen: choose the trained model")
    assert layer_names(viewer) == [("grey", "Image")]


def test_weights_that_do_not_fit_the_config_are_refused_and_nothing_added(
        viewer_and_widget, qtbot, tiny_model):
    viewer, widget = viewer_and_widget
    layer = viewer.add_image(np.zeros((64, 64), np.uint8), name="grey")
    segment(qtbot, widget, layer, "quickstart_synthetic_dense.yaml", tiny_model[1],  # dense neck
            tile_size=512)  # above the config's TEST.TILE.OVERLAP
    assert last_error().startswith("The weights do not fit this model: parameters")
    assert layer_names(viewer) == [("grey", "Image")]
