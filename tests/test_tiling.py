"""Overlap-tile inference: each nucleus found once and whole across seams and image borders,
one tile == one call."""
import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances
from scipy import ndimage

from maskrcnnpp.config import add_maskrcnnpp_config
from maskrcnnpp.errors import UserInputError
from maskrcnnpp.inference import CroppedMasks, TiledPredictor
from maskrcnnpp.inference.tiling import image_tiles


class DiscDetector(torch.nn.Module):
    """A stand-in for a detectron2 model: bright connected components are the instances.

    It takes and returns what GeneralizedRCNN does at inference, and records each call's batch size.
    ``box_bias`` moves each box centre by that many pixels towards the far side of its tile, like
    a real model whose boxes for one nucleus differ a little between tiles.
    """

    def __init__(self, box_bias=0.0):
        super().__init__()
        self.box_bias = box_bias
        self.batch_sizes = []

    def forward(self, batched_inputs):
        self.batch_sizes.append(len(batched_inputs))
        return [{"instances": self.detect(x["image"], x["height"], x["width"])}
                for x in batched_inputs]

    def detect(self, image, height, width):
        assert image.shape[1:] == (height, width), "the tests use no test-time resize"
        labels, count = ndimage.label(image.mean(dim=0).numpy() > 127)
        masks = torch.from_numpy(labels[None] == np.arange(1, count + 1)[:, None, None])
        boxes = torch.tensor(
            [[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in ndimage.find_objects(labels)],
            dtype=torch.float32).reshape(-1, 4)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        shift = torch.where(centres > torch.tensor([width, height]) / 2, 1.0, -1.0) * self.box_bias
        instances = Instances((height, width))
        instances.pred_boxes = Boxes(boxes + shift.repeat(1, 2))
        instances.scores = torch.linspace(1.0, 0.5, count)
        instances.pred_classes = torch.zeros(count, dtype=torch.int64)
        instances.pred_masks = masks
        return instances


def tiling_cfg(size=512, overlap=96, batch_size=3, border="mirror"):
    cfg = get_cfg()
    add_maskrcnnpp_config(cfg)
    cfg.INPUT.MIN_SIZE_TEST = 0  # no resize: the fake model sees tiles pixel for pixel
    cfg.TEST.TILE.SIZE, cfg.TEST.TILE.OVERLAP, cfg.TEST.TILE.BATCH_SIZE = size, overlap, batch_size
    cfg.TEST.TILE.BORDER = border
    return cfg


def seam_discs(predictor, height, width, seed=0):
    """A label image of discs centred on the predictor's seams, tile edges, their crossings, the
    image border (cut by it) and 48 px inside it (their mirrored twins lie in the padding)."""
    tiles = predictor.tiles(height, width)

    def positions(seams, starts, size, length):
        edges = {s for s in starts if s > 0} | {s + size for s in starts if s + size < length}
        return sorted({round(p) for p in seams} | edges | {0, 48, length - 49, length - 1})

    xs = positions({s for t in tiles for s in t.x_seams}, {t.x0 for t in tiles},
                   tiles[0].width, width)
    ys = positions({s for t in tiles for s in t.y_seams}, {t.y0 for t in tiles},
                   tiles[0].height, height)
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), dtype=np.int32)
    yy, xx = np.ogrid[:height, :width]
    for cy in ys:
        for cx in xs:
            # Discs stay 2 px apart at least (positions are >= 48 px apart) and < OVERLAP - 16 wide.
            dy, dx = rng.integers(-2, 3, size=2)
            radius = rng.integers(8, 21)
            labels[(yy - cy - dy) ** 2 + (xx - cx - dx) ** 2 <= radius ** 2] = labels.max() + 1
    return labels


