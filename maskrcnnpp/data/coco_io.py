"""Instance masks to COCO instance annotations (RLE), shared by every nuclei data source, and the
checks a COCO ground-truth file must pass to be trained on or scored."""
import json
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
from scipy import ndimage

from ..errors import UserInputError
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
    """Write an HxWx3 RGB uint8 array as PNG (OpenCV writes BGR). Encoded in memory and written
    by numpy: cv2.imwrite crashes on a file name that is not valid UTF-8."""
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
    if not ok:
        raise OSError(f"could not encode image {path}")
    encoded.tofile(os.fspath(path))


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


def check_coco_gt(dataset, path):
    """Raise one clear error for a ground truth the nuclei metrics cannot score as written:
    not COCO, image sizes that are not whole numbers, image or annotation ids used twice (COCO
    keeps one of them silently), annotations naming an unknown image or category, or other than
    one category (the instance-map metrics know no classes: a second would be scored as the
    first)."""
    if not isinstance(dataset, dict) or not all(
        isinstance(dataset.get(key), list) for key in ("images", "annotations", "categories")
    ):
        raise UserInputError(
            f"The ground-truth file {path} is not a COCO instance file: it needs 'images', "
            "'annotations' and 'categories' lists."
        )
    for image in dataset["images"]:
        if not isinstance(image, dict) or not all(key in image for key in ("id", "height", "width")):
            raise UserInputError(
                f"The ground-truth file {path} has an image without 'id', 'height' and 'width': "
                f"{str(image)[:200]}"
            )
        for key in ("height", "width"):
            value = image[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                name = f" ({image['file_name']})" if "file_name" in image else ""
                raise UserInputError(
                    f"The ground-truth file {path}: image {image['id']}{name} has {key} "
                    f"{json.dumps(value)}; 'height' and 'width' must be whole numbers of pixels "
                    f"written without quotes, e.g. \"{key}\": 64."
                )
    categories = [c.get("id") if isinstance(c, dict) else c for c in dataset["categories"]]
    if len(categories) != 1:
        raise UserInputError(
            f"The ground-truth file {path} has {len(categories)} categories {categories[:5]}; "
            "nuclei are one category, and the metrics score one. Give all nuclei one category."
        )
    annotations = dataset["annotations"]
    for what, entries in (("image", dataset["images"]), ("annotation", annotations)):
        if not all(isinstance(entry, dict) and "id" in entry for entry in entries):
            raise UserInputError(f"The ground-truth file {path} has an {what} without an 'id'.")
        ids = [entry["id"] for entry in entries]
        if len(set(map(repr, ids))) < len(ids):
            twice = sorted({repr(i) for i in ids if ids.count(i) > 1})[:3]
            raise UserInputError(
                f"The ground-truth file {path} uses {what} id(s) {', '.join(twice)} more than once; "
                f"each {what} needs its own id."
            )
    image_ids = {image["id"] for image in dataset["images"]}
    for key, known, what in (("image_id", image_ids, "image"),
                             ("category_id", set(categories), "category")):
        unknown = [a for a in annotations if a.get(key) not in known]
        if unknown:
            raise UserInputError(
                f"The ground-truth file {path}: {len(unknown)} annotation(s) name an unknown "
                f"{what} (e.g. annotation {unknown[0]['id']!r} has {key} {unknown[0].get(key)!r}); "
                f"every annotation's {key} must be one of the file's {what}s."
            )
