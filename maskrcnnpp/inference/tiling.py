"""Overlap-tile inference (U-Net, Ronneberger et al. 2015) for images larger than a model input."""
import math
from dataclasses import dataclass

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, pairwise_iou

from ..errors import UserInputError, check_choice


def tile_starts(length, tile, overlap):
    """Tile starts along one axis, ``tile - overlap`` apart; the last one is shifted back to end
    at the border, so every tile lies inside the image and all tiles have one shape."""
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
    coordinates, and which core bounds are seams shared with a neighbouring tile."""

    x0: int
    y0: int
    width: int
    height: int
    x_core: tuple
    y_core: tuple
    x_seams: tuple
    y_seams: tuple


def image_tiles(height, width, tile_size, overlap):
    """The tiles covering an image, row by row."""

    def axis(length):
        tile = min(tile_size, length)
        starts = tile_starts(length, tile, overlap)
        cores = core_bounds(starts, tile, length)
        return tile, [(s, core, tuple(b for b in core if 0 < b < length))
                      for s, core in zip(starts, cores)]

    tile_height, rows = axis(height)
    tile_width, cols = axis(width)
    return [
        Tile(x0, y0, tile_width, tile_height, x_core, y_core, x_seams, y_seams)
        for y0, y_core, y_seams in rows
        for x0, x_core, x_seams in cols
    ]


@dataclass
class TileInstances:
    """The instances a tile keeps, in image coordinates, on the CPU."""

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    mask_boxes: torch.Tensor
    crops: list
    near_seam: torch.Tensor


class CroppedMasks:
    """Instance masks of a large image, each stored as a bool crop inside an integer box.

    Dense (N, H, W) masks of a large image would take N*H*W bytes; crops take the nuclei's own
    area. Indexing follows detectron2's BitMasks. Iterating yields one full-size (H, W) bool tensor
    at a time, so code written for dense ``pred_masks`` (e.g. ``instances_to_coco_json``) works
    unchanged; ``to_dense()`` or ``np.asarray`` (e.g. in detectron2's Visualizer) build all of them.
    """

    def __init__(self, boxes, crops, image_size):
        """``boxes``: (N, 4) int64 tensor, xyxy, exclusive ends; ``crops``: N bool tensors of the
        boxes' shapes; ``image_size``: (height, width)."""
        self.boxes = boxes
        self.crops = list(crops)
        self.image_size = tuple(image_size)

    def __len__(self):
        return len(self.crops)

    def __getitem__(self, item):
        indices = torch.arange(len(self))[item].reshape(-1)
        return CroppedMasks(self.boxes[indices], [self.crops[i] for i in indices.tolist()],
                            self.image_size)

    def __iter__(self):
        for (x0, y0, x1, y1), crop in zip(self.boxes.tolist(), self.crops):
            mask = torch.zeros(self.image_size, dtype=torch.bool)
            mask[y0:y1, x0:x1] = crop
            yield mask

    def to_dense(self):
        """(N, H, W) bool tensor."""
        if not len(self):
            return torch.zeros((0, *self.image_size), dtype=torch.bool)
        return torch.stack(list(self))

    def __array__(self, dtype=None, copy=None):
        array = self.to_dense().numpy()
        return array if dtype is None else array.astype(dtype)

    def iou(self, i, j):
        """Mask IoU of instances ``i`` and ``j``, computed on the crops' common window."""
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = self.boxes[i].tolist(), self.boxes[j].tolist()
        x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
        if x1 <= x0 or y1 <= y0:
            return 0.0
        a = self.crops[i][y0 - ay0:y1 - ay0, x0 - ax0:x1 - ax0]
        b = self.crops[j][y0 - by0:y1 - by0, x0 - bx0:x1 - bx0]
        intersection = int((a & b).sum())
        union = int(self.crops[i].sum()) + int(self.crops[j].sum()) - intersection
        return intersection / union if union else 0.0

    def __repr__(self):
        return f"CroppedMasks(num_instances={len(self)}, image_size={self.image_size})"


def crop_masks(masks, boxes, x0, y0):
    """Dense tile masks (N, h, w) -> (int xyxy boxes in image coordinates, bool crops on the CPU).

    A crop is the mask's tight extent; an empty mask gets an empty crop at its predicted box.
    """
    rows, cols = masks.any(dim=2).cpu(), masks.any(dim=1).cpu()
    extents = torch.stack([
        cols.int().argmax(dim=1),
        rows.int().argmax(dim=1),
        cols.shape[1] - cols.flip(1).int().argmax(dim=1),
        rows.shape[1] - rows.flip(1).int().argmax(dim=1),
    ], dim=1)
    at_box = boxes.floor().long()[:, :2].repeat(1, 2) - torch.tensor([x0, y0, x0, y0])
    extents = torch.where(rows.any(dim=1)[:, None], extents, at_box.clamp(min=0))
    crops = [mask[top:bottom, left:right].cpu()
             for mask, (left, top, right, bottom) in zip(masks, extents.tolist())]
    return extents + torch.tensor([x0, y0, x0, y0]), crops


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

    Tiles are not mirror-padded: border tiles are shifted inside the image instead, so every
    tile has the same shape (one resize scale), the model sees image borders as in training and
    no mirrored nuclei appear. An image no larger than a tile is a single tile: exactly
    DefaultPredictor's input and output.

    Returns ``{"instances": Instances}`` in full-image coordinates, on the CPU, with
    ``pred_boxes``, ``scores``, ``pred_classes`` and ``pred_masks`` as :class:`CroppedMasks`.
    """

    seam_tolerance = 8  # pixels
    duplicate_iou = 0.5

    def __init__(self, cfg, model=None):
        """``model``: a built detectron2 model to use instead of building one from ``cfg`` and
        loading ``cfg.MODEL.WEIGHTS``."""
        self.cfg = cfg.clone()
        self.tile_size, self.overlap, self.batch_size = (
            cfg.TEST.TILE.SIZE, cfg.TEST.TILE.OVERLAP, cfg.TEST.TILE.BATCH_SIZE)
        if not (self.tile_size > 0 and 0 <= self.overlap < self.tile_size and self.batch_size > 0):
            raise UserInputError(
                f"TEST.TILE.SIZE={self.tile_size}, OVERLAP={self.overlap}, "
                f"BATCH_SIZE={self.batch_size}: need SIZE > 0, 0 <= OVERLAP < SIZE and "
                "BATCH_SIZE > 0 (OVERLAP at least the largest nucleus plus 16 pixels)."
            )
        self.input_format = check_choice("INPUT.FORMAT", cfg.INPUT.FORMAT, ("RGB", "BGR"))
        if model is None:
            model = build_model(self.cfg)
            DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        self.model = model.eval()
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )

    def __call__(self, original_image):
        """``original_image``: (H, W, C) array in BGR order, like DefaultPredictor's."""
        if self.input_format == "RGB":
            original_image = original_image[:, :, ::-1]
        height, width = original_image.shape[:2]
        tiles = image_tiles(height, width, self.tile_size, self.overlap)
        owned = []
        with torch.no_grad():
            for first in range(0, len(tiles), self.batch_size):
                batch = tiles[first:first + self.batch_size]
                outputs = self.model([self.model_input(original_image, tile) for tile in batch])
                owned += [self.owned_instances(tile, out["instances"])
                          for tile, out in zip(batch, outputs)]
        return {"instances": self.merge(owned, (height, width))}

    def model_input(self, image, tile):
        window = image[tile.y0:tile.y0 + tile.height, tile.x0:tile.x0 + tile.width]
        resized = self.aug.get_transform(window).apply_image(window)
        tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
        return {"image": tensor, "height": tile.height, "width": tile.width}

    def owned_instances(self, tile, instances):
        """The tile's instances whose box centre lies in its core widened by ``seam_tolerance``,
        in image coordinates; those whose centre is that close to a seam may be duplicates."""
        offset = torch.tensor([tile.x0, tile.y0, tile.x0, tile.y0], dtype=torch.float32)
        boxes = instances.pred_boxes.tensor.cpu() + offset
        centres = Boxes(boxes).get_centers()
        owned = torch.ones(len(boxes), dtype=torch.bool)
        seam_distance = torch.full((len(boxes),), math.inf)
        for centre, (low, high), seams in ((centres[:, 0], tile.x_core, tile.x_seams),
                                            (centres[:, 1], tile.y_core, tile.y_seams)):
            owned &= (centre >= low - self.seam_tolerance) & (centre < high + self.seam_tolerance)
            for seam in seams:
                seam_distance = torch.minimum(seam_distance, (centre - seam).abs())
        keep = owned.nonzero().squeeze(1)
        masks = instances.pred_masks[keep.to(instances.pred_masks.device)]
        mask_boxes, crops = crop_masks(masks, boxes[keep], tile.x0, tile.y0)
        return TileInstances(boxes[keep], instances.scores.cpu()[keep],
                             instances.pred_classes.cpu()[keep], mask_boxes, crops,
                             seam_distance[keep] < self.seam_tolerance)

    def merge(self, owned, image_size):
        """One Instances from the tiles' kept instances, seam duplicates removed."""
        masks = CroppedMasks(torch.cat([t.mask_boxes for t in owned]),
                             [crop for t in owned for crop in t.crops], image_size)
        scores = torch.cat([t.scores for t in owned])
        tile_ids = torch.cat([torch.full((len(t.scores),), i) for i, t in enumerate(owned)])
        keep = self.drop_seam_duplicates(
            masks, scores, tile_ids, torch.cat([t.near_seam for t in owned]))
        instances = Instances(image_size)
        instances.pred_boxes = Boxes(torch.cat([t.boxes for t in owned])[keep])
        instances.scores = scores[keep]
        instances.pred_classes = torch.cat([t.classes for t in owned])[keep]
        instances.pred_masks = masks[keep]
        return instances

    def drop_seam_duplicates(self, masks, scores, tile_ids, near_seam):
        """Greedy by score: drop a near-seam instance whose mask overlaps, by IoU above
        ``duplicate_iou``, a better one from another tile."""
        keep = torch.ones(len(scores), dtype=torch.bool)
        candidates = near_seam.nonzero().squeeze(1)
        candidates = candidates[scores[candidates].argsort(descending=True)].tolist()
        boxes_overlap = pairwise_iou(Boxes(masks.boxes[candidates].float()),
                                     Boxes(masks.boxes[candidates].float())) > 0
        winners = []
        for rank, i in enumerate(candidates):
            if any(tile_ids[j] != tile_ids[i] and boxes_overlap[rank, j_rank]
                   and masks.iou(i, j) > self.duplicate_iou for j_rank, j in winners):
                keep[i] = False
            else:
                winners.append((rank, i))
        return keep
