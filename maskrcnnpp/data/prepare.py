"""Convert nuclei data (DSB2018 folders, or images plus instance label maps) to COCO instance files.

Both sources end in the same layout, the one ``dsb2018_train``/``dsb2018_val`` and
``DATASETS.COCO_NUCLEI`` read::

    OUT/images/<name>.png          3-channel 8-bit RGB
    OUT/annotations/train.json     COCO: RLE masks, category "nucleus", exact areas and boxes
    OUT/annotations/val.json

Every source is first turned into one instance label map per image, so overlapping masks are
resolved before encoding and each nucleus' RLE decodes to exactly its own pixels.
"""
import functools
import hashlib
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, List

import numpy as np
from scipy import ndimage
from PIL import Image
from tqdm import tqdm

from ..errors import UserInputError, check_choice
from ..io_utils import atomic_directory, write_json
from ..preflight import check_output_folder
from .coco_io import coco_dict, write_sample
from .image_types import IMAGE_TYPES
from .images import IMAGE_EXTENSIONS, INTENSITY_SCALINGS, read_image_file, to_rgb8

LABEL_EXTENSIONS = (".png", ".tif", ".tiff")
MAX_WARNINGS_SHOWN = 20


@dataclass
class PreparationSummary:
    """What a conversion did, printed at the end so that silent data problems become visible."""

    images: int = 0
    train_images: int = 0
    val_images: int = 0
    negatives: int = 0
    nuclei: int = 0
    skipped_empty_masks: int = 0
    image_types: Counter = field(default_factory=Counter)
    fixes: Counter = field(default_factory=Counter)  # what was fixed, as LabelRules allow
    warnings: List[str] = field(default_factory=list)
    seconds: float = 0.0

    def format(self):
        lines = [
            f"{self.images} images ({self.train_images} train, {self.val_images} val; "
            f"{self.negatives} without nuclei), {self.nuclei} nuclei, "
            f"{self.skipped_empty_masks} empty masks skipped, {len(self.warnings)} warnings, "
            f"{self.seconds:.1f} s.",
            ("Fixes: " + "; ".join(f"{count} {what}" for what, count in self.fixes.items()) + "."
             if self.fixes else "Fixes: none."),
            "Image types: " + ", ".join(
                f"{self.image_types[kind]} {kind}" for kind in IMAGE_TYPES if self.image_types[kind]
            ) + ".",
        ]
        lines += [f"warning: {w}" for w in self.warnings[:MAX_WARNINGS_SHOWN]]
        if len(self.warnings) > MAX_WARNINGS_SHOWN:
            lines.append(f"... and {len(self.warnings) - MAX_WARNINGS_SHOWN} more warnings.")
        return "\n".join(lines)


@dataclass(frozen=True)
class NucleiSample:
    """One image to convert.

    ``name`` becomes the output file stem and decides the split; ``read_labels(image_shape,
    summary, rules)`` returns its instance label map (0 background), counting skips, fixes and
    warnings, and raising UserInputError for masks that ``rules`` do not allow.
    """

    name: str
    image_path: str
    read_labels: Callable[[tuple, PreparationSummary, "LabelRules"], np.ndarray]


def read_labels_file(path):
    """A mask or label map as stored: palette indices stay indices (the reader expands them)."""
    array = read_image_file(path)
    if path.lower().endswith(".png"):
        with Image.open(path) as image:
            if image.mode == "P":
                return np.array(image)
    return array


def check_same_size(path, shape, image_shape):
    if tuple(shape[:2]) != tuple(image_shape[:2]):
        raise UserInputError(
            f"{path} is {shape[1]}x{shape[0]} but its image is "
            f"{image_shape[1]}x{image_shape[0]} (width x height); masks must match their image."
        )


# Pixels touching by an edge or a corner belong to one piece of a nucleus.
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
# --pieces: what to do with a nucleus in several separate pieces.
PIECE_RULES = ("error", "keep", "split")


@dataclass(frozen=True)
class LabelRules:
    """How masks and label maps that are not what they should be are handled (see README)."""

    pieces: str = "error"  # a nucleus in several pieces: "error", "keep" (one nucleus), "split"
    binarize: bool = False  # a mask with several foreground values: threshold at half its maximum


def _pieces(mask):
    """(piece map, number of pieces) of a boolean mask, 8-connected."""
    return ndimage.label(mask, structure=EIGHT_CONNECTED)


def _several_pieces(count, where, rules, summary, hint=""):
    """Apply ``rules.pieces`` to a nucleus in ``count`` pieces; True when it is to be split."""
    if count <= 1:
        return False
    if rules.pieces == "error":
        raise UserInputError(
            f"{where} is in {count} separate pieces, but a nucleus is one piece.{hint} Pass "
            "--pieces keep to keep it as one nucleus, as annotated, or --pieces split to make "
            "each piece a nucleus."
        )
    outcome = "kept as one nucleus" if rules.pieces == "keep" else "split, one nucleus per piece"
    summary.fixes[f"nuclei in several pieces {outcome} (--pieces {rules.pieces})"] += 1
    return rules.pieces == "split"


