"""Nuclei datasets in detectron2's DatasetCatalog: the built-in synthetic set, DSB2018, any COCO set."""
import json
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..errors import UserInputError
from .coco_io import NUCLEUS_CATEGORIES, check_coco_gt
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
        with open(json_file) as f:
            check_coco_gt(json.load(f), json_file)
        return load_coco_json(json_file, image_root, dataset_name)
    except UserInputError as e:
        raise UserInputError(f"Dataset '{dataset_name}': {e}") from None
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
