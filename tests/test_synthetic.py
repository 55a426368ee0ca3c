import json

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from scipy import ndimage

from maskrcnnpp.data import coco_io, synthetic
from maskrcnnpp.data.image_types import image_type
from maskrcnnpp.errors import UserInputError

SEED = 7
# Non-square, so that a swapped height and width shows up.
HEIGHT, WIDTH = 96, 128


def _generate(out_dir, num_images=3, seed=SEED):
    return synthetic.generate_synthetic_dataset(
        out_dir, num_images, seed, image_size=(HEIGHT, WIDTH)
    )


def _scene(index, seed=SEED, modality=None, size=(HEIGHT, WIDTH)):
    return synthetic.render_scene(np.random.default_rng([seed, index]), *size, modality=modality)


def _files(out_dir):
    return {
        p.relative_to(out_dir): p.read_bytes() for p in sorted(out_dir.rglob("*")) if p.is_file()
    }


def _touching_pairs(labels):
    """Number of neighbouring pixel pairs that belong to two different nuclei."""
    count = 0
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1], labels[1:])):
        count += np.count_nonzero((a != b) & (a > 0) & (b > 0))
    return count


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    first = _files(_generate(tmp_path / "first"))
    again = _files(_generate(tmp_path / "again"))
    other = _files(_generate(tmp_path / "other", seed=SEED + 1))

    assert sorted(map(str, first)) == [
        "annotations.json",
        "images/00000.png",
        "images/00001.png",
        "images/00002.png",
    ]
    assert first == again
    assert first.keys() == other.keys()
    assert all(first[name] != other[name] for name in first)


def test_images_of_a_smaller_set_are_the_first_of_a_larger_one(tmp_path):
    small = _generate(tmp_path / "small", num_images=2)
    large = _generate(tmp_path / "large", num_images=3)

    for name in ("00000.png", "00001.png"):
        assert (small / "images" / name).read_bytes() == (large / "images" / name).read_bytes()
    small_annotations = json.loads((small / "annotations.json").read_text())["annotations"]
    large_annotations = json.loads((large / "annotations.json").read_text())["annotations"]
    assert small_annotations == [a for a in large_annotations if a["image_id"] <= 2]


def test_coco_annotations_decode_to_the_rendered_label_maps(tmp_path):
    out_dir = _generate(tmp_path / "set")
    coco = COCO(str(out_dir / "annotations.json"))

    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["nucleus"]
    assert sorted(coco.getImgIds()) == [1, 2, 3]
    for index in range(3):
        image, labels = _scene(index)
        info = coco.loadImgs(index + 1)[0]
        assert info == {
            "id": index + 1,
            "file_name": f"{index:05d}.png",
            "height": HEIGHT,
            "width": WIDTH,
            "image_type": image_type(image),
        }
        written = cv2.imread(str(out_dir / "images" / info["file_name"]))[:, :, ::-1]
        np.testing.assert_array_equal(written, image)

        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[index + 1]))
        assert len(annotations) == labels.max() > 0
        for label, annotation in enumerate(annotations, start=1):
            mask = coco.annToMask(annotation)
            np.testing.assert_array_equal(mask, labels == label)
            ys, xs = np.nonzero(mask)
            assert annotation["area"] == mask.sum()
            tight_box = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert annotation["bbox"] == tight_box
            assert annotation["category_id"] == 1 and annotation["iscrowd"] == 0


def test_instances_are_numbered_single_regions_of_at_least_the_minimum_size():
    # Among these scenes, some new nuclei would be cut in two by earlier ones (rejected).
    touching = 0
    for index in range(30):
        labels = synthetic.draw_nuclei(np.random.default_rng([3, index]), 256, 256)
        areas = np.bincount(labels.ravel())[1:]
        assert labels.dtype == np.int32
        assert len(areas) > 0 and areas.min() >= synthetic.MIN_NUCLEUS_PIXELS
        for label, box in enumerate(ndimage.find_objects(labels), start=1):
            assert ndimage.label(labels[box] == label)[1] == 1
        touching += _touching_pairs(labels)
    assert touching > 0


def test_scenes_range_from_sparse_to_crowded_with_small_and_large_nuclei():
    counts, median_radii = [], []
    for index in range(16):
        _, labels = _scene(index, size=(256, 256))
        radii = np.sqrt(np.bincount(labels.ravel())[1:] / np.pi)
        counts.append(len(radii))
        median_radii.append(np.median(radii))
        assert radii.max() <= 1.15 * synthetic.RADIUS_RANGE[1]
    assert min(counts) <= 10 and max(counts) >= 100
    assert min(median_radii) < 7 and max(median_radii) > 20


def _inside_and_outside_brightness(image, labels):
    grey = image.astype(np.float64).mean(axis=2)
    return grey[labels > 0].mean(), grey[labels == 0].mean()


def test_fluorescence_is_bright_on_dark_and_brightfield_dark_on_light():
    for index in range(4):
        inside, outside = _inside_and_outside_brightness(*_scene(index, modality="fluorescence"))
        assert outside < 60 and inside > outside + 20
        image, labels = _scene(index, modality="brightfield")
        inside, outside = _inside_and_outside_brightness(image, labels)
        assert outside > 150 and inside < outside - 40
        # Nuclei are stained purple: blue passes more than green.
        purple = image[labels > 0].astype(np.float64).mean(axis=0)
        assert purple[2] > purple[1] + 20


def test_both_modalities_are_drawn():
    bright_on_dark = []
    for index in range(10):
        inside, outside = _inside_and_outside_brightness(*_scene(index))
        bright_on_dark.append(inside > outside)
    assert any(bright_on_dark) and not all(bright_on_dark)


def test_unknown_modality_is_a_user_error():
    with pytest.raises(UserInputError, match="fluorescence"):
        _scene(0, modality="fluorecence")


def test_interrupted_generation_leaves_no_output(tmp_path, monkeypatch):
    written = []
    write_rgb_png = coco_io.write_rgb_png

    def write_then_fail(path, image):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(path)
        write_rgb_png(path, image)

    monkeypatch.setattr(coco_io, "write_rgb_png", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        _generate(tmp_path / "set", num_images=5)
    assert len(written) == 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_images": 0}, "num_images"),
        ({"seed": -1}, "seed"),
        ({"image_size": (64,)}, "image_size"),
        ({"image_size": (64, 0)}, "width"),
    ],
)
def test_bad_arguments_are_user_errors(tmp_path, kwargs, message):
    arguments = {"num_images": 1, "seed": 0, **kwargs}
    with pytest.raises(UserInputError, match=message):
        synthetic.generate_synthetic_dataset(tmp_path / "set", **arguments)
    assert not (tmp_path / "set").exists()


@pytest.mark.parametrize("modality, expected", [("fluorescence", "fluorescence"),
                                                 ("brightfield", "he_stained")])
def test_synthetic_modalities_have_the_image_type_of_what_they_imitate(modality, expected):
    for seed in range(5):
        image, _ = synthetic.render_scene(np.random.default_rng(seed), 96, 96, modality=modality)
        assert image_type(image) == expected