def read_label_map(path, image_shape, summary, rules):
    """A single-channel instance label map (8/16/32-bit or palette PNG, TIFF) as integers, each
    label one nucleus in one piece (or as ``rules`` say)."""
    labels = read_labels_file(path)
    check_same_size(path, labels.shape, image_shape)
    if labels.ndim != 2:
        raise UserInputError(
            f"{path} has {labels.shape[2]} channels; an instance label map has one "
            "(0 background, every other value one nucleus)."
        )
    if labels.dtype.kind == "f":
        if not np.array_equal(labels, np.round(labels)):
            raise UserInputError(f"{path} holds non-integer values; labels must be integers.")
        labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise UserInputError(f"{path} holds negative values; labels must be >= 0.")
    labels = labels.astype(np.int64)
    values = np.unique(labels)
    values = values[values != 0]
    dense = np.where(labels == 0, 0, np.searchsorted(values, labels) + 1)
    hint = (" It looks like a binary mask of all nuclei, not a label map (every nucleus has the "
            f"value {values[0]})." if len(values) == 1 else "")
    next_label = labels.max() + 1
    for index, (value, box) in enumerate(zip(values, ndimage.find_objects(dense)), start=1):
        pieces, count = _pieces(dense[box] == index)
        if _several_pieces(count, f"{path}: label {value}", rules, summary, hint):
            crop = labels[box]  # a view: relabels the pieces in place
            for piece in range(2, count + 1):
                crop[pieces == piece] = next_label
                next_label += 1
    return labels


def read_mask(path, image_shape, summary, rules):
    """One nucleus' binary mask as a boolean array: one channel (identical colour channels are
    read as one), two values (or thresholded at half its maximum with ``rules.binarize``)."""
    mask = read_labels_file(path)
    check_same_size(path, mask.shape, image_shape)
    if mask.ndim == 3:
        colour = mask[:, :, :3]
        if not (colour == colour[:, :, :1]).all():
            raise UserInputError(
                f"Mask {path} has {mask.shape[2]} channels that differ; a nucleus mask has one "
                "(0 background, one value for the nucleus). Save it as a grayscale image."
            )
        mask = colour[:, :, 0]
        summary.fixes["masks with identical colour channels read as one channel"] += 1
    values = np.unique(mask)
    foreground = values[values != 0]
    if len(foreground) > 1:
        if not rules.binarize:
            shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
            raise UserInputError(
                f"Mask {path} is not binary: it holds {len(values)} values ({shown}), while a "
                "nucleus mask holds 0 and one foreground value. Pass --binarize-masks to "
                "threshold such masks at half their maximum."
            )
        summary.fixes["non-binary masks thresholded at half their maximum (--binarize-masks)"] += 1
        return mask > values.max() / 2
    return mask > 0


def read_dsb_masks(mask_paths, image_id, image_shape, summary, rules):
    """One binary mask per nucleus -> label map; empty masks are skipped.

    Overlap rule: a pixel claimed by several masks stays with the first of them in sorted file-name
    order; each overlap is reported, and a mask left with no pixel of its own is dropped.
    """
    labels = np.zeros(image_shape[:2], dtype=np.int32)
    label = 0
    for path in mask_paths:
        mask = read_mask(path, image_shape, summary, rules)
        if not mask.any():
            summary.skipped_empty_masks += 1
            continue
        pieces, count = _pieces(mask)
        parts = [pieces == piece for piece in range(1, count + 1)] if _several_pieces(
            count, f"Mask {path}", rules, summary) else [mask]
        for part in parts:
            label += 1
            overlap = np.count_nonzero(part & (labels > 0))
            labels[part & (labels == 0)] = label
            if overlap:
                name = os.path.basename(path)
                outcome = "dropped" if overlap == np.count_nonzero(part) else "kept the rest"
                summary.warnings.append(
                    f"{image_id}: mask {name} overlaps earlier masks on {overlap} pixel(s), which "
                    f"stay with the earlier masks ({outcome})."
                )
    return labels


def dsb2018_samples(src):
    """The Kaggle layout: ``src/<id>/images/<id>.png`` and ``src/<id>/masks/*.png``."""
    if not os.path.isdir(src):
        raise UserInputError(f"Source folder {src} does not exist.")
    samples = []
    for image_id in sorted(os.listdir(src)):
        folder = os.path.join(src, image_id)
        if image_id.startswith(".") or not os.path.isdir(folder):
            continue
        image_path = os.path.join(folder, "images", image_id + ".png")
        if not os.path.isfile(image_path):
            raise UserInputError(
                f"{folder} has no images/{image_id}.png; every image folder of the DSB2018 layout "
                "holds images/<id>.png and masks/*.png."
            )
        mask_folder = os.path.join(folder, "masks")
        masks = sorted(os.listdir(mask_folder)) if os.path.isdir(mask_folder) else []
        mask_paths = [os.path.join(mask_folder, m) for m in masks if m.lower().endswith(".png")]
        read_labels = functools.partial(read_dsb_masks, mask_paths, image_id)
        samples.append(NucleiSample(image_id, image_path, read_labels))
    if not samples:
        raise UserInputError(
            f"No image folders in {src}; expected the DSB2018 layout <id>/images/<id>.png, "
            "<id>/masks/*.png (e.g. the unzipped stage1_train)."
        )
    return samples


