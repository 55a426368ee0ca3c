"""The one image reader: prepare_nuclei, predict.py and the evaluator see the same 8-bit pixels."""
import os
import re

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO
from detectron2.data.detection_utils import read_image
from detectron2.structures import Boxes, Instances
from PIL import Image

from maskrcnnpp.config_loader import build_cfg
from maskrcnnpp.data.images import ORIENTATION_TAG, read_header, read_rgb8
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


def test_a_jpeg_reads_upright_as_detectron2s_training_loader_reads_it(tmp_path):
    pixels = np.zeros((40, 60, 3), np.uint8)  # stored 60 wide, 40 high
    pixels[:10, :20] = 255  # a bright block at the stored top left
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6  # viewers turn it a quarter clockwise: 40 wide, 60 high
    path = str(tmp_path / "turned.jpg")
    Image.fromarray(pixels).save(path, exif=exif, quality=100)
    upright = read_rgb8(path)
    assert upright.shape == (60, 40, 3)
    assert np.array_equal(upright, read_image(path, format="RGB"))
    assert upright[:20, -10:].mean() > 200 and upright[-20:, :10].mean() < 50  # block now top right
    assert read_header(path)[:2] == (40, 60)


def test_a_tiff_of_several_pages_is_refused_not_read_as_its_first(tmp_path):
    path = str(tmp_path / "stack.tif")
    pages = [Image.fromarray(np.full((16, 16), value, np.uint8)) for value in (10, 20, 30)]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    with pytest.raises(UserInputError, match=re.escape(
            f"Image {path} is a TIFF of 3 pages (a stack or time series), and Mask R-CNN++ "
            "segments one 2-D image per file: save each page you want as its own file.")):
        read_rgb8(path)
    single = str(tmp_path / "single.tif")
    pages[0].save(single)
    assert read_rgb8(single).shape == (16, 16, 3)


def test_file_names_that_are_not_utf8_are_read_and_written(tmp_path, monkeypatch):
    # cv2.imread and cv2.imwrite crash the process (a segmentation fault) on such a name.
    name = os.fsdecode(b"nucleus-\xff")  # a Latin-1 "ÿ" as a Linux file system may hold it
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    nucleus = np.zeros((32, 32), np.uint8)
    nucleus[8:20, 8:20] = 1
    cv2.imencode(".png", nucleus * 200)[1].tofile(str(images / f"{name}.png"))
    cv2.imencode(".png", nucleus)[1].tofile(str(labels / f"{name}.png"))
    assert read_rgb8(str(images / f"{name}.png"))[10, 10].tolist() == [200, 200, 200]
    prepare_labelmaps(images, labels, tmp_path / "prepared", val_fraction=0)
    written = np.fromfile(str(tmp_path / "prepared" / "images" / f"{name}.png"), np.uint8)
    assert np.array_equal(cv2.imdecode(written, cv2.IMREAD_GRAYSCALE), nucleus * 200)

    def empty_predictor(cfg):
        return lambda bgr: {"instances": Instances(
            bgr.shape[:2], pred_boxes=Boxes(torch.zeros(0, 4)), scores=torch.zeros(0),
            pred_classes=torch.zeros(0, dtype=torch.long),
            pred_masks=torch.zeros(0, *bgr.shape[:2], dtype=torch.bool))}

    monkeypatch.setattr(predict_files.TiledPredictor, "from_config", empty_predictor)
    monkeypatch.setattr(predict_files, "category_ids", lambda name: {0: 1})
    cfg = build_cfg(os.path.join(REPO, "configs", "quickstart_synthetic.yaml"))
    (tmp_path / "out").mkdir()
    predict_files.predict_images(cfg, [str(images / f"{name}.png")], str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path / "out")) == [
        "coco_instances_results.json", f"{name}_labels.png", f"{name}_overlay.png"]
