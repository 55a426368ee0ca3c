"""Overlap-tile inference (U-Net, Ronneberger et al. 2015) for images larger than a model input."""
import ctypes
import math
from dataclasses import dataclass

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, pairwise_iou

from ..checkpoint import load_weights
from ..errors import UserInputError, check_choice
from .cropped_masks import CroppedMasks, crop_masks
from .rcnn_tiles import PendingMasks, pastes_lazily, rcnn_inference

# Mirror padding on each side of an axis longer than a tile, as a fraction of TEST.TILE.OVERLAP,
# for each TEST.TILE.BORDER.
BORDER_MARGINS = {"mirror": 0.5, "shift": 0.0}
# Side in pixels of the grid cells through which seam duplicates find the boxes they overlap.
SEAM_GRID_CELL = 64


def _malloc_trim():
    """glibc's malloc_trim, or None where the C library is not glibc (macOS, Windows, musl)."""
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, TypeError):
        return None


_MALLOC_TRIM = _malloc_trim()


def return_freed_memory():
    """Hand the pages the heap holds free back to the system (glibc's ``malloc_trim``). A tile
    batch frees its temporaries when it ends, but glibc keeps them, fragmented around the crops
    kept: without this, resident memory grew with the image (peak 1.41 GiB for a 2000 x 2000
    image, 1.18 GiB with it)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def tile_starts(length, tile, overlap):
    """Tile starts along one axis, ``tile - overlap`` apart; the last one is shifted back to end
    at the border, so every tile lies inside the (padded) axis and all tiles have one shape."""
    if length <= tile:
        return [0]
    step = tile - overlap
    count = math.ceil((length - tile) / step) + 1
    return [min(i * step, length - tile) for i in range(count)]


def core_bounds(starts, tile, length):
    """``(low, high)`` of each tile's core along one axis.

    Neighbouring cores meet in the middle of their tiles' overlap: the cores partition the axis
    and each core stays at least half the overlap away from its tile's inner edges.
    """
    cuts = [(start + previous + tile) / 2 for previous, start in zip(starts, starts[1:])]
    return list(zip([0.0] + cuts, cuts + [float(length)]))


@dataclass(frozen=True)
class Tile:
    """One tile: its pixel window, the core it owns as ``(low, high)`` per axis in image
    coordinates (both may reach into the mirror padding, below 0 or beyond the image), and which
    core bounds are seams shared with a neighbouring tile."""

    x0: int
    y0: int
    width: int
    height: int
    x_core: tuple
    y_core: tuple
    x_seams: tuple
    y_seams: tuple

    def inside(self, height, width):
        """``(x0, y0, x1, y1)``: the part of the tile inside an image of that size."""
        return (max(self.x0, 0), max(self.y0, 0),
                min(self.x0 + self.width, width), min(self.y0 + self.height, height))


def image_tiles(height, width, tile_size, overlap, margin=0):
    """The tiles covering an image, row by row.

    An axis longer than a tile is first padded by ``margin`` pixels on each side; the tiles and
    their cores then cover the padded axis. An axis that fits in a tile is one unpadded tile.
    """

    def axis(length):
        tile = min(tile_size, length)
        pad = margin if length > tile else 0
        padded = length + 2 * pad
        starts = tile_starts(padded, tile, overlap)
        cores = core_bounds(starts, tile, padded)
        return tile, [(start - pad, (low - pad, high - pad),
                       tuple(b - pad for b in (low, high) if 0 < b < padded))
                      for start, (low, high) in zip(starts, cores)]

    tile_height, rows = axis(height)
    tile_width, cols = axis(width)
    return [
        Tile(x0, y0, tile_width, tile_height, x_core, y_core, x_seams, y_seams)
        for y0, y_core, y_seams in rows
        for x0, x_core, x_seams in cols
    ]


def tile_window(image, tile):
    """The tile's pixels, mirroring the image where the tile reaches beyond it.

    The mirror (np.pad "reflect", OpenCV's BORDER_REFLECT_101) is taken from the tile's own part
    inside the image, so no padded copy of a large image is made; it equals the padded image's
    pixels while a tile reaches out less far than it lies inside, as ``image_tiles`` ensures.
    """
    x0, y0, x1, y1 = tile.inside(*image.shape[:2])
    padding = ((y0 - tile.y0, tile.y0 + tile.height - y1),
               (x0 - tile.x0, tile.x0 + tile.width - x1)) + ((0, 0),) * (image.ndim - 2)
    return np.pad(image[y0:y1, x0:x1], padding, mode="reflect")


def tile_settings(cfg):
    """(tile size, overlap, batch size, mirror margin) of ``cfg.TEST.TILE``, checked."""
    size, overlap, batch_size = cfg.TEST.TILE.SIZE, cfg.TEST.TILE.OVERLAP, cfg.TEST.TILE.BATCH_SIZE
    if not (size > 0 and 0 <= overlap < size and batch_size > 0):
        raise UserInputError(
            f"TEST.TILE.SIZE={size}, OVERLAP={overlap}, BATCH_SIZE={batch_size}: need SIZE > 0, "
            "0 <= OVERLAP < SIZE and BATCH_SIZE > 0 (OVERLAP at least the largest nucleus plus "
            "16 pixels)."
        )
    border = check_choice("TEST.TILE.BORDER", cfg.TEST.TILE.BORDER, BORDER_MARGINS)
    return size, overlap, batch_size, int(overlap * BORDER_MARGINS[border])


def batch_count(cfg, height, width):
    """How many tile batches (model calls) :class:`TiledPredictor` takes for an image of that
    size: known before the model is built, for a progress bar."""
    size, overlap, batch_size, margin = tile_settings(cfg)
    return math.ceil(len(image_tiles(height, width, size, overlap, margin)) / batch_size)


@dataclass
class TileInstances:
    """The instances a tile keeps, in image coordinates, on the CPU; ``mask_boxes`` and ``crops``
    are None for a model that predicts boxes only (RetinaNet)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    mask_boxes: torch.Tensor
    crops: list
    near_seam: torch.Tensor


class BoxRegions:
    """The boxes of a model that predicts no masks (RetinaNet), standing in for
    :class:`CroppedMasks` where seam duplicates are found: their overlap is box IoU."""

    def __init__(self, boxes):
        self.boxes = boxes

    def iou(self, i, j):
        return float(pairwise_iou(Boxes(self.boxes[i:i + 1]), Boxes(self.boxes[j:j + 1])))


class TiledPredictor:
    """DefaultPredictor for images of any size, by overlap-tile inference.

    The image (BGR, as for DefaultPredictor) is cut into tiles of ``TEST.TILE.SIZE`` overlapping by
    ``TEST.TILE.OVERLAP``. Each tile is preprocessed as DefaultPredictor does a whole image
    (``INPUT.FORMAT``, ``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``) and
    ``TEST.TILE.BATCH_SIZE`` tiles go through the model per call, so memory is bounded by a batch
    of tiles, not by the image.

    Merging: each tile owns a core (itself minus half the overlap on each inner side; the cores
    partition the image) and keeps the instances whose box centre lies in its core. A nucleus is
    thus kept once, and never cut by a tile edge while the overlap exceeds its size by
    ``2 * seam_tolerance``. Since two tiles may see the same nucleus' centre a pixel apart, cores
    are widened by ``seam_tolerance`` and the instances kept twice near a seam are de-duplicated
    by mask IoU (``duplicate_iou``), keeping the higher score.

    Image borders (``TEST.TILE.BORDER``): "mirror" (U-Net) pads each axis longer than a tile by
    half the overlap on each side with the image's mirror, so nuclei at the border are seen with
    context like interior ones, and the tiles and cores cover the padded image; "shift" pads
    nothing and moves the edge tiles back inside the image. Either way every tile has one shape
    (one resize scale). A nucleus cut by the border forms with its mirror one symmetric nucleus
    centred on the border, so about half its box lies in the image, while the mirrored twin of a
    nucleus near the border lies in the padding: an instance is kept if at least
    ``min_image_share`` of its box's width and of its height lie in the image (a box centre in
    the image, i.e. a half, would lose border nuclei to a pixel of box jitter), then its box and
    mask are clipped to the image. An image no larger than a tile is a single unpadded tile:
    exactly DefaultPredictor's input and output.

    Returns ``{"instances": Instances}`` in full-image coordinates, on the CPU, with
    ``pred_boxes``, ``scores``, ``pred_classes`` and ``pred_masks`` as :class:`CroppedMasks`. A
    model that predicts boxes only (RetinaNet) gets no ``pred_masks``, and its seam duplicates are
    found by box IoU.
    """

    seam_tolerance = 8  # pixels
    duplicate_iou = 0.5
    min_image_share = 0.25

    def __init__(self, cfg, model):
        """``model``: a built detectron2 model, used in the mode it is in (e.g. the model being
        trained, inside detectron2's ``inference_context``); :meth:`from_config` builds one."""
        self.cfg = cfg.clone()
        self.tile_size, self.overlap, self.batch_size, self.margin = tile_settings(cfg)
        self.input_format = check_choice("INPUT.FORMAT", cfg.INPUT.FORMAT, ("RGB", "BGR"))
        self.model = model
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )

    @classmethod
    def from_config(cls, cfg):
        """The predictor of a trained model: built from ``cfg``, ``cfg.MODEL.WEIGHTS`` loaded."""
        return cls(cfg, load_weights(cfg, build_model(cfg).eval()))

    def __call__(self, original_image):
        """``original_image``: (H, W, C) array in BGR order, like DefaultPredictor's."""
        steps = self.steps(original_image)
        try:
            while True:
                next(steps)
        except StopIteration as end:  # the generator's return value: the prediction
            return end.value

    def steps(self, original_image):
        """:meth:`__call__` one tile batch at a time, for a progress bar (the napari plugin's):
        yields after each of the :func:`batch_count` batches and returns the prediction."""
        if self.input_format == "RGB":
            original_image = original_image[:, :, ::-1]
        image_size = original_image.shape[:2]
        tiles = self.tiles(*image_size)
        owned = []
        for first in range(0, len(tiles), self.batch_size):
            with torch.no_grad():
                owned += self.predict_batch(original_image, tiles[first:first + self.batch_size])
            return_freed_memory()
            yield
        return {"instances": self.merge(owned, image_size)}

    def predict_batch(self, image, batch):
        """The instances each tile of ``batch`` keeps (:class:`TileInstances`), from one model
        call. A Mask R-CNN runs step by step (:mod:`.rcnn_tiles`: the mask head in chunks, a mask
        pasted only if its tile keeps it); any other model as it is, its dense (N, tile, tile)
        masks dying on return. Only the kept instances' crops, owning their pixels, outlive it."""
        inputs = [self.model_input(image, tile) for tile in batch]
        outputs = (rcnn_inference(self.model, inputs) if pastes_lazily(self.model)
                   else self.model(inputs))
        return [self.owned_instances(tile, outputs[i].pop("instances"), image.shape[:2])
                for i, tile in enumerate(batch)]

    def tiles(self, height, width):
        """The tiles this predictor cuts an image of that size into."""
        return image_tiles(height, width, self.tile_size, self.overlap, self.margin)

    def model_input(self, image, tile):
        window = tile_window(image, tile)
        resized = self.aug.get_transform(window).apply_image(window)
        tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
        return {"image": tensor, "height": tile.height, "width": tile.width}

    def owned_instances(self, tile, instances, image_size):
        """The instances the tile keeps, clipped to the image: those of the image (``in_image``)
        whose box centre lies in its core widened by ``seam_tolerance``; those whose centre is
        that close to a seam may be duplicates."""
        offset = torch.tensor([tile.x0, tile.y0, tile.x0, tile.y0], dtype=torch.float32)
        boxes = instances.pred_boxes.tensor.cpu() + offset
        centres = Boxes(boxes).get_centers()
        owned = self.in_image(boxes, image_size)
        seam_distance = torch.full((len(boxes),), math.inf)
        for centre, (low, high), seams in ((centres[:, 0], tile.x_core, tile.x_seams),
                                            (centres[:, 1], tile.y_core, tile.y_seams)):
            owned &= (centre >= low - self.seam_tolerance) & (centre < high + self.seam_tolerance)
            for seam in seams:
                seam_distance = torch.minimum(seam_distance, (centre - seam).abs())
        keep = owned.nonzero().squeeze(1)
        kept_boxes = Boxes(boxes[keep])
        kept_boxes.clip(image_size)
        mask_boxes, crops = None, None
        if instances.has("pred_masks"):
            x0, y0, x1, y1 = tile.inside(*image_size)
            window = (x0 - tile.x0, y0 - tile.y0, x1 - tile.x0, y1 - tile.y0)
            masks = instances.pred_masks
            if isinstance(masks, PendingMasks):
                mask_boxes, crops = masks.crops(keep, window, x0, y0, kept_boxes.tensor)
            else:
                masks = masks[:, window[1]:window[3], window[0]:window[2]]
                mask_boxes, crops = crop_masks(masks, kept_boxes.tensor, x0, y0, keep)
        return TileInstances(kept_boxes.tensor, instances.scores.cpu()[keep],
                             instances.pred_classes.cpu()[keep], mask_boxes, crops,
                             seam_distance[keep] < self.seam_tolerance)

    def in_image(self, boxes, image_size):
        """Whether at least ``min_image_share`` of each box's width and height lie in the image,
        i.e. the box is a nucleus of the image and not a mirrored twin in the padding."""
        inside = Boxes(boxes.clone())
        inside.clip(image_size)
        return ((inside.tensor[:, 2:] - inside.tensor[:, :2])
                >= self.min_image_share * (boxes[:, 2:] - boxes[:, :2])).all(dim=1)

    def merge(self, owned, image_size):
        """One Instances from the tiles' kept instances, seam duplicates removed."""
        boxes = torch.cat([t.boxes for t in owned])
        with_masks = owned[0].crops is not None
        regions = (CroppedMasks(torch.cat([t.mask_boxes for t in owned]),
                                [crop for t in owned for crop in t.crops], image_size)
                   if with_masks else BoxRegions(boxes))
        scores = torch.cat([t.scores for t in owned])
        tile_ids = torch.cat([torch.full((len(t.scores),), i) for i, t in enumerate(owned)])
        keep = self.drop_seam_duplicates(
            regions, scores, tile_ids, torch.cat([t.near_seam for t in owned]))
        instances = Instances(image_size)
        instances.pred_boxes = Boxes(boxes[keep])
        instances.scores = scores[keep]
        instances.pred_classes = torch.cat([t.classes for t in owned])[keep]
        if with_masks:
            instances.pred_masks = regions[keep]
        return instances

    def drop_seam_duplicates(self, masks, scores, tile_ids, near_seam):
        """Greedy by score: drop a near-seam instance whose mask (:class:`CroppedMasks`; its box
        for :class:`BoxRegions`) overlaps, by IoU above ``duplicate_iou``, a better one from
        another tile.

        Only boxes that overlap can be duplicates: the instances kept so far are found through a
        grid of ``SEAM_GRID_CELL`` px cells, so the search grows with the instances, not with
        their square (tens of thousands lie near a seam in a large image)."""
        keep = torch.ones(len(scores), dtype=torch.bool)
        candidates = near_seam.nonzero().squeeze(1)
        candidates = candidates[scores[candidates].argsort(descending=True)].tolist()
        boxes = masks.boxes.float().tolist()
        tiles = tile_ids.tolist()
        cell = SEAM_GRID_CELL
        winners = {}  # grid cell -> the kept candidates whose box touches it
        for i in candidates:
            x0, y0, x1, y1 = boxes[i]
            cells = [(cx, cy) for cx in range(int(x0 // cell), int(x1 // cell) + 1)
                     for cy in range(int(y0 // cell), int(y1 // cell) + 1)]
            seen = set()
            for j in (j for c in cells for j in winners.get(c, ())):
                if j in seen:
                    continue
                seen.add(j)
                a, b = boxes[j], boxes[i]
                overlap = min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])
                if tiles[j] != tiles[i] and overlap and masks.iou(i, j) > self.duplicate_iou:
                    keep[i] = False
                    break
            else:
                for c in cells:
                    winners.setdefault(c, []).append(i)
        return keep
