"""Overlap-tile inference: each nucleus found once and whole across seams and image borders,
one tile == one call; masks kept as crops, and what predict.py makes of them (RLEs, outlines,
label maps) equal to what the full-image masks give."""
import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from conftest import REPO, TINY_TRAINING
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.visualizer import GenericMask, Visualizer
from PIL import Image
from scipy import ndimage

from maskrcnnpp.config import add_maskrcnnpp_config
from maskrcnnpp.config_loader import build_cfg
from maskrcnnpp.errors import UserInputError
from maskrcnnpp.evaluation import instances_to_labelmap
from maskrcnnpp.inference import CroppedMasks, TiledPredictor, overlay, rcnn_tiles, tiling
from maskrcnnpp.inference.cropped_masks import labelmap
from maskrcnnpp.inference.overlay import CropOutline
from maskrcnnpp.inference.predict_files import write_labels
from maskrcnnpp.inference.tiling import BoxRegions, image_tiles


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


def test_crops_own_their_pixels_not_the_tiles_masks():
    """A crop that is a view keeps its tile's whole (N, tile, tile) mask tensor alive."""
    predictor = TiledPredictor(tiling_cfg(), DiscDetector())
    labels = seam_discs(predictor, 1100, 700)
    masks = predictor(as_image(labels))["instances"].pred_masks
    assert all(crop.untyped_storage().nbytes() == crop.numel() for crop in masks.crops)


