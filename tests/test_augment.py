"""Nuclei augmentations keep image, masks and boxes aligned through detectron2's DatasetMapper."""
import cv2
import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from maskrcnnpp.config import add_maskrcnnpp_config
from maskrcnnpp.data.augment import (
    Rot90Transform,
    StainTransform,
    build_nuclei_augmentations,
    build_nuclei_train_mapper,
    crop_window,
)
from maskrcnnpp.data.coco_io import encode_mask
from maskrcnnpp.errors import UserInputError

GEOMETRIC = ["hflip", "vflip", "rot90", "scale", "elastic"]
EXACT = {"hflip", "vflip", "rot90"}  # no interpolation: every pixel moves with its mask
PHOTOMETRIC = ["brightness", "contrast", "gamma", "stain"]


def nuclei_cfg(names):
    cfg = get_cfg()
    add_maskrcnnpp_config(cfg)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (96,), 1000  # the image's own size
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.NUCLEI_AUG.NAMES = names
    return cfg


@pytest.fixture(scope="module")
def dataset_dict(tmp_path_factory):
    """A 96x128 image whose nucleus i is a disc of grey value 40 + 20 i on black."""
    height, width = 96, 128
    yy, xx = np.ogrid[:height, :width]
    image = np.zeros((height, width, 3), dtype=np.uint8)
    annotations = []
    for i, (cx, cy, r) in enumerate([(20, 20, 9), (70, 30, 14), (105, 70, 12), (30, 75, 7)]):
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        image[mask] = 40 + 20 * i
        ys, xs = np.nonzero(mask)
        annotations.append({
            "bbox": [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], "bbox_mode": BoxMode.XYXY_ABS,
            "category_id": 0, "segmentation": encode_mask(mask), "iscrowd": 0,
        })
    path = tmp_path_factory.mktemp("augment") / "nuclei.png"
    cv2.imwrite(str(path), image)
    return {"file_name": str(path), "height": height, "width": width, "image_id": 0,
            "annotations": annotations}


def map_once(cfg, dataset_dict, seed):
    np.random.seed(seed)
    out = build_nuclei_train_mapper(cfg)(dataset_dict)
    return out["image"].numpy().transpose(1, 2, 0), out["instances"]


def tight_boxes(masks):
    boxes = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.array(boxes, dtype=np.float32)


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_augmentations_move_masks_with_the_image(name, dataset_dict):
    cfg = nuclei_cfg([name])
    for seed in range(4):
        image, instances = map_once(cfg, dataset_dict, seed)
        masks = instances.gt_masks.tensor.numpy()
        assert masks.shape == (4, *image.shape[:2])
        for i, mask in enumerate(masks):
            value, under_mask = 40 + 20 * i, image[mask][:, 0].astype(int)
            if name in EXACT:
                assert np.all(under_mask == value), (name, seed, i)
            else:  # edge pixels blend with the background, but never below a fifth of the value
                assert np.mean(under_mask >= value / 5) > 0.97, (name, seed, i)
        bright, covered = image[:, :, 0] >= 20, masks.any(axis=0)
        iou = (bright & covered).sum() / (bright | covered).sum()
        assert iou == 1.0 if name in EXACT else iou > 0.85, (name, seed)
        np.testing.assert_array_equal(instances.gt_boxes.tensor.numpy(), tight_boxes(masks))


@pytest.mark.parametrize("name", PHOTOMETRIC)
def test_photometric_augmentations_leave_masks_and_boxes_alone(name, dataset_dict):
    reference_image, reference = map_once(nuclei_cfg([]), dataset_dict, 0)
    image, instances = map_once(nuclei_cfg([name]), dataset_dict, 0)
    assert not np.array_equal(image, reference_image)
    assert np.array_equal(instances.gt_masks.tensor, reference.gt_masks.tensor)
    assert np.array_equal(instances.gt_boxes.tensor, reference.gt_boxes.tensor)


def test_all_augmentations_together_keep_boxes_tight(dataset_dict):
    cfg = nuclei_cfg(GEOMETRIC + PHOTOMETRIC)
    for seed in range(3):
        _, instances = map_once(cfg, dataset_dict, seed)
        masks = instances.gt_masks.tensor.numpy()
        np.testing.assert_array_equal(instances.gt_boxes.tensor.numpy(), tight_boxes(masks))


@pytest.mark.parametrize("k", range(4))
def test_rot90_coords_follow_the_pixels_and_inverse_undoes_it(k):
    image = np.zeros((5, 8), dtype=np.uint8)
    image[1, 6] = 1  # pixel (x=6, y=1), centre (6.5, 1.5)
    transform = Rot90Transform(k, 5, 8)
    rotated = transform.apply_image(image)
    y, x = np.argwhere(rotated)[0]
    np.testing.assert_allclose(transform.apply_coords(np.array([[6.5, 1.5]])), [[x + 0.5, y + 0.5]])
    assert np.array_equal(transform.inverse().apply_image(rotated), image)


