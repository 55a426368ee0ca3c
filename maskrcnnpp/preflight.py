"""Pre-launch checks: everything a run needs is checked before any process starts or any file is
written (the config's model builds, its weights load safely and fit, the datasets are registered and
readable, the output is writable, the device suits the machine), so a mistake ends in one line."""
import os
import re
import tempfile

from detectron2.data import DatasetCatalog
import detectron2.modeling
from detectron2.modeling import build_model

from .checkpoint import NucleiCheckpointer, load_weights
from .cli import weights_folder_message
from .config_loader import build_cfg
from .data.augment import build_nuclei_augmentations
from .data.images import read_header
from .device import check_amp, check_device
from .errors import UserInputError, did_you_mean
from .evaluation.metrics import check_matching_thresholds, check_score_threshold
from .inference.tiling import TiledPredictor
from .lazy import build_lazy_model, instantiate_or_explain, is_lazy_config, load_lazy_config


def check_writable(path, what="Output folder"):
    """Raise unless a folder can be created (or written) at ``path``, leaving nothing behind:
    the nearest existing folder above it must be a folder that takes a new file."""
    existing = os.path.abspath(os.fspath(path))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserInputError(f"{what} {path} cannot be created: {existing} is a file, not a folder.")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UserInputError(
            f"{what} {path} is not writable ({e.strerror} in {existing}); choose another place."
        ) from None



def check_output_folder(out, sources, overwrite, reads_subfolders=True, what="Output folder"):
    """Raise unless ``out`` can become a tool's new output folder: writable, not holding (or
    being) one of the ``sources`` it reads, not inside a source folder whose subfolders are read
    (the next run would read it as input), and not an earlier output unless ``overwrite``."""
    out = os.path.abspath(out)
    for source in map(os.path.abspath, sources):
        if os.path.commonpath([out, source]) == out:
            raise UserInputError(
                f"{what} {out} is or contains the input {source}; choose another output folder."
            )
        if reads_subfolders and os.path.commonpath([out, source]) == source:
            raise UserInputError(
                f"{what} {out} lies inside the input {source}, where it would be read as "
                "input next time; choose a folder outside it."
            )
    if os.path.exists(out) and not overwrite:
        raise UserInputError(f"{what} {out} already exists; use --overwrite to replace it.")
    check_writable(out, what)

# detectron2's registries of model parts, which configs name (MODEL.BACKBONE.NAME, ...).
MODEL_REGISTRIES = [getattr(detectron2.modeling, name) for name in dir(detectron2.modeling)
                    if name.endswith("_REGISTRY")]


def build_model_or_explain(cfg):
    """``build_model(cfg)``; a config whose choices do not fit together (a name no registry
    holds, a GroupNorm width not divisible by its 32 groups, ...) fails in detectron2 with a
    traceback: here, as one UserInputError line that names the cause."""
    try:
        return build_model(cfg)
    except UserInputError:
        raise
    except (KeyError, ValueError, AssertionError, TypeError) as e:
        cause = (str(e).strip("'\"").splitlines() or [type(e).__name__])[0].rstrip("!.")
        unknown = re.fullmatch(r"No object named '(.+)' found in '(.+)' registry", cause)
        if unknown:
            registry = next(r for r in MODEL_REGISTRIES if r._name == unknown.group(2))
            cause += "." + did_you_mean(unknown.group(1), [name for name, _ in registry])
        cause += "" if cause.endswith((".", "?")) else "."
        raise UserInputError(f"The config's model cannot be built: {cause} Check the MODEL keys it "
                             "sets against detectron2's and Mask R-CNN++'s.") from None


def check_model(cfg, weights=None):
    """Build the model of ``cfg`` on the CPU, as the tools run it (with its overlap-tile
    predictor), and load ``weights`` (default MODEL.WEIGHTS, none if empty) into it: a choice that
    cannot be built, or a missing, unreadable, unsafe or unfitting weights file, fails here with
    its one-line error, before a tool writes anything. Returns the model (eval mode)."""
    weights = cfg.MODEL.WEIGHTS if weights is None else weights
    if weights and "://" not in weights and os.path.isdir(weights):
        raise UserInputError(weights_folder_message("MODEL.WEIGHTS", weights))
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise UserInputError(f"The weights file {weights} does not exist.")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = weights
    model = build_model_or_explain(cfg)
    TiledPredictor(cfg, model)  # checks TEST.TILE and INPUT.FORMAT
    if weights:
        load_weights(cfg, model)
    return model.eval()


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
        entry = {key: record[key] for key in ("width", "height")}
        if not all(isinstance(value, int) and not isinstance(value, bool) for value in entry.values()):
            problems.append(
                f"Image {record['file_name']}: its COCO entry has width {entry['width']!r} and "
                f"height {entry['height']!r}; both must be whole numbers of pixels written without "
                "quotes, e.g. \"height\": 64."
            )
        elif (width, height) != (record["width"], record["height"]):
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


def check_lazy_inputs(cfg, eval_only=False):
    """Check the output folder and the device, build the model on the CPU (DenseFPN and
    detectron2 check their arguments), load the weights it starts from, and check the datasets,
    before anything runs."""
    check_writable(cfg.train.output_dir, "train.output_dir")
    check_device(cfg.train.device, "train.device")
    check_amp(cfg.train.amp.enabled, cfg.train.device, "train.amp.enabled", "train.device")
    model = build_lazy_model(cfg, device="cpu")
    instantiate_or_explain(cfg.lr_multiplier, "lr_multiplier")
    if cfg.train.init_checkpoint:
        NucleiCheckpointer(model).load(cfg.train.init_checkpoint)
    elif eval_only:
        raise UserInputError("--eval-only needs trained weights: pass train.init_checkpoint=PATH.")
    train_names = () if eval_only else _names(cfg.dataloader.train.dataset.names)
    check_datasets(cfg, [*train_names, *_names(cfg.dataloader.test.dataset.names)], train_names)


