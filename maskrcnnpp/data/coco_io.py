"""Instance masks to COCO instance annotations (RLE), shared by every nuclei data source."""
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
from scipy import ndimage

from .image_types import image_type

NUCLEUS_CATEGORIES = [{"id": 1, "name": "nucleus", "supercategory": "nucleus"}]


def encode_mask(mask):
    """Binary HxW mask -> COCO RLE with a ``str`` count string (JSON-serialisable)."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def labelmap_to_annotations(labels, image_id, first_annotation_id):
    """One COCO annotation per non-zero value of an instance label map.

    Areas are exact pixel counts and boxes are the tight pixel extents ``[x, y, w, h]``,
    so decoding the RLE gives back exactly the pixels of each label.
    """
    labels = np.asarray(labels)
    annotations = []
    values = np.unique(labels)
    values = values[values != 0]
    if len(values) == 0:
        return annotations
    dense = np.searchsorted(values, labels) + 1
    dense[labels == 0] = 0
    slices = ndimage.find_objects(dense)
    areas = np.bincount(dense.ravel(), minlength=len(values) + 1)
    for index, box in enumerate(slices, start=1):
        ys, xs = box
        mask = np.zeros(labels.shape, dtype=np.uint8)
        mask[box] = dense[box] == index
        annotations.append(
            {
                "id": first_annotation_id + len(annotations),
                "image_id": image_id,
                "category_id": 1,
                "segmentation": encode_mask(mask),
                "area": int(areas[index]),
                "bbox": [xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start],
                "iscrowd": 0,
            }
        )
    return annotations


def coco_dict(images, annotations, description):
    """A complete COCO instance-format dict with the single ``nucleus`` category."""
    return {
        "info": {"description": description},
        "images": images,
        "annotations": annotations,
        "categories": NUCLEUS_CATEGORIES,
    }


def write_rgb_png(path, image):
    """Write an HxWx3 RGB uint8 array as PNG (OpenCV writes BGR)."""
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[:, :, ::-1])):
        raise OSError(f"could not write image {path}")


def write_sample(image_dir, file_name, image, labels, image_id, first_annotation_id):
    """Write one image (HxWx3 RGB) as PNG into ``image_dir``; return its COCO image entry, with
    its :func:`~.image_types.image_type`, and the annotations of its label map."""
    write_rgb_png(os.path.join(image_dir, file_name), image)
    entry = {
        "id": image_id,
        "file_name": file_name,
        "height": image.shape[0],
        "width": image.shape[1],
        "image_type": image_type(image),
    }
    return entry, labelmap_to_annotations(labels, image_id, first_annotation_id)
