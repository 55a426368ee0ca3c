"""Nuclei datasets in detectron2's DatasetCatalog: the built-in synthetic set, DSB2018, any COCO set."""
import json
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..errors import UserInputError, did_you_mean
from .coco_io import NUCLEUS_CATEGORIES
from .images import read_header
from .synthetic import generate_synthetic_dataset

# split -> (number of images, seed); image i of a split depends only on (seed, i).
SYNTHETIC_SPLITS = {"train": (200, 0), "val": (24, 1)}
DSB2018_PREPARE = (
    "python datasets/prepare_nuclei.py dsb2018 PATH/TO/stage1_train {root} --pieces keep"
)


def datasets_root():
    """Where datasets live: $DETECTRON2_DATASETS, as in detectron2, defaulting to ./datasets."""
    return os.path.abspath(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))


def load_nuclei_coco(json_file, image_root, dataset_name, how_to_create=""):
    """detectron2 dicts from a COCO nuclei file, with one clear error for missing or malformed data."""
    hint = f" {how_to_create}" if how_to_create else ""
    if not os.path.isfile(json_file):
        raise UserInputError(
            f"Dataset '{dataset_name}': annotation file {json_file} does not exist.{hint}"
        )
    if not os.path.isdir(image_root):
        raise UserInputError(
            f"Dataset '{dataset_name}': image folder {image_root} does not exist.{hint}"
        )
    try:
        return load_coco_json(json_file, image_root, dataset_name)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserInputError(
            f"Dataset '{dataset_name}': {json_file} is not valid JSON ({e}). "
            "Re-create it or point the dataset at a valid COCO instance file."
        ) from e
    except (KeyError, TypeError, AssertionError, IndexError) as e:
        raise UserInputError(
            f"Dataset '{dataset_name}': {json_file} is not a COCO instance file "
            f"(problem: {type(e).__name__}: {e}). It needs 'images', 'annotations' and "
            "'categories' lists with COCO fields."
        ) from e


def register_nuclei_coco(name, json_file, image_root, how_to_create="", prepare=None):
    """Register a COCO-format nuclei dataset.

    ``how_to_create`` is shown when its files are missing; ``prepare``, if given, is called before
    each load to create the files on first use.
    """

    def load():
        if prepare is not None:
            prepare()
        return load_nuclei_coco(json_file, image_root, name, how_to_create)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
        thing_classes=["nucleus"],
        thing_colors=[(0, 255, 0)],
    )


def ensure_synthetic_split(folder, split):
    """Generate a synthetic split on first use and reuse it after."""
    if not os.path.isfile(os.path.join(folder, "annotations.json")):
        num_images, seed = SYNTHETIC_SPLITS[split]
        generate_synthetic_dataset(
            folder, num_images, seed, description=f"Mask R-CNN++ synthetic nuclei, {split}"
        )


def register_all_nuclei(root):
    """Register the built-in datasets under ``root`` (nothing is read or generated until first use)."""
    for split in SYNTHETIC_SPLITS:
        folder = os.path.join(root, "nuclei_synthetic", split)
        register_nuclei_coco(
            f"nuclei_synthetic_{split}",
            os.path.join(folder, "annotations.json"),
            os.path.join(folder, "images"),
            prepare=lambda folder=folder, split=split: ensure_synthetic_split(folder, split),
        )
    dsb_root = os.path.join(root, "dsb2018")
    for split in ("train", "val"):
        register_nuclei_coco(
            f"dsb2018_{split}",
            os.path.join(dsb_root, "annotations", f"{split}.json"),
            os.path.join(dsb_root, "images"),
            how_to_create="Prepare it with: " + DSB2018_PREPARE.format(root=dsb_root),
        )


def register_config_datasets(cfg):
    """Register each ``[name, json_file, image_root]`` of DATASETS.COCO_NUCLEI (once per process)."""
    for entry in cfg.DATASETS.COCO_NUCLEI:
        if len(entry) != 3:
            raise UserInputError(
                f"DATASETS.COCO_NUCLEI entry {list(entry)} must be [name, json_file, image_root]."
            )
        name, json_file, image_root = entry
        if name in DatasetCatalog.list():
            if MetadataCatalog.get(name).get("json_file") == json_file:
                continue
            raise UserInputError(
                f"Dataset name {name!r} in DATASETS.COCO_NUCLEI is already registered; pick another name."
            )
        register_nuclei_coco(name, json_file, image_root)


# Pillow modes of the 8-bit images detectron2's data loader reads as they are.
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "RGB", "RGBA")
# Bad images listed in an error, at most.
SHOWN_PROBLEMS = 3


def check_datasets(cfg, names, train_names=()):
    """Fail early, in the launching process, if a dataset is unknown, missing or malformed.

    Every image a dataset references is checked by its header (present, an image, the size its
    COCO entry says, 8-bit), all at once, so one message lists what is wrong; a training dataset
    (``train_names``) must have an image with annotations. Loading each dataset once also
    generates the synthetic set before workers start.
    """
    registered = DatasetCatalog.list()
    for name in dict.fromkeys(names):
        if name not in registered:
            nuclei = sorted(n for n in registered if "nuclei" in n or "dsb" in n)
            raise UserInputError(
                f"Dataset {name!r} is not registered.{did_you_mean(name, registered)} "
                f"Built-in nuclei datasets: {nuclei}. Register your own COCO set with "
                "DATASETS.COCO_NUCLEI \"[['NAME', 'path/to/annotations.json', 'path/to/images']]\"."
            )
        records = DatasetCatalog.get(name)
        if not records:
            raise UserInputError(f"Dataset {name!r} holds no images.")
        if name in train_names and not any(record.get("annotations") for record in records):
            raise UserInputError(
                f"Dataset {name!r} is used for training, but none of its {len(records)} images "
                "has annotations: there are no nuclei to learn from. Check its COCO file's "
                "'annotations' and their 'image_id's."
            )
        _check_images(name, records)


def _check_images(name, records):
    problems = []
    for record in records:
        try:
            width, height, mode = read_header(record["file_name"])
        except UserInputError as e:
            problems.append(str(e))
            continue
        if (width, height) != (record["width"], record["height"]):
            problems.append(
                f"Image {record['file_name']} is {width}x{height} but its COCO entry says "
                f"{record['width']}x{record['height']} (width x height)."
            )
        elif mode not in EIGHT_BIT_MODES:
            problems.append(
                f"Image {record['file_name']} is not 8-bit (Pillow mode {mode}); training reads "
                "8-bit images: convert the set with datasets/prepare_nuclei.py labelmap."
            )
    if problems:
        more = len(problems) - SHOWN_PROBLEMS
        raise UserInputError(
            f"Dataset {name!r}: {len(problems)} of its {len(records)} images cannot be used: "
            + " ".join(problems[:SHOWN_PROBLEMS]) + (f" ... and {more} more." if more > 0 else "")
        )


def category_ids(dataset_name):
    """The COCO category id of each class index the models predict, as load_coco_json maps them
    (the dataset's category ids, sorted); the nucleus category alone where the dataset has no
    COCO file on this machine (e.g. predicting with weights trained elsewhere)."""
    metadata = MetadataCatalog.get(dataset_name)
    mapping = metadata.get("thing_dataset_id_to_contiguous_id")
    if mapping:
        return [dataset_id for dataset_id, _ in sorted(mapping.items(), key=lambda item: item[1])]
    json_file = metadata.get("json_file")
    if json_file and os.path.isfile(json_file):
        with open(json_file) as f:
            return sorted(category["id"] for category in json.load(f)["categories"])
    return [category["id"] for category in NUCLEUS_CATEGORIES]