def _names(names):
    return (names,) if isinstance(names, str) else tuple(names)


# What a training run leaves in its output folder (detectron2's names): the signs of an earlier
# run. detectron2 resumes from the checkpoint that LAST_CHECKPOINT names.
LAST_CHECKPOINT = "last_checkpoint"
EARLIER_RUN_FILES = (LAST_CHECKPOINT, "model_final.pth", "metrics.json")


def earlier_run_files(output_dir):
    """The files of EARLIER_RUN_FILES that ``output_dir`` holds."""
    return [name for name in EARLIER_RUN_FILES if os.path.isfile(os.path.join(output_dir, name))]


def unresumable_run_files(output_dir):
    """The files of an earlier run in ``output_dir`` that --resume cannot continue, having no
    LAST_CHECKPOINT (as detectron2's Checkpointer.has_checkpoint decides): checkpoints stay on
    the machine that wrote them and are not committed with results. Empty where there is no
    earlier run or it can be resumed."""
    if os.path.isfile(os.path.join(output_dir, LAST_CHECKPOINT)):
        return []
    return earlier_run_files(output_dir)


def check_new_training(output_dir, key, resume=False):
    """Raise if ``output_dir`` holds an earlier training run that this one would not continue:
    training into it again from the start would replace its model and interleave both runs'
    iterations in metrics.json. With ``resume``, that is a run left without its checkpoints."""
    found = unresumable_run_files(output_dir) if resume else earlier_run_files(output_dir)
    if not found:
        return
    if resume:
        raise UserInputError(
            f"{key} {output_dir} holds an earlier training run ({', '.join(found)}) but no "
            f"{LAST_CHECKPOINT} to resume it from (checkpoints stay on the machine that wrote "
            f"them): pass --overwrite instead of --resume to train it again from the start, or "
            f"train into another {key}."
        )
    raise UserInputError(
        f"{key} {output_dir} holds an earlier training run ({', '.join(found)}): continue it "
        f"with --resume, train into another {key}, or pass --overwrite to replace it."
    )


def weights_to_load(cfg, resume):
    """The file training or evaluation starts from: with --resume, OUTPUT_DIR's last checkpoint
    where there is one, else MODEL.WEIGHTS (as detectron2's resume_or_load decides)."""
    checkpointer = NucleiCheckpointer.from_config(cfg, None, cfg.OUTPUT_DIR)
    if resume and checkpointer.has_checkpoint():
        return checkpointer.get_checkpoint_file()
    return cfg.MODEL.WEIGHTS


def check_train_net_args(args):
    """Everything a run needs, checked before any process starts or any file is written: the
    config and the model it builds, the weights it loads, the datasets and every image they
    reference, and a writable OUTPUT_DIR that holds no earlier run unless it is resumed or
    replaced. Returns the run's output folder."""
    if not args.config_file:
        raise UserInputError("--config-file is required, e.g. --config-file configs/maskrcnnpp_R50.yaml")
    if args.overwrite and (args.resume or args.eval_only):
        raise UserInputError("--overwrite replaces an earlier training run by a new one; it does "
                             "not go with --resume or --eval-only.")
    keeps_earlier_run = not (args.eval_only or args.overwrite)
    if is_lazy_config(args.config_file):
        cfg = load_lazy_config(args.config_file, args.opts)
        if keeps_earlier_run:
            check_new_training(cfg.train.output_dir, "train.output_dir", args.resume)
        check_lazy_inputs(cfg, args.eval_only)
        return cfg.train.output_dir
    cfg = build_cfg(args.config_file, args.opts)
    if keeps_earlier_run:
        check_new_training(cfg.OUTPUT_DIR, "OUTPUT_DIR", args.resume)
    if args.eval_only and not args.resume and os.path.isdir(cfg.MODEL.WEIGHTS):
        raise UserInputError(weights_folder_message("MODEL.WEIGHTS", cfg.MODEL.WEIGHTS))
    if args.eval_only and not (args.resume or os.path.isfile(cfg.MODEL.WEIGHTS)):
        raise UserInputError(
            f"--eval-only needs trained weights, but MODEL.WEIGHTS={cfg.MODEL.WEIGHTS!r} is not a file. "
            "Pass MODEL.WEIGHTS path/to/model_final.pth (or --resume to use OUTPUT_DIR's last checkpoint)."
        )
    check_writable(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    check_model(cfg, weights_to_load(cfg, args.resume))
    if not args.eval_only:
        build_nuclei_augmentations(cfg, is_train=True)  # checks INPUT.NUCLEI_AUG
    check_score_threshold(cfg.TEST.NUCLEI.SCORE_THRESHOLD, "TEST.NUCLEI.SCORE_THRESHOLD")
    check_matching_thresholds(cfg.TEST.NUCLEI.MATCHING_THRESHOLDS)
    train = () if args.eval_only else cfg.DATASETS.TRAIN
    check_datasets(cfg, [*train, *cfg.DATASETS.TEST], train_names=train)
    return cfg.OUTPUT_DIR