def check_each_disc_once_and_whole(instances, labels):
    found = []
    masks, areas = instances.pred_masks, np.bincount(labels.ravel())
    for (x0, y0, x1, y1), crop in zip(masks.boxes.tolist(), masks.crops):
        ids = np.unique(labels[y0:y1, x0:x1][crop.numpy()])
        assert len(ids) == 1 and ids[0] > 0
        assert np.array_equal(labels[y0:y1, x0:x1] == ids[0], crop.numpy()), f"disc {ids[0]} cut"
        assert areas[ids[0]] == crop.sum(), f"disc {ids[0]} cut"
        found.append(ids[0])
    assert sorted(found) == list(range(1, labels.max() + 1)), "a disc is missing or duplicated"


def as_image(labels):
    return np.repeat(np.where(labels > 0, 255, 0).astype(np.uint8)[:, :, None], 3, axis=2)


def border_disc_ids(labels):
    edges = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return set(np.unique(edges)) - {0}


@pytest.mark.slow
@pytest.mark.parametrize("border", ["mirror", "shift"])
def test_large_image_finds_each_disc_once_with_its_full_mask(border):
    model = DiscDetector()
    predictor = TiledPredictor(tiling_cfg(border=border), model)
    labels = seam_discs(predictor, 2048, 2048)
    instances = predictor(as_image(labels))["instances"]

    assert instances.image_size == (2048, 2048)
    assert labels.max() == 256 and len(border_disc_ids(labels)) == 60
    check_each_disc_once_and_whole(instances, labels)
    assert len(instances.pred_boxes) == len(instances.scores) == len(instances.pred_masks) == 256
    # Boxes are clipped to the image like the masks: the fake model's boxes are its masks' extents.
    assert torch.equal(instances.pred_boxes.tensor, instances.pred_masks.boxes.float())
    assert max(model.batch_sizes) == 3 and sum(model.batch_sizes) == 25  # 5 x 5 tiles, 3 per call


@pytest.mark.slow
@pytest.mark.parametrize("border", ["mirror", "shift"])
def test_box_jitter_between_tiles_neither_duplicates_nor_loses_discs(border):
    predictor = TiledPredictor(tiling_cfg(border=border), DiscDetector(box_bias=2.0))
    labels = seam_discs(predictor, 2048, 2048, seed=1)
    check_each_disc_once_and_whole(predictor(as_image(labels))["instances"], labels)

    predictor.seam_tolerance = 0  # without widened cores some seam discs fall between two cores
    assert len(predictor(as_image(labels))["instances"]) < labels.max()


@pytest.mark.slow
def test_mirror_keeps_discs_cut_by_the_border_and_drops_their_twins_in_the_padding():
    predictor = TiledPredictor(tiling_cfg(), DiscDetector(box_bias=2.0))
    labels = seam_discs(predictor, 2048, 2048, seed=1)
    image = as_image(labels)

    # A disc cut by the border and its mirror are one disc centred on the border, whose box
    # centre the jitter moves out into the padding: a box-centre-in-image rule drops them all.
    predictor.min_image_share = 0.5
    assert len(predictor(image)["instances"]) == labels.max() - len(border_disc_ids(labels))
    # Keeping every instance brings in the mirrored twins of the discs 48 px inside the border.
    predictor.min_image_share = 0.0
    assert len(predictor(image)["instances"]) > labels.max()


@pytest.mark.parametrize("height,width", [(700, 1100), (300, 1100)])
def test_mirror_tiles_see_the_reflect_padded_image(height, width):
    predictor = TiledPredictor(tiling_cfg(), DiscDetector())
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    pad_y, pad_x = (48 if length > 512 else 0 for length in (height, width))
    padded = cv2.copyMakeBorder(image, pad_y, pad_y, pad_x, pad_x, cv2.BORDER_REFLECT_101)
    tiles = predictor.tiles(height, width)

    assert min(t.x0 for t in tiles) == -pad_x and min(t.y0 for t in tiles) == -pad_y
    assert max(t.x0 + t.width for t in tiles) == width + pad_x
    assert max(t.y0 + t.height for t in tiles) == height + pad_y
    for t in tiles:
        window = padded[t.y0 + pad_y:t.y0 + pad_y + t.height, t.x0 + pad_x:t.x0 + pad_x + t.width]
        seen = predictor.model_input(image, t)["image"].numpy().transpose(1, 2, 0)
        assert np.array_equal(seen, window)


