"""The overlays tools/predict.py writes: detectron2's Visualizer drawing the nuclei over the image,
pixel for pixel as ``Visualizer(image).overlay_instances(...).get_image()`` (the tests compare
them), in memory that does not grow with the nuclei and by a few bytes a pixel of the image.

The Visualizer costs more in four places. It copies the image four times as it is made (0.7 GB
for an 8000x8000 image); here it is made over one pixel and then sized (:func:`_visualizer`). It
shows the image through matplotlib's ``imshow``, whose rendering resamples it through float
copies (about 100 bytes a pixel: 1.7 GB for a 4000x4000 image); here the image is drawn onto the
canvas pixel for pixel, a strip of rows at a time, which is what that ``imshow`` renders at
scale 1. Given RLEs, it decodes a full-image mask
per nucleus and keeps them all; here each outline is found on the nucleus' crop
(:class:`CropOutline`). And every polygon of an outline is a matplotlib patch (10-20 kB) until
the figure is drawn (a ragged mask has dozens); here about ``POLYGONS_PER_PASS`` are at a time,
the canvas of one pass being the image of the next.
"""
import gc

import numpy as np
from detectron2.utils.colormap import random_color
from detectron2.utils.visualizer import GenericMask, Visualizer
from matplotlib.artist import Artist

# Rows of the image converted to RGBA and drawn at a time.
STRIP_ROWS = 256
# Polygons drawn by one matplotlib pass over the canvas (a pass takes the outlines reaching it).
POLYGONS_PER_PASS = 4096


class CropOutline(GenericMask):
    """A mask for detectron2's Visualizer given by its outline polygons and its area, found on
    its crop (:class:`~.cropped_masks.CroppedMasks`): the Visualizer draws it as it draws the
    full-image mask, which it would decode and keep for every instance at once (N x H x W)."""

    def __init__(self, masks, index, area=None):
        """Mask ``index`` of :class:`~.cropped_masks.CroppedMasks`; ``area``, if given, stands
        for its area where the Visualizer orders the masks by it."""
        super().__init__(masks.polygons(index), *masks.image_size)
        # GenericMask's mask.sum() is an unsigned 64-bit integer
        self._area = np.uint64(masks.area(index)) if area is None else area

    def area(self):
        return self._area


class ImageStrips(Artist):
    """An HxWx3 BGR image drawn pixel for pixel from the canvas' top left corner, in strips."""

    zorder = 0  # under the outlines, as an image

    def __init__(self, image_bgr):
        super().__init__()
        self.image_bgr = image_bgr

    def draw(self, renderer):
        gc = renderer.new_gc()
        height, width = self.image_bgr.shape[:2]
        for top in range(0, height, STRIP_ROWS):
            strip = self.image_bgr[top:top + STRIP_ROWS]
            rgba = np.full((*strip.shape[:2], 4), 255, dtype=np.uint8)
            rgba[:, :, :3] = strip[::-1, :, ::-1]  # bottom row first, as Agg takes images
            renderer.draw_image(gc, 0, int(renderer.height) - top - len(strip), rgba)
        gc.restore()


def overlay_bgr(image_bgr, masks=None, boxes=None):
    """``Visualizer(image_rgb).overlay_instances(masks=..., boxes=...).get_image()``, as BGR:
    ``masks`` as :class:`~.cropped_masks.CroppedMasks`, drawn about ``POLYGONS_PER_PASS``
    polygons at a time; or ``boxes`` (XYXY), in one pass."""
    if masks is None:
        return _drawn(image_bgr, boxes=boxes)
    # What overlay_instances does first: a random colour per instance, then the largest first.
    colors = [random_color(rgb=True, maximum=1) for _ in range(len(masks))]
    order = np.argsort(-np.asarray([np.uint64(masks.area(i)) for i in range(len(masks))]))
    canvas, chosen, outlines, polygons = image_bgr, [], [], 0
    for rank, index in enumerate(order.tolist()):
        # An "area" falling with the rank keeps that order within the pass.
        outlines.append(CropOutline(masks, index, area=len(order) - rank))
        chosen.append(index)
        polygons += len(outlines[-1].polygons)
        if polygons >= POLYGONS_PER_PASS or rank == len(order) - 1:
            canvas = _drawn(canvas, masks=outlines, assigned_colors=[colors[i] for i in chosen])
            chosen, outlines, polygons = [], [], 0
    return _drawn(image_bgr, masks=[]) if canvas is image_bgr else canvas


def _visualizer(height, width):
    """detectron2's Visualizer of an image of this size, as ``Visualizer(image)`` makes it but
    without the image: built over one pixel, then sized as VisImage and Visualizer size
    themselves (their copies of the image would be four at once, 0.7 GB at 8000 x 8000)."""
    visualizer = Visualizer(np.zeros((1, 1, 3), dtype=np.uint8))
    output = visualizer.output
    output.width, output.height = width, height
    output.fig.set_size_inches((width * output.scale + 1e-2) / output.dpi,
                               (height * output.scale + 1e-2) / output.dpi)
    output.ax.images[0].remove()  # ImageStrips draws the pixels
    output.ax.set_xlim(0, width)  # the limits imshow's extent sets
    output.ax.set_ylim(height, 0)
    output.ax.set_autoscale_on(False)
    output.img = visualizer.img = None  # copies overlay_instances does not read
    visualizer._default_font_size = max(np.sqrt(height * width) // 90, 10 // output.scale)
    return visualizer


def _drawn(image_bgr, **instances):
    """The Visualizer's overlay_instances(**instances) over the image, rendered, as BGR."""
    visualizer = _visualizer(*image_bgr.shape[:2])
    visualizer.output.ax.add_artist(ImageStrips(image_bgr))
    canvas = visualizer.overlay_instances(**instances).canvas
    canvas.draw()
    drawn = np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[:, :, 2::-1])
    del visualizer, canvas
    # The figure and its canvas refer to each other, so their renderer (4 bytes a pixel) would
    # wait for the garbage collector: a pass's renderer is freed before the next pass draws.
    gc.collect()
    return drawn