def varied_masks(height=37, width=29, count=240, seed=0):
    """Dense (count, height, width) bool masks: empty, full columns, touching every border, with
    holes, and ragged discs anywhere."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:height, :width]
    masks = np.zeros((count, height, width), dtype=bool)
    for k, mask in enumerate(masks):
        kind = k % 6
        if kind == 1:
            mask[:, rng.integers(0, width)] = True
        elif kind == 2:
            mask[:, 3:9] = True
        elif kind == 3:
            mask[:] = True
            mask[5:9, 5:9] = False
        elif kind > 3:
            y, x, radius = rng.integers(0, height), rng.integers(0, width), rng.integers(1, 12)
            mask[:] = ((yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2) & (rng.random(mask.shape) < .9)
    return masks


def test_rles_outlines_and_label_map_from_crops_equal_those_of_the_full_masks():
    dense = varied_masks()
    masks = CroppedMasks.of(torch.from_numpy(dense))
    assert torch.equal(masks.to_dense(), torch.from_numpy(dense))
    for i, mask in enumerate(dense):
        assert masks.rle(i) == mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        expected = GenericMask(mask.astype(np.uint8), *mask.shape)
        outlines = CropOutline(masks, i)
        assert len(outlines.polygons) == len(expected.polygons)
        for ours, theirs in zip(outlines.polygons, expected.polygons):
            assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)
        assert outlines.area() == expected.area() and outlines.area().dtype == expected.area().dtype
    scores = np.random.default_rng(1).random(len(dense))
    expected = instances_to_labelmap(list(dense), dense.shape[1:], scores, score_threshold=0.3)
    labels = labelmap(masks, scores, score_threshold=0.3)
    assert labels.dtype == np.uint16 and np.array_equal(labels, expected)


@pytest.mark.parametrize("height,width,per_pass", [(60, 50, 4096), (301, 517, 9)])
def test_the_overlay_from_crops_is_the_visualizers_overlay_from_rles(height, width, per_pass,
                                                                    monkeypatch):
    monkeypatch.setattr(overlay, "POLYGONS_PER_PASS", per_pass)
    dense = varied_masks(height, width, count=30)
    masks = CroppedMasks.of(torch.from_numpy(dense))
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    rles = [mask_util.encode(np.asfortranarray(mask.astype(np.uint8))) for mask in dense]
    np.random.seed(0)  # the Visualizer draws each instance's colour at random
    expected = Visualizer(image[:, :, ::-1]).overlay_instances(masks=rles).get_image()
    np.random.seed(0)
    assert np.array_equal(overlay.overlay_bgr(image, masks=masks), expected[:, :, ::-1])
    boxes = np.array([[2, 3, width // 2, height // 2], [0, 0, width, height]], dtype=float)
    np.random.seed(1)
    expected = Visualizer(image[:, :, ::-1]).overlay_instances(boxes=boxes).get_image()
    np.random.seed(1)
    assert np.array_equal(overlay.overlay_bgr(image, boxes=boxes), expected[:, :, ::-1])
    assert np.array_equal(overlay.overlay_bgr(image, masks=masks[[]]), image)


def test_label_maps_of_more_than_65535_nuclei_are_32_bit_tiffs(tmp_path):
    count, width = 70_000, 350
    boxes = torch.tensor([[i % width, i // width, i % width + 1, i // width + 1]
                          for i in range(count)])
    masks = CroppedMasks(boxes, [torch.ones(1, 1, dtype=torch.bool)] * count, (200, width))
    labels = labelmap(masks)
    assert labels.dtype == np.uint32 and labels.max() == count
    assert labelmap(masks[:65_535]).dtype == np.uint16
    path = write_labels(str(tmp_path / "big"), labels)
    assert path.endswith("big_labels.tif")
    with Image.open(path) as written:
        assert np.array_equal(np.asarray(written), labels)
    assert write_labels(str(tmp_path / "small"), labels.clip(0, 9).astype(np.uint16)).endswith(
        "small_labels.png")


def pairwise_seam_duplicates(predictor, masks, scores, tile_ids, near_seam):
    """TiledPredictor.drop_seam_duplicates as it was, comparing every pair of candidates."""
    keep = torch.ones(len(scores), dtype=torch.bool)
    candidates = near_seam.nonzero().squeeze(1)
    candidates = candidates[scores[candidates].argsort(descending=True)].tolist()
    boxes_overlap = pairwise_iou(Boxes(masks.boxes[candidates].float()),
                                 Boxes(masks.boxes[candidates].float())) > 0
    winners = []
    for rank, i in enumerate(candidates):
        if any(tile_ids[j] != tile_ids[i] and boxes_overlap[rank, j_rank]
               and masks.iou(i, j) > predictor.duplicate_iou for j_rank, j in winners):
            keep[i] = False
        else:
            winners.append((rank, i))
    return keep


@pytest.mark.parametrize("with_masks", [True, False])
def test_seam_duplicates_found_through_the_grid_are_those_of_the_pairwise_search(with_masks):
    rng = np.random.default_rng(3)
    count, size = 100, 300
    corners = rng.integers(0, size - 10, (count, 2))
    sides = np.where(rng.random((count, 1)) < 0.1, rng.integers(60, 200, (count, 2)),
                     rng.integers(0, 40, (count, 2)))  # a few empty, a few large
    boxes = np.concatenate([corners, np.minimum(corners + sides, size)], 1)
    twins = rng.integers(0, count, count // 2)  # seen again by another tile, a pixel or two off
    boxes = np.concatenate([boxes, np.clip(boxes[twins] + rng.integers(-2, 3, (len(twins), 1)),
                                           0, size)])
    boxes = torch.from_numpy(boxes)
    if with_masks:
        crops = [torch.from_numpy(rng.random((int(y1 - y0), int(x1 - x0))) < 0.9)
                 for x0, y0, x1, y1 in boxes.tolist()]
        regions = CroppedMasks(boxes, crops, (size, size))
    else:
        regions = BoxRegions(boxes.float() + torch.from_numpy(rng.random(boxes.shape)).float())
    scores = torch.from_numpy(rng.random(len(boxes))).float()
    tile_ids = torch.from_numpy(rng.integers(0, 4, len(boxes)))
    near_seam = torch.from_numpy(rng.random(len(boxes)) < 0.8)
    predictor = TiledPredictor(tiling_cfg(), DiscDetector())
    found = predictor.drop_seam_duplicates(regions, scores, tile_ids, near_seam)
    assert torch.equal(found, pairwise_seam_duplicates(predictor, regions, scores, tile_ids,
                                                       near_seam))
    assert 5 < (~found).sum() < len(twins)


@pytest.mark.slow
def test_mask_rcnn_tiles_give_what_the_model_call_gives(monkeypatch):
    """Mask R-CNN run step by step (mask head in chunks, each kept mask pasted alone) gives the
    boxes, scores, classes and masks of detectron2's own call, tile by tile and merged."""
    cfg = build_cfg(f"{REPO}/configs/quickstart_synthetic.yaml", [
        *TINY_TRAINING, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE",
        "60", "TEST.TILE.SIZE", "160", "TEST.TILE.OVERLAP", "48", "TEST.TILE.BATCH_SIZE", "3"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    predictor = TiledPredictor(cfg, model)
    assert rcnn_tiles.pastes_lazily(model)
    image = np.random.default_rng(0).integers(0, 256, (300, 380, 3), dtype=np.uint8)
    inputs = [predictor.model_input(image, tile) for tile in predictor.tiles(300, 380)[:3]]
    with torch.no_grad():
        expected = model(inputs)
        chunked = rcnn_tiles.rcnn_inference(model, inputs, chunk=7)
    for ours, theirs in zip(chunked, expected):
        ours, theirs = ours["instances"], theirs["instances"]
        assert len(theirs) == 60 and ours.image_size == theirs.image_size
        assert torch.equal(ours.pred_boxes.tensor, theirs.pred_boxes.tensor)
        assert torch.equal(ours.scores, theirs.scores)
        assert torch.equal(ours.pred_classes, theirs.pred_classes)
        for i in range(len(ours)):  # each mask's region holds all of detectron2's mask
            region, left, top = ours.pred_masks.paste_region(i)
            pasted = torch.zeros(theirs.pred_masks.shape[1:], dtype=torch.bool)
            pasted[top:top + region.shape[0], left:left + region.shape[1]] = region
            assert torch.equal(pasted, theirs.pred_masks[i])
        assert theirs.pred_masks.any()

    model.train()  # a model in training mode is called as it is (and pastes every mask)
    assert not rcnn_tiles.pastes_lazily(model)
    model.eval()
    lazy = predictor(image)["instances"]
    monkeypatch.setattr(tiling, "pastes_lazily", lambda model: False)
    dense = predictor(image)["instances"]
    assert len(lazy) == len(dense) > 100
    assert torch.equal(lazy.pred_boxes.tensor, dense.pred_boxes.tensor)
    assert torch.equal(lazy.scores, dense.scores)
    assert torch.equal(lazy.pred_masks.to_dense(), dense.pred_masks.to_dense())
