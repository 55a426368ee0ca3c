"""Mask R-CNN on a batch of tiles in bounded memory: GeneralizedRCNN's inference step by step, the
mask head run on at most ``MASK_HEAD_CHUNK`` detections at a time, and each mask pasted into the
tile only when the tile keeps it (:class:`PendingMasks`).

detectron2's own call runs the mask head on every detection of the batch at once (about 1.3 MB
per detection in its 28x28x256 layers: 2.4 GB for 4 tiles of 460 detections each) and pastes
every mask into a dense (N, tile, tile) tensor per tile (190 MB for 460 detections on a 640 px
tile), whatever the overlap-tile merge keeps. The results are the same: the same boxes, scores
and classes (detector_postprocess itself), and each mask as paste_masks_in_image pastes it alone.
"""
import torch
from detectron2.layers.mask_ops import _do_paste_mask
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.roi_heads import StandardROIHeads

from .cropped_masks import crop_masks

# Detections per mask-head call: the mask head's memory grows with this (about 1.3 MB each).
MASK_HEAD_CHUNK = 128
# GeneralizedRCNN's mask threshold (detector_postprocess's default).
MASK_THRESHOLD = 0.5


def pastes_lazily(model):
    """Whether :func:`rcnn_inference` runs ``model`` as its own call would: a GeneralizedRCNN
    (or subclass keeping its inference) in eval mode, with an RPN and StandardROIHeads (or a
    subclass, e.g. cascade) predicting masks and no keypoints."""
    if not isinstance(model, GeneralizedRCNN) or model.training:
        return False
    heads = model.roi_heads
    return (type(model).inference is GeneralizedRCNN.inference
            and model.proposal_generator is not None and isinstance(heads, StandardROIHeads)
            and heads.mask_on and not heads.keypoint_on)


class PendingMasks:
    """The masks of one tile's detections before pasting: the mask head's probabilities (N, 1,
    M, M) and the boxes (N, 4) in tile pixels, on the model's device."""

    def __init__(self, probabilities, boxes, tile_size):
        self.probabilities, self.boxes, self.tile_size = probabilities, boxes, tuple(tile_size)

    def __len__(self):
        return len(self.boxes)

    def paste_region(self, index):
        """Mask ``index`` pasted as detectron2 pastes masks on the CPU (``paste_masks_in_image``,
        one at a time, ``skip_empty``), but kept to the region it samples around its box: (bool
        region, its left, its top) in tile pixels. The tile's mask is zero outside the region, so
        no full-tile array is made per detection (one per nucleus, zeroed and scanned, cost most
        of the time of a large image, and their churn fragmented the heap as it grew)."""
        region, (rows, cols) = _do_paste_mask(self.probabilities[index:index + 1],
                                              self.boxes[index:index + 1], *self.tile_size,
                                              skip_empty=True)
        return region[0] >= MASK_THRESHOLD, int(cols.start), int(rows.start)

    def crops(self, indices, window, x0, y0, boxes):
        """:func:`~.cropped_masks.crop_masks` of the masks ``indices``, each pasted alone and cut
        to ``window`` ((left, top, right, bottom) in tile pixels; (x0, y0) in the image); an
        empty one gets an empty crop at its row of ``boxes`` (image pixels)."""
        left, top, right, bottom = window
        mask_boxes, crops = [torch.zeros((0, 4), dtype=torch.long)], []
        for row, index in enumerate(indices.tolist()):
            region, region_left, region_top = self.paste_region(index)
            # the region's part inside the window, and where that part starts in the image
            cut_left, cut_top = max(region_left, left), max(region_top, top)
            cut = region[cut_top - region_top:max(bottom - region_top, 0),
                         cut_left - region_left:max(right - region_left, 0)]
            if cut.numel():
                box, crop = crop_masks(cut[None], boxes[row:row + 1],
                                       x0 + cut_left - left, y0 + cut_top - top)
            else:  # nothing of the region in the window: an empty crop at the box
                box, crop = crop_masks(torch.zeros((1, 1, 1), dtype=torch.bool),
                                       boxes[row:row + 1], x0, y0)
            mask_boxes.append(box)
            crops += crop
        return torch.cat(mask_boxes), crops


def rcnn_inference(model, batched_inputs, chunk=MASK_HEAD_CHUNK):
    """``model(batched_inputs)`` for a model :func:`pastes_lazily` accepts, but with each image's
    ``pred_masks`` a :class:`PendingMasks`, the mask head run ``chunk`` detections at a time."""
    images = model.preprocess_image(batched_inputs)
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features, None)
    detections = model.roi_heads._forward_box(features, proposals)
    outputs = []
    for k, (found, inputs, size) in enumerate(zip(detections, batched_inputs, images.image_sizes)):
        image_features = {name: level[k:k + 1] for name, level in features.items()}
        probabilities = [
            model.roi_heads.forward_with_given_boxes(image_features, [found[first:first + chunk]])
            [0].pred_masks for first in range(0, len(found), chunk)
        ]
        found.index = torch.arange(len(found), device=found.scores.device)
        height, width = inputs.get("height", size[0]), inputs.get("width", size[1])
        result = detector_postprocess(found, height, width)  # boxes to the tile; empty ones out
        kept = result.index
        result.remove("index")
        probabilities = (torch.cat(probabilities)[kept] if probabilities
                         else torch.zeros((0, 1, 1, 1), device=kept.device))
        result.pred_masks = PendingMasks(probabilities, result.pred_boxes.tensor, (height, width))
        outputs.append({"instances": result})
    return outputs