def test_stain_jitter_without_change_is_the_identity():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    unchanged = StainTransform(np.ones(3), np.zeros(3), "BGR").apply_image(image)
    assert np.abs(unchanged.astype(int) - image).max() <= 1


def test_test_time_gets_only_the_resize():
    augmentations = build_nuclei_augmentations(nuclei_cfg(GEOMETRIC + PHOTOMETRIC), is_train=False)
    assert [type(a).__name__ for a in augmentations] == ["ResizeShortestEdge"]


@pytest.mark.parametrize("change,message", [
    (dict(names=["rot9"]), "Did you mean 'rot90'"),
    (dict(names=["hflip"], random_flip="horizontal"), "configured twice"),
    (dict(names=["elastic"], mask_format="polygon"), "bitmask"),
])
def test_bad_augmentation_config_is_a_user_error(change, message):
    cfg = nuclei_cfg(change["names"])
    cfg.INPUT.RANDOM_FLIP = change.get("random_flip", "none")
    cfg.INPUT.MASK_FORMAT = change.get("mask_format", "bitmask")
    with pytest.raises(UserInputError, match=message):
        build_nuclei_augmentations(cfg, is_train=True)


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_scaled_crop_gives_a_window_at_native_or_zoomed_size(scale, dataset_dict):
    cfg = nuclei_cfg(["scaled_crop"])
    cfg.INPUT.MIN_SIZE_TRAIN = (0,)  # no resize: native pixel size
    cfg.INPUT.NUCLEI_AUG.CROP_SIZE, cfg.INPUT.NUCLEI_AUG.SCALE_RANGE = 64, (scale, scale)
    for seed in range(6):
        image, instances = map_once(cfg, dataset_dict, seed)
        assert image.shape[:2] == (64, 64)
        masks = instances.gt_masks.tensor.numpy()
        assert all(mask.any() for mask in masks)  # nuclei cut away entirely are dropped
        for mask in masks:
            values = image[mask][:, 0].astype(int)
            if scale == 1.0:  # a plain window: every mask pixel keeps its nucleus' value
                assert len(set(values)) == 1 and values[0] in (40, 60, 80, 100)
            else:
                assert np.mean(values >= 20) > 0.97
        bright, covered = image[:, :, 0] >= 20, masks.any(axis=0)
        if bright.any():
            iou = (bright & covered).sum() / (bright | covered).sum()
            assert iou == 1.0 if scale == 1.0 else iou > 0.85
        np.testing.assert_array_equal(instances.gt_boxes.tensor.numpy(), tight_boxes(masks))


def test_scaled_crop_of_an_image_smaller_than_the_window_keeps_it_whole(dataset_dict):
    cfg = nuclei_cfg(["scaled_crop"])
    cfg.INPUT.MIN_SIZE_TRAIN = (0,)
    cfg.INPUT.NUCLEI_AUG.CROP_SIZE, cfg.INPUT.NUCLEI_AUG.SCALE_RANGE = 256, (1.0, 1.0)
    image, instances = map_once(cfg, dataset_dict, 0)
    assert image.shape[:2] == (96, 128) and len(instances) == 4


@pytest.mark.parametrize("min_size", [(0,), (192,)])  # at native size, and after a 2x resize
def test_decoding_only_the_nuclei_a_crop_can_hold_changes_nothing(min_size, dataset_dict):
    """The nuclei mapper drops nuclei outside the crop window before decoding their masks: the
    training example is exactly detectron2's, down to a crop that holds no nucleus at all."""
    cfg = nuclei_cfg(["scaled_crop", "hflip", "elastic"])
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.NUCLEI_AUG.CROP_SIZE = min_size, 24
    plain = DatasetMapper(cfg, is_train=True, augmentations=build_nuclei_augmentations(cfg, True),
                          recompute_boxes=True)
    counts = []
    for seed in range(40):
        image, instances = map_once(cfg, dataset_dict, seed)
        np.random.seed(seed)
        expected = plain(dataset_dict)
        assert np.array_equal(image, expected["image"].numpy().transpose(1, 2, 0))
        for field in ("gt_boxes", "gt_classes", "gt_masks"):
            got, want = instances.get(field), expected["instances"].get(field)
            assert np.array_equal(getattr(got, "tensor", got), getattr(want, "tensor", want))
        counts.append(len(instances))
    assert min(counts) == 0 and max(counts) >= 1  # some crops empty, some not: both paths taken


@pytest.mark.parametrize("transforms, window", [
    ([T.NoOpTransform(), T.CropTransform(10, 20, 30, 40)], (9, 19, 41, 61)),
    ([T.ResizeTransform(50, 100, 100, 200), T.CropTransform(10, 20, 30, 40), T.HFlipTransform(40)],
     (4, 9, 21, 31)),  # a 2x resize first: the window in the input's pixels, a pixel wider
    ([T.HFlipTransform(100), T.CropTransform(10, 20, 30, 40)], None),  # flipped first: no window
    ([T.NoOpTransform()], None),
])
def test_the_crop_window_is_found_in_the_input_image(transforms, window):
    assert crop_window(T.TransformList(transforms)) == window
