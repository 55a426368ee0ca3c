"""datasets/prepare_nuclei.py: DSB2018 folders and label maps -> COCO that decodes to the source."""
import json
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from maskrcnnpp import cli
from maskrcnnpp.data.image_types import image_type
from maskrcnnpp.data.prepare import is_validation, prepare_dsb2018, prepare_labelmaps
from maskrcnnpp.errors import UserInputError

REPO = Path(__file__).resolve().parents[1]
REAL_DSB = Path(os.getenv("DSB2018_STAGE1_TRAIN", REPO.parent / "shared/data/dsb2018/stage1_train"))
HEIGHT, WIDTH = 24, 32


def disc(cx, cy, r, shape=(HEIGHT, WIDTH)):
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def write_dsb_image(src, image_id, image, masks, write=cv2.imwrite):
    """One Kaggle-layout folder; ``write(path, array)`` writes the image in the mode under test."""
    folder = src / image_id
    (folder / "images").mkdir(parents=True)
    write(str(folder / "images" / f"{image_id}.png"), image)
    if masks is not None:
        (folder / "masks").mkdir()
        for i, mask in enumerate(masks):
            cv2.imwrite(str(folder / "masks" / f"m{i}.png"), mask.astype(np.uint8) * 255)


def load(out, split="train"):
    with open(out / "annotations" / f"{split}.json") as f:
        return json.load(f)


def decoded_masks(coco, image_id):
    return [mask_util.decode(a["segmentation"]).astype(bool)
            for a in coco["annotations"] if a["image_id"] == image_id]