@pytest.mark.parametrize("border", ["mirror", "shift"])
def test_image_within_one_tile_gives_the_whole_image_result(border):
    predictor = TiledPredictor(tiling_cfg(border=border), DiscDetector())
    labels = seam_discs(predictor, 300, 450)
    image = as_image(labels)
    expected = predictor.model.detect(
        torch.as_tensor(image.transpose(2, 0, 1).astype("float32")), 300, 450)
    instances = predictor(image)["instances"]

    assert instances.image_size == (300, 450)
    assert torch.equal(instances.pred_boxes.tensor, expected.pred_boxes.tensor)
    assert torch.equal(instances.scores, expected.scores)
    assert torch.equal(instances.pred_classes, expected.pred_classes)
    assert torch.equal(instances.pred_masks.to_dense(), expected.pred_masks)
    assert np.array_equal(np.asarray(instances.pred_masks), expected.pred_masks.numpy())


@pytest.mark.parametrize("margin,rows,cols", [(0, 3, 5), (50, 3, 6)])
def test_tiles_lie_inside_the_padded_image_and_cores_partition_it(margin, rows, cols):
    height, width, overlap = 1000, 2100, 100
    tiles = image_tiles(height, width, 512, overlap, margin)
    assert {(t.height, t.width) for t in tiles} == {(512, 512)}
    assert len(tiles) == rows * cols
    for axis, length in (("x", width), ("y", height)):
        first, last = -margin, length + margin
        cores = sorted({getattr(t, f"{axis}_core") for t in tiles})
        assert cores[0][0] == first and cores[-1][1] == last
        assert all(a[1] == b[0] for a, b in zip(cores, cores[1:]))
        for t in tiles:
            start = getattr(t, f"{axis}0")
            end = start + (t.width if axis == "x" else t.height)
            (low, high), seams = getattr(t, f"{axis}_core"), getattr(t, f"{axis}_seams")
            assert first <= start and end <= last
            assert low == first or low - start >= overlap / 2
            assert high == last or end - high >= overlap / 2
            assert seams == tuple(b for b in (low, high) if first < b < last)


def test_cropped_masks_index_like_bitmasks():
    crops = [torch.ones(1, 2, dtype=torch.bool), torch.tensor([[True, False]])]
    masks = CroppedMasks(torch.tensor([[1, 2, 3, 3], [0, 0, 2, 1]]), crops, (4, 5))
    dense = masks.to_dense()
    assert dense.shape == (2, 4, 5) and dense[0].sum() == 2 and dense[0, 2, 1] and dense[1, 0, 0]
    assert torch.equal(masks[torch.tensor([False, True])].to_dense(), dense[1:])
    assert torch.equal(masks[1:].to_dense(), dense[1:]) and len(masks[0]) == 1
    assert masks.iou(0, 1) == 0.0 and masks.iou(0, 0) == 1.0


@pytest.mark.parametrize("size,overlap,batch_size", [(512, 512, 2), (0, 0, 2), (512, 64, 0)])
def test_bad_tile_settings_are_user_errors(size, overlap, batch_size):
    with pytest.raises(UserInputError, match="TEST.TILE"):
        TiledPredictor(tiling_cfg(size, overlap, batch_size), DiscDetector())


def test_unknown_border_is_a_user_error_naming_the_choices():
    expected = r"TEST.TILE.BORDER='mirorr' is not valid; choose one of \['mirror', 'shift'\]\. Did"
    with pytest.raises(UserInputError, match=expected + " you mean 'mirror'"):
        TiledPredictor(tiling_cfg(border="mirorr"), DiscDetector())
