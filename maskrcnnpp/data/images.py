"""The one image reader of the project: preparation, prediction and evaluation read files alike.

Images of any depth (8/16/32-bit, float), grayscale, RGB or RGBA, become 8-bit RGB the same way
everywhere: 8-bit values are kept, deeper images are stretched from their own percentiles
(``INTENSITY_SCALINGS``). A file that is not an image, or that ends early (truncated), is an
error that names it: OpenCV decodes most formats and returns nothing for a broken PNG or TIFF,
but silently grey-fills a truncated JPEG, so JPEGs are decoded with Pillow, which refuses them.
A JPEG's EXIF orientation is applied, as detectron2's training loader applies it, so an image
reads the same in training, prediction and evaluation, upright as viewers show it. A TIFF of
several pages (a stack or time series) is refused rather than read as its first page.
"""
import os

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserInputError

# Extensions of the image files the tools read (prepare_nuclei, predict), lower case.
IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
# How images deeper than 8 bits become 8-bit: the (low, high) percentiles of the image's own
# pixels (all channels together, so colours keep their balance) are stretched to 0..255.
INTENSITY_SCALINGS = {"percentile": (0.1, 99.9), "minmax": (0.0, 100.0)}
_PILLOW_DECODED = (".jpg", ".jpeg")
# EXIF's Orientation tag; values 5-8 turn the image a quarter, swapping width and height.
ORIENTATION_TAG = 0x0112


def read_image_file(path):
    """The pixels of an image file as stored: HxW or HxWxC (RGB or RGBA order), any depth.

    Palette images come out as their colours; raises UserInputError for a missing, unreadable
    or truncated file.
    """
    if not os.path.isfile(path):
        raise UserInputError(f"Image {path} does not exist.")
    if path.lower().endswith(_PILLOW_DECODED):
        try:
            with Image.open(path) as image:
                return np.array(ImageOps.exif_transpose(image))
        except (OSError, UnidentifiedImageError) as e:
            raise UserInputError(f"Cannot read image {path}: {e}. Is the file complete?") from None
    if path.lower().endswith((".tif", ".tiff")):
        _check_single_page(path)
    # Read by numpy and decoded from memory: cv2.imread crashes the process (a segmentation
    # fault) on a file name that is not valid UTF-8, which numpy opens as Python does.
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise UserInputError(
            f"Cannot read image {path}: it is not an image file OpenCV can decode, or it is "
            "truncated. Is the file complete?"
        )
    if image.ndim == 3 and image.shape[2] in (3, 4):
        image = image[:, :, [2, 1, 0, 3][: image.shape[2]]]  # OpenCV's BGR(A) -> RGB(A)
    return image


def _check_single_page(path):
    """Raise unless the TIFF at ``path`` holds one page: OpenCV would read the first alone."""
    try:
        with Image.open(path) as image:
            pages = getattr(image, "n_frames", 1)
    except (OSError, UnidentifiedImageError, ValueError):
        return  # not one Pillow reads: OpenCV decides
    if pages > 1:
        raise UserInputError(
            f"Image {path} is a TIFF of {pages} pages (a stack or time series), and Mask R-CNN++ "
            "segments one 2-D image per file: save each page you want as its own file."
        )


def to_rgb8(image, intensity="percentile", path="image"):
    """Any HxW / HxWx1 / HxWx3 / HxWx4 (RGB(A)) image of any depth -> HxWx3 uint8 RGB; alpha is
    dropped. 8-bit images keep their values; deeper ones are stretched by ``intensity``."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] in (3, 4):
        image = image[:, :, :3]
    elif image.ndim != 2:
        raise UserInputError(
            f"{path}: image of shape {image.shape} is not supported; "
            "use a grayscale, RGB or RGBA image."
        )
    if image.dtype != np.uint8:
        low, high = np.percentile(image, INTENSITY_SCALINGS[intensity])
        scaled = (image.astype(np.float64) - low) / max(high - low, np.finfo(np.float64).tiny)
        image = np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)
    return np.ascontiguousarray(np.dstack([image] * 3) if image.ndim == 2 else image)


def read_rgb8(path, intensity="percentile"):
    """An image file as HxWx3 uint8 RGB (see :func:`to_rgb8`)."""
    return to_rgb8(read_image_file(path), intensity, path)


def read_header(path):
    """(width, height, Pillow mode) from the file's header alone, fast enough to check every image
    of a dataset before training; raises UserInputError if the file is missing or no image."""
    if not os.path.isfile(path):
        raise UserInputError(f"Image {path} does not exist.")
    try:
        with Image.open(path) as image:
            turned = (path.lower().endswith(_PILLOW_DECODED)  # read upright, as read_image_file does
                      and image.getexif().get(ORIENTATION_TAG) in (5, 6, 7, 8))  # a quarter turn
            width, height = image.size
            return (height, width, image.mode) if turned else (width, height, image.mode)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UserInputError(f"Image {path} is not an image file ({e}).") from None
