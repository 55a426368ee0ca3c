"""The one image reader: prepare_nuclei, predict.py and the evaluator see the same 8-bit pixels."""
import os

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO
from detectron2.structures import Boxes, Instances

from maskrcnnpp.config_loader import build_cfg
from maskrcnnpp.data.images import read_rgb8
from maskrcnnpp.data.prepare import prepare_labelmaps
from maskrcnnpp.errors import UserInputError
from maskrcnnpp.inference import predict_files
from maskrcnnpp.inference.predict import read_bgr

# A dim 16-bit fluorescence image: values 900..4000 of 65535, a nucleus brighter than the rest.
DEEP = np.full((48, 64), 900, np.uint16)
DEEP[10:30, 20:40] = 4000
DEEP[0, :32] = np.linspace(900, 4000, 32)


@pytest.fixture
def deep_tiff(tmp_path):
    path = tmp_path / "images" / "deep.tif"
    path.parent.mkdir()
    assert cv2.imwrite(str(path), DEEP)
    return str(path)


def test_a_16_bit_tiff_is_stretched_not_saturated(deep_tiff):
    rgb = read_rgb8(deep_tiff)
    assert rgb.dtype == np.uint8 and rgb.shape == (48, 64, 3)
    assert rgb[0, 0, 0] == 0 and rgb[20, 30, 0] == 255 and 0 < rgb[0, 16, 0] < 255


def test_prediction_and_evaluation_see_what_preparation_wrote(deep_tiff, tmp_path, monkeypatch):
    labels = tmp_path / "labels"
    labels.mkdir()
    nucleus = np.zeros(DEEP.shape, np.uint8)
    nucleus[10:30, 20:40] = 1
    cv2.imwrite(str(labels / "deep.png"), nucleus)
    prepare_labelmaps(tmp_path / "images", labels, tmp_path / "prepared", val_fraction=0)
    prepared = cv2.imread(str(tmp_path / "prepared" / "images" / "deep.png"))  # BGR

    seen = []

    def recording_predictor(cfg):
        def run(bgr):
            seen.append(bgr.copy())
            empty = Instances(bgr.shape[:2], pred_boxes=Boxes(torch.zeros(0, 4)),
                              scores=torch.zeros(0), pred_classes=torch.zeros(0, dtype=torch.long),
                              pred_masks=torch.zeros(0, *bgr.shape[:2], dtype=torch.bool))
            return {"instances": empty}
        return run

    monkeypatch.setattr(predict_files.TiledPredictor, "from_config", recording_predictor)
    monkeypatch.setattr(predict_files, "category_ids", lambda name: {0: 1})
    cfg = build_cfg(os.path.join(REPO, "configs", "quickstart_synthetic.yaml"))
    predict_files.predict_images(cfg, [deep_tiff], str(tmp_path / "out"))
    assert np.array_equal(seen[0], prepared)
    assert np.array_equal(read_bgr({"file_name": deep_tiff})["bgr"], prepared)


def test_a_truncated_png_is_an_error_naming_it(tmp_path):
    path = tmp_path / "cut.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match="cut.png: it is not an image file OpenCV can decode"):
        read_rgb8(str(path))
