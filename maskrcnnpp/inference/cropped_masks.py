"""Instance masks kept as per-instance crops (:class:`CroppedMasks`), and what tools/predict.py
makes of them, each from the crops alone: COCO RLEs, outline polygons and the label map.

A full-image array per nucleus costs H*W per instance, so N instances cost N*H*W in time (and
in memory where they are held together): on an 8000x8000 image with tens of thousands of nuclei
that is hours. Working on the crops costs each nucleus its own box, and gives the very same RLEs,
polygons and label map as the full-image masks would (the tests compare them).
"""
import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch

# A label map is uint16 while its labels fit (at most this many nuclei), uint32 beyond.
MAX_UINT16_LABELS = int(np.iinfo(np.uint16).max)


def crop_masks(masks, boxes, x0, y0, indices=None):
    """Dense masks (N, h, w), any device, of a window at (x0, y0) of the image -> (int xyxy boxes
    in image coordinates, bool crops on the CPU) of the masks ``indices`` (default: all).

    A crop is the mask's tight extent, copied into its own storage (a view would keep the whole
    (N, h, w) tensor alive); an empty mask gets an empty crop at its box (``boxes``: (len(indices),
    4) float xyxy in image coordinates).
    """
    if indices is None:
        indices = torch.arange(len(masks))
    indices = torch.as_tensor(indices, dtype=torch.long)
    rows = masks.any(dim=2)[indices.to(masks.device)].cpu()
    cols = masks.any(dim=1)[indices.to(masks.device)].cpu()
    extents = torch.stack([
        cols.int().argmax(dim=1),
        rows.int().argmax(dim=1),
        cols.shape[1] - cols.flip(1).int().argmax(dim=1),
        rows.shape[1] - rows.flip(1).int().argmax(dim=1),
    ], dim=1).reshape(-1, 4)
    at_box = boxes.floor().long()[:, :2].repeat(1, 2) - torch.tensor([x0, y0, x0, y0])
    extents = torch.where(rows.any(dim=1)[:, None], extents, at_box.clamp(min=0))
    crops = [masks[index, top:bottom, left:right].to("cpu", copy=True)
             for index, (left, top, right, bottom) in zip(indices.tolist(), extents.tolist())]
    return extents + torch.tensor([x0, y0, x0, y0]), crops


class CroppedMasks:
    """Instance masks of a large image, each stored as a bool crop inside an integer box.

    Dense (N, H, W) masks of a large image would take N*H*W bytes; crops take the nuclei's own
    area. Indexing follows detectron2's BitMasks. Iterating yields one full-size (H, W) bool tensor
    at a time, so code written for dense ``pred_masks`` (e.g. ``instances_to_coco_json``) works
    unchanged; ``to_dense()`` or ``np.asarray`` (e.g. in detectron2's Visualizer) build all of them.
    :meth:`rle`, :meth:`polygons` and :func:`labelmap` give the same results from the crops alone.
    """

    def __init__(self, boxes, crops, image_size):
        """``boxes``: (N, 4) int64 tensor, xyxy, exclusive ends; ``crops``: N bool tensors of the
        boxes' shapes; ``image_size``: (height, width)."""
        self.boxes = boxes
        self.crops = list(crops)
        self.image_size = tuple(image_size)

    @classmethod
    def of(cls, masks):
        """``masks`` as CroppedMasks: itself if it is one, else dense (N, H, W) masks cropped to
        their tight extents (an empty mask gets an empty crop at the origin)."""
        if isinstance(masks, cls):
            return masks
        masks = torch.as_tensor(np.asarray(masks) if not torch.is_tensor(masks) else masks)
        boxes, crops = crop_masks(masks.bool(), torch.zeros(len(masks), 4), 0, 0)
        return cls(boxes, crops, masks.shape[1:])

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

    def area(self, i):
        """Pixels of mask ``i``."""
        return int(self.crops[i].sum())

    def rle(self, i):
        """Mask ``i`` as the compressed COCO RLE ``pycocotools.mask.encode`` gives for its
        full-image mask (``counts`` as bytes), built from the crop's runs."""
        height, width = self.image_size
        (x0, y0, x1, y1), crop = self.boxes[i].tolist(), self.crops[i].numpy()
        rows = y1 - y0
        # Column-major order, as COCO's RLE, with a zero closing each column: runs end in it.
        columns = np.zeros((x1 - x0, rows + 1), dtype=np.int8)
        columns[:, :rows] = crop.T
        steps = np.diff(columns.ravel(), prepend=np.int8(0))
        starts, ends = np.flatnonzero(steps == 1), np.flatnonzero(steps == -1)

        def in_image(k):
            return (x0 + k // (rows + 1)) * height + y0 + k % (rows + 1)

        starts, ends = in_image(starts), in_image(ends)
        joined = ends[:-1] == starts[1:]  # a column's run going on in the next (a full column)
        starts = np.concatenate([starts[:1], starts[1:][~joined]])
        ends = np.concatenate([ends[:-1][~joined], ends[-1:]])
        bounds = np.empty(2 * len(starts), dtype=np.int64)
        bounds[0::2], bounds[1::2] = starts, ends
        counts = np.diff(np.concatenate([[0], bounds, [height * width]]))
        if len(counts) > 1 and counts[-1] == 0:  # ends with a run of ones
            counts = counts[:-1]
        return mask_util.frPyObjects(
            {"counts": counts.tolist(), "size": [height, width]}, height, width)

    def polygons(self, i):
        """Outlines of mask ``i`` as detectron2's GenericMask finds them on the full-image mask
        (OpenCV's contours, flat [x, y, ...] float arrays, +0.5), found on the crop alone."""
        height, width = self.image_size
        (x0, y0, x1, y1), crop = self.boxes[i].tolist(), self.crops[i].numpy()
        # A zero margin where the image goes on; none at the image's own border, so OpenCV
        # treats the crop's edges exactly as it treats the full image's.
        top, left = int(y0 > 0), int(x0 > 0)
        padded = np.pad(crop.astype(np.uint8), ((top, int(y1 < height)), (left, int(x1 < width))))
        contours, hierarchy = cv2.findContours(padded, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)[-2:]
        if hierarchy is None:
            return []
        offset = np.array([x0 - left, y0 - top])
        outlines = [(contour.reshape(-1, 2) + offset).reshape(-1) for contour in contours]
        return [outline + 0.5 for outline in outlines if len(outline) >= 6]

    def __repr__(self):
        return f"CroppedMasks(num_instances={len(self)}, image_size={self.image_size})"


def labelmap_dtype(count):
    """uint16 for a label map of at most 65,535 nuclei, uint32 beyond."""
    return np.uint16 if count <= MAX_UINT16_LABELS else np.uint32


def labelmap(masks, scores=None, score_threshold=0.0):
    """:func:`maskrcnnpp.evaluation.instances_to_labelmap` painted from :class:`CroppedMasks`:
    ``i + 1`` marks ``masks[i]``, from the highest score down, a pixel keeping its first label;
    instances scoring below ``score_threshold`` are left out. The map is uint16, or uint32 for
    more than 65,535 masks (:func:`labelmap_dtype`); each mask costs its own box only."""
    labels = np.zeros(masks.image_size, dtype=labelmap_dtype(len(masks)))
    if scores is None:
        order = range(len(masks))
    else:
        scores = np.asarray(scores, dtype=np.float64)
        order = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= score_threshold]
    boxes = masks.boxes.tolist()
    for index in order:
        x0, y0, x1, y1 = boxes[index]
        region = labels[y0:y1, x0:x1]
        region[masks.crops[index].numpy() & (region == 0)] = index + 1
    return labels
