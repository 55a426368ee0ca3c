"""tools/predict.py: overlays, 16-bit label maps and COCO results; tiles; unreadable images."""
import json

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from conftest import REPO, TINY_TRAINING, run_tool
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from maskrcnnpp.data.coco_io import write_rgb_png
from maskrcnnpp.data.synthetic import render_scene
from maskrcnnpp.config_loader import build_cfg

pytestmark = pytest.mark.slow  # runs the tool or builds several models

QUICKSTART = f"{REPO}/configs/quickstart_synthetic.yaml"
# (file, height, width): the second is larger than a tile (TEST.TILE.SIZE below), so it is tiled.
IMAGES = (("small.png", 128, 128), ("large.png", 160, 200))
# Random weights keep low scores: keep every detection, in the results and in the label maps.
PREDICT_OPTS = [*TINY_TRAINING, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                "TEST.NUCLEI.SCORE_THRESHOLD", "0.0", "TEST.TILE.SIZE", "128",
                "TEST.TILE.OVERLAP", "32"]


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predict")
    model = build_model(build_cfg(QUICKSTART, TINY_TRAINING))
    DetectionCheckpointer(model, save_dir=str(folder)).save("random_init")
    images = folder / "images"
    images.mkdir()
    for index, (name, height, width) in enumerate(IMAGES):
        write_rgb_png(images / name, render_scene(np.random.default_rng(index), height, width)[0])
    (images / "broken.png").write_text("not an image")
    output = folder / "out"
    result = run_tool(
        "predict.py", "--config-file", QUICKSTART, "--weights", folder / "random_init.pth",
        "--input", images, "--output", output, *PREDICT_OPTS,
    )
    return result, output


def test_an_unreadable_image_is_skipped_and_reported(predicted):
    result, _ = predicted
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Predicted 2 of 3 images" in result.stdout
    assert "skipped" in result.stdout and "broken.png" in result.stdout


def test_each_image_gets_an_overlay_a_label_map_and_its_coco_results(predicted):
    _, output = predicted
    results = json.loads((output / "coco_instances_results.json").read_text())
    assert {r["file_name"] for r in results} == {name for name, _, _ in IMAGES}
    for name, height, width in IMAGES:
        stem = name[:-4]
        overlay = cv2.imread(str(output / f"{stem}_overlay.png"), cv2.IMREAD_UNCHANGED)
        assert overlay.shape == (height, width, 3)
        labels = cv2.imread(str(output / f"{stem}_labels.png"), cv2.IMREAD_UNCHANGED)
        assert labels.dtype == np.uint16 and labels.shape == (height, width)
        ours = [r for r in results if r["file_name"] == name]
        assert len({r["image_id"] for r in ours}) == 1
        assert all(r["category_id"] == 1 and r["segmentation"]["size"] == [height, width]
                   for r in ours)
        assert 1 <= labels.max() <= len(ours)
        # The best instance is painted first: its label is exactly its RLE mask.
        best = int(np.argmax([r["score"] for r in ours]))
        mask = mask_util.decode(ours[best]["segmentation"]).astype(bool)
        assert np.array_equal(labels == best + 1, mask)