def read_rgb(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[:, :, ::-1]


def gray(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)


def test_dsb2018_round_trip_is_pixel_exact(tmp_path):
    masks = [disc(6, 6, 4), disc(20, 10, 6), disc(28, 20, 3)]
    write_dsb_image(tmp_path / "src", "a", np.dstack([gray()] * 3), masks)
    summary = prepare_dsb2018(tmp_path / "src", tmp_path / "out", val_fraction=0)

    coco = load(tmp_path / "out")
    assert [c["name"] for c in coco["categories"]] == ["nucleus"]
    [image] = coco["images"]
    assert (image["file_name"], image["height"], image["width"]) == ("a.png", HEIGHT, WIDTH)
    assert (tmp_path / "out" / "images" / "a.png").is_file()
    for annotation, source in zip(coco["annotations"], masks):
        ys, xs = np.nonzero(source)
        assert np.array_equal(mask_util.decode(annotation["segmentation"]), source)
        assert annotation["area"] == source.sum() and annotation["iscrowd"] == 0
        x, y = xs.min(), ys.min()
        assert annotation["bbox"] == [x, y, xs.max() - x + 1, ys.max() - y + 1]
    assert load(tmp_path / "out", "val")["images"] == []
    assert (summary.images, summary.nuclei, summary.warnings) == (1, 3, [])


def write_pil(mode):
    return lambda path, array: Image.fromarray(array, mode).save(path)


def write_palette(path, indices):
    image = Image.fromarray(indices, "P")
    image.putpalette(PALETTE.ravel().tolist())
    image.save(path)


PALETTE = np.random.default_rng(1).integers(0, 256, (256, 3), dtype=np.uint8)
RGBA = np.dstack([gray(1), gray(2), gray(3), np.full((HEIGHT, WIDTH), 255, np.uint8)])
GRAY16 = (gray(4).astype(np.uint16) * 40 + 1000)
RGB16 = np.dstack([gray(5), gray(6), gray(7)]).astype(np.uint16) * 200


def stretched(array, low, high):
    return np.round(np.clip((array - low) / (high - low), 0, 1) * 255).astype(np.uint8)


@pytest.mark.parametrize("intensity", ["percentile", "minmax"])
@pytest.mark.parametrize("mode,stored,write,expected_rgb", [
    ("rgba", RGBA, write_pil("RGBA"), lambda p: RGBA[:, :, :3]),
    ("gray", gray(8), cv2.imwrite, lambda p: np.dstack([gray(8)] * 3)),
    ("palette", gray(9), write_palette, lambda p: PALETTE[gray(9)]),
    ("gray16", GRAY16, cv2.imwrite,
     lambda p: np.dstack([stretched(GRAY16, *np.percentile(GRAY16, p))] * 3)),
    ("rgb16", RGB16[:, :, ::-1], cv2.imwrite,  # OpenCV writes BGR
     lambda p: stretched(RGB16, *np.percentile(RGB16, p))),
])
def test_every_image_mode_becomes_rgb8_with_the_stated_scaling(
        tmp_path, mode, stored, write, expected_rgb, intensity):
    write_dsb_image(tmp_path / "src", mode, stored, [disc(10, 10, 5)], write=write)
    prepare_dsb2018(tmp_path / "src", tmp_path / "out", intensity=intensity, val_fraction=0)
    percentiles = {"percentile": (0.1, 99.9), "minmax": (0, 100)}[intensity]
    assert np.array_equal(read_rgb(tmp_path / "out" / "images" / f"{mode}.png"),
                          expected_rgb(percentiles))


def test_empty_overlapping_and_missing_masks(tmp_path):
    src = tmp_path / "src"
    first, second = disc(10, 10, 6), disc(16, 10, 6)
    empty = np.zeros((HEIGHT, WIDTH), bool)
    write_dsb_image(src, "a", gray(), [first, empty, second, disc(10, 10, 2)])
    write_dsb_image(src, "b", gray(), [])  # empty masks folder
    write_dsb_image(src, "c", gray(), None)  # no masks folder
    summary = prepare_dsb2018(src, tmp_path / "out", val_fraction=0)

    coco = load(tmp_path / "out")
    # Overlapping pixels stay with the first mask in file-name order; a covered mask is dropped.
    assert [m.sum() for m in decoded_masks(coco, 1)] == [first.sum(), (second & ~first).sum()]
    assert np.array_equal(decoded_masks(coco, 1)[1], second & ~first)
    assert [i["file_name"] for i in coco["images"]] == ["a.png", "b.png", "c.png"]
    assert (summary.images, summary.negatives, summary.nuclei) == (3, 2, 2)
    assert summary.skipped_empty_masks == 1
    assert len(summary.warnings) == 2 and "m2.png" in summary.warnings[0]
    assert "dropped" in summary.warnings[1]
    assert summary.format().startswith(
        "3 images (3 train, 0 val; 2 without nuclei), 2 nuclei, 1 empty masks skipped, 2 warnings")


def test_a_failed_run_leaves_no_output_and_names_the_bad_mask(tmp_path):
    src = tmp_path / "src"
    write_dsb_image(src, "a", gray(), [disc(5, 5, 3)])
    write_dsb_image(src, "b", gray(), [disc(5, 5, 3, shape=(HEIGHT, WIDTH + 1))])
    with pytest.raises(UserInputError, match=r"b/masks/m0.png is 33x24 but its image is 32x24"):
        prepare_dsb2018(src, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["src"]  # neither out nor a temporary folder


@pytest.mark.parametrize("make_bad_source,message", [
    (lambda src: None, "does not exist"),
    (lambda src: src.mkdir(), "No image folders"),
    (lambda src: (src / "x" / "masks").mkdir(parents=True), "has no images/x.png"),
])
def test_bad_dsb_sources_are_user_errors(tmp_path, make_bad_source, message):
    make_bad_source(tmp_path / "src")
    with pytest.raises(UserInputError, match=message):
        prepare_dsb2018(tmp_path / "src", tmp_path / "out")


def test_existing_output_needs_overwrite(tmp_path):
    write_dsb_image(tmp_path / "src", "a", gray(), [disc(5, 5, 3)])
    (tmp_path / "out").mkdir()
    with pytest.raises(UserInputError, match="already exists; use --overwrite"):
        prepare_dsb2018(tmp_path / "src", tmp_path / "out")
    prepare_dsb2018(tmp_path / "src", tmp_path / "out", overwrite=True)
    assert load(tmp_path / "out")["images"][0]["file_name"] == "a.png"
    with pytest.raises(UserInputError, match="is or contains the input"):
        prepare_dsb2018(tmp_path / "src", tmp_path, overwrite=True)
    with pytest.raises(UserInputError, match="val_fraction=1.5"):
        prepare_dsb2018(tmp_path / "src", tmp_path / "out2", val_fraction=1.5)


def test_split_is_deterministic_and_stable_when_images_are_added(tmp_path):
    names = [f"image{i}" for i in range(2000)]
    in_val = {n for n in names if is_validation(n, 0.2, seed=3)}
    assert 0.17 < len(in_val) / len(names) < 0.23
    assert in_val == {n for n in names if is_validation(n, 0.2, seed=3)}
    assert in_val != {n for n in names if is_validation(n, 0.2, seed=4)}

    src = tmp_path / "src"
    for i in range(6):
        write_dsb_image(src, f"id{i}", gray(i), [disc(8, 8, 4)])
    prepare_dsb2018(src, tmp_path / "out1", val_fraction=0.5, seed=0)
    for i in range(6, 12):
        write_dsb_image(src, f"id{i}", gray(i), [disc(8, 8, 4)])
    prepare_dsb2018(src, tmp_path / "out2", val_fraction=0.5, seed=0)

    def split_names(out):
        return {s: {i["file_name"] for i in load(out, s)["images"]} for s in ("train", "val")}

    before, after = split_names(tmp_path / "out1"), split_names(tmp_path / "out2")
    assert before["train"] and before["val"]
    assert before["train"] <= after["train"] and before["val"] <= after["val"]


def write_mask_files(src, image_id, image, masks):
    """A Kaggle-layout folder whose masks are written as given (any values, any channels)."""
    write_dsb_image(src, image_id, image, [])
    for i, mask in enumerate(masks):
        cv2.imwrite(str(src / image_id / "masks" / f"m{i}.png"), mask)


TWO_PIECES = disc(6, 6, 3) | disc(25, 17, 3)


@pytest.mark.parametrize("pieces,nuclei", [("keep", [TWO_PIECES]),
                                           ("split", [disc(6, 6, 3), disc(25, 17, 3)])])
def test_masks_are_fixed_only_as_asked_and_every_fix_is_counted(tmp_path, pieces, nuclei):
    one_value = disc(16, 5, 3).astype(np.uint8) * 255
    grey_rgb = np.dstack([disc(28, 4, 2).astype(np.uint8) * 255] * 3)  # identical channels
    two_values = disc(14, 16, 4).astype(np.uint8) * 255
    two_values[16, 12:17] = 128  # a second foreground value, as in a resampled mask
    write_mask_files(tmp_path / "src", "a", gray(),
                     [TWO_PIECES.astype(np.uint8) * 255, one_value, grey_rgb, two_values])
    summary = prepare_dsb2018(tmp_path / "src", tmp_path / "out", val_fraction=0,
                              pieces=pieces, binarize=True)

    expected = [*nuclei, disc(16, 5, 3), disc(28, 4, 2), disc(14, 16, 4)]
    decoded = decoded_masks(load(tmp_path / "out"), 1)
    assert len(decoded) == len(expected)
    assert all(np.array_equal(a, b) for a, b in zip(decoded, expected))
    outcome = {"keep": "kept as one nucleus", "split": "split, one nucleus per piece"}[pieces]
    assert dict(summary.fixes) == {
        f"nuclei in several pieces {outcome} (--pieces {pieces})": 1,
        "masks with identical colour channels read as one channel": 1,
        "non-binary masks thresholded at half their maximum (--binarize-masks)": 1,
    }
    assert "Fixes: 1 nuclei in several pieces" in summary.format()


def test_a_label_in_pieces_is_split_into_nuclei_on_request(tmp_path):
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    labels = np.zeros((HEIGHT, WIDTH), np.uint8)
    labels[TWO_PIECES] = 5
    labels[disc(16, 5, 3)] = 9
    cv2.imwrite(str(tmp_path / "images" / "a.png"), gray())
    cv2.imwrite(str(tmp_path / "labels" / "a.png"), labels)
    with pytest.raises(UserInputError, match="a.png: label 5 is in 2 separate pieces"):
        prepare_labelmaps(tmp_path / "images", tmp_path / "labels", tmp_path / "out")
    summary = prepare_labelmaps(tmp_path / "images", tmp_path / "labels", tmp_path / "out",
                                val_fraction=0, pieces="split")
    decoded = decoded_masks(load(tmp_path / "out"), 1)
    assert sorted(m.sum() for m in decoded) == sorted(
        [disc(6, 6, 3).sum(), disc(25, 17, 3).sum(), disc(16, 5, 3).sum()])
    assert summary.nuclei == 3 and sum(summary.fixes.values()) == 1


def test_prepared_folders_are_readable_by_the_group_like_any_new_folder(tmp_path):
    write_dsb_image(tmp_path / "src", "a", gray(), [disc(5, 5, 3)])
    prepare_dsb2018(tmp_path / "src", tmp_path / "out")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask


@pytest.mark.slow
def test_sigterm_during_preparation_leaves_nothing_behind(tmp_path):
    src = tmp_path / "src"
    for i in range(150):
        write_dsb_image(src, f"id{i:03d}", gray(i), [disc(x, 12, 3) for x in range(4, 30, 4)])
    process = subprocess.Popen(
        [sys.executable, str(REPO / "datasets" / "prepare_nuclei.py"), "dsb2018", str(src),
         str(tmp_path / "out")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]:
        assert process.poll() is None and time.monotonic() < deadline, "no temporary folder seen"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0 and "Traceback" not in stderr
    assert sorted(os.listdir(tmp_path)) == ["src"]


LABELS = np.zeros((HEIGHT, WIDTH), np.int64)
LABELS[disc(8, 8, 5)] = 3
LABELS[disc(22, 14, 6)] = 250
LABELS[disc(26, 4, 2)] = 7


@pytest.mark.parametrize("name,dtype,scale", [
    ("l8.png", np.uint8, 1), ("l16.png", np.uint16, 200), ("l8.tif", np.uint8, 1),
    ("l16.tif", np.uint16, 200), ("l32.tif", np.uint32, 10**7), ("i32.tif", np.int32, 10**6),
    ("f32.tif", np.float32, 1000), ("palette.png", None, 1),
])
def test_label_maps_of_every_depth_round_trip(tmp_path, name, dtype, scale):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    stem = Path(name).stem
    cv2.imwrite(str(tmp_path / "images" / f"{stem}.tif"), GRAY16)
    labels = LABELS * scale
    if dtype is None:
        write_palette(str(tmp_path / "labels" / name), labels.astype(np.uint8))
    else:
        assert cv2.imwrite(str(tmp_path / "labels" / name), labels.astype(dtype))
    summary = prepare_labelmaps(tmp_path / "images", tmp_path / "labels", tmp_path / "out",
                                val_fraction=0)

    coco = load(tmp_path / "out")
    expected = [LABELS == value for value in (3, 7, 250)]
    assert all(np.array_equal(a, b) for a, b in zip(decoded_masks(coco, 1), expected))
    assert summary.nuclei == 3 and coco["images"][0]["file_name"] == f"{stem}.png"


@pytest.mark.parametrize("make_bad,message", [
    (lambda d: cv2.imwrite(str(d / "labels" / "extra.png"), LABELS.astype(np.uint8)),
     r"1 file\(s\) have no partner .*: extra"),
    (lambda d: cv2.imwrite(str(d / "labels" / "a.tif"), LABELS.astype(np.uint8)),
     "two files named 'a'"),
    (lambda d: cv2.imwrite(str(d / "labels" / "a.png"), np.zeros((HEIGHT, 5), np.uint8)),
     "a.png is 5x24 but its image is 32x24"),
    (lambda d: cv2.imwrite(str(d / "labels" / "a.png"), np.zeros((HEIGHT, WIDTH, 3), np.uint8)),
     "has 3 channels"),
    (lambda d: (d / "labels" / "a.png").write_text("not an image"), "Cannot read"),
])
def test_bad_label_maps_are_user_errors(tmp_path, make_bad, message):
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), gray())
    cv2.imwrite(str(tmp_path / "labels" / "a.png"), LABELS.astype(np.uint8))
    make_bad(tmp_path)
    with pytest.raises(UserInputError, match=message):
        prepare_labelmaps(tmp_path / "images", tmp_path / "labels", tmp_path / "out")


def test_cli_prints_the_summary_and_turns_user_errors_into_exit_code_2(tmp_path, capsys):
    tool = runpy.run_path(str(REPO / "datasets" / "prepare_nuclei.py"))["main"]

    def main(argv):
        return cli.run(tool, argv)

    write_dsb_image(tmp_path / "src", "a", gray(), [disc(5, 5, 3)])
    assert main(["dsb2018", str(tmp_path / "src"), str(tmp_path / "out")]) == 0
    assert "1 images (" in capsys.readouterr().out
    assert main(["dsb2018", str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: Output folder")


@pytest.mark.skipif(not REAL_DSB.is_dir(), reason=f"no DSB2018 copy at {REAL_DSB}")
def test_real_dsb2018_images_round_trip(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    image_ids = sorted(os.listdir(REAL_DSB))[:3]
    for image_id in image_ids:
        (src / image_id).symlink_to(REAL_DSB / image_id)
    summary = prepare_dsb2018(src, tmp_path / "out", val_fraction=0)

    coco = load(tmp_path / "out")
    assert summary.warnings == [] and summary.images == 3
    for image in coco["images"]:
        folder = REAL_DSB / Path(image["file_name"]).stem
        source = cv2.imread(str(folder / "images" / image["file_name"]), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(read_rgb(tmp_path / "out" / "images" / image["file_name"]),
                              source[:, :, 2::-1])
        masks = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 0
                 for p in sorted((folder / "masks").iterdir())]
        decoded = decoded_masks(coco, image["id"])
        assert len(decoded) == len(masks)
        assert all(np.array_equal(a, b) for a, b in zip(decoded, masks))


@pytest.mark.parametrize("background, nucleus, expected", [
    ((10, 10, 10), (200, 200, 200), "fluorescence"),      # grey DAPI export
    ((5, 8, 20), (90, 140, 255), "fluorescence"),         # tinted fluorescence is still dark
    ((230, 230, 230), (60, 60, 60), "brightfield"),       # unstained, transmitted light
    ((240, 200, 225), (120, 60, 160), "he_stained"),      # pink eosin, purple hematoxylin
])
def test_image_type_rule(background, nucleus, expected):
    image = np.full((64, 64, 3), background, np.uint8)
    image[20:40, 20:40] = nucleus
    assert image_type(image) == expected


def test_prepared_images_record_their_type(tmp_path):
    write_dsb_image(tmp_path / "src", "dark", gray() // 4, [disc(5, 5, 3)])
    summary = prepare_dsb2018(tmp_path / "src", tmp_path / "out", val_fraction=0)
    assert [image["image_type"] for image in load(tmp_path / "out")["images"]] == ["fluorescence"]
    assert "Image types: 1 fluorescence." in summary.format()


@pytest.mark.slow
@pytest.mark.skipif(not REAL_DSB.is_dir(), reason=f"no DSB2018 copy at {REAL_DSB}")
def test_image_type_rule_on_all_of_dsb2018():
    counts = {}
    for image_id in sorted(os.listdir(REAL_DSB)):
        image = cv2.imread(str(REAL_DSB / image_id / "images" / f"{image_id}.png"))
        kind = image_type(image)
        counts[kind] = counts.get(kind, 0) + 1
    assert counts == {"fluorescence": 476, "brightfield": 15, "he_stained": 99}