def files_by_stem(folder, extensions, what):
    """{stem: path} of the files in ``folder`` with one of ``extensions``; stems must be unique."""
    if not os.path.isdir(folder):
        raise UserInputError(f"{what} folder {folder} does not exist.")
    found = {}
    for name in sorted(os.listdir(folder)):
        stem, extension = os.path.splitext(name)
        if extension.lower() not in extensions:
            continue
        if stem in found:
            raise UserInputError(
                f"{what} folder {folder} has two files named {stem!r} "
                f"({os.path.basename(found[stem])}, {name}); keep one."
            )
        found[stem] = os.path.join(folder, name)
    if not found:
        raise UserInputError(f"{what} folder {folder} holds no {'/'.join(extensions)} files.")
    return found


def labelmap_samples(images_dir, labels_dir):
    """Images and instance label maps matched by file stem; every image needs its label map."""
    images = files_by_stem(images_dir, IMAGE_EXTENSIONS, "Image")
    labels = files_by_stem(labels_dir, LABEL_EXTENSIONS, "Label map")
    for missing, present, where in ((images, labels, labels_dir), (labels, images, images_dir)):
        unmatched = sorted(set(present) - set(missing))
        if unmatched:
            raise UserInputError(
                f"{len(unmatched)} file(s) have no partner with the same stem in {where}: "
                f"{', '.join(unmatched[:5])}{' ...' if len(unmatched) > 5 else ''}. "
                "Images and label maps are matched by file name without extension."
            )
    return [
        NucleiSample(stem, images[stem], functools.partial(read_label_map, labels[stem]))
        for stem in sorted(images)
    ]


def is_validation(name, val_fraction, seed):
    """Split by a hash of (seed, name): stable per image, so adding images never moves others."""
    # surrogateescape: a file name that is not UTF-8 hashes as its bytes; others as before
    digest = hashlib.sha256(f"{seed}/{name}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def prepare_nuclei(samples, out, *, description, sources=(), val_fraction=0.1, seed=0,
                   intensity="percentile", pieces="error", binarize=False, overwrite=False):
    """Write ``samples`` to ``out`` in the COCO layout above and return the summary.

    ``out`` appears only once complete (a killed run leaves nothing that looks finished).
    Images without nuclei are kept as negatives.
    """
    check_choice("intensity", intensity, INTENSITY_SCALINGS)
    rules = LabelRules(check_choice("pieces", pieces, PIECE_RULES), binarize)
    if not 0 <= val_fraction <= 1:
        raise UserInputError(f"val_fraction={val_fraction} must lie in [0, 1].")
    check_output_folder(out, sources, overwrite)
    start = time.perf_counter()
    summary = PreparationSummary()
    splits = {"train": ([], []), "val": ([], [])}
    with atomic_directory(out, overwrite=overwrite) as tmp:
        os.makedirs(os.path.join(tmp, "images"))
        first_annotation_id = 1
        for coco_id, sample in enumerate(tqdm(samples, desc="images", unit="image"), start=1):
            image = to_rgb8(read_image_file(sample.image_path), intensity, sample.image_path)
            labels = sample.read_labels(image.shape, summary, rules)
            entry, annotations = write_sample(
                os.path.join(tmp, "images"), sample.name + ".png", image, labels, coco_id,
                first_annotation_id,
            )
            first_annotation_id += len(annotations)
            split = "val" if is_validation(sample.name, val_fraction, seed) else "train"
            images, split_annotations = splits[split]
            images.append(entry)
            split_annotations.extend(annotations)
            summary.image_types[entry["image_type"]] += 1
            summary.nuclei += len(annotations)
            summary.negatives += int(not annotations)
        for split, (images, annotations) in splits.items():
            write_json(
                coco_dict(images, annotations, f"{description}, {split} split "
                          f"(val_fraction={val_fraction}, seed={seed})"),
                os.path.join(tmp, "annotations", f"{split}.json"),
            )
    summary.train_images, summary.val_images = (len(splits[s][0]) for s in ("train", "val"))
    summary.images = summary.train_images + summary.val_images
    if val_fraction > 0 and not summary.val_images:
        summary.warnings.append("The val split is empty; raise --val-fraction.")
    summary.seconds = time.perf_counter() - start
    return summary


def prepare_dsb2018(src, out, **options):
    """DSB2018 (Kaggle layout) -> COCO layout; see :func:`prepare_nuclei` for ``options``."""
    return prepare_nuclei(dsb2018_samples(src), out, sources=(src,),
                          description=f"DSB2018 nuclei from {os.path.abspath(src)}", **options)


def prepare_labelmaps(images_dir, labels_dir, out, **options):
    """Images + instance label maps -> COCO layout; see :func:`prepare_nuclei` for ``options``."""
    return prepare_nuclei(
        labelmap_samples(images_dir, labels_dir), out, sources=(images_dir, labels_dir),
        description=f"Nuclei from {os.path.abspath(images_dir)}", **options,
    )
