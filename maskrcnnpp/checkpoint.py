"""Checkpoints that are safe to load and to keep: no code runs from a weights file, weights must
fit the model, and a checkpoint is written whole or not at all.

- ``.pth`` files load with ``torch.load(weights_only=True)``, which rebuilds tensors and plain
  containers and refuses anything else. ``.pkl`` files (detectron2's and Detectron's model zoo)
  load with a restricted unpickler that rebuilds only what such files hold (dicts, lists,
  strings, numbers, NumPy arrays and dtypes) and refuses any other object without creating it.
  A pickle it refuses loads only if ``MODEL.LOAD.ALLOW_PICKLE`` says the user trusts the file.
- A checkpoint whose parameters do not all match the model (another architecture, such as FPN
  weights for the dense neck) is an error, unless ``MODEL.LOAD.PARTIAL`` asks for the matching
  part (fine-tuning). detectron2 would only log it. One partial fit is the normal start of
  fine-tuning and needs no flag: a file of the bottom-up ResNet alone (ImageNet weights, after
  detectron2's renaming of Detectron names) that initialises all of it; the log lists what was
  initialised, what starts fresh and what of the file (its ImageNet classifier) is not used.
- A truncated or corrupt file is an error that names it; so is a URL that cannot be downloaded.
- Checkpoints and ``last_checkpoint`` are written to a temporary file and renamed, so a run killed
  while saving leaves the previous checkpoint to resume from.
"""
import codecs
import collections
import os
import pickle
import re
import zipfile
from urllib.parse import urlparse

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from .errors import UserInputError
from .io_utils import atomic_path, write_text

# Keys listed in an error, at most.
SHOWN_KEYS = 5
# The bottom-up ResNet of the FPN and dense necks: what ImageNet weights initialise.
BOTTOM_UP = "backbone.bottom_up."
# What an ImageNet ResNet file holds that no detector has (after detectron2's renaming): its
# classifier (Detectron's fc1000, torchvision's fc, pycls' linear) and the bias of the stem's
# convolution (Detectron's conv1_b), which detectron2's stem does not have.
IMAGENET_LEFTOVERS = re.compile(r"(fc1000|fc|linear)\.(weight|bias)|stem\.conv1\.bias")
# NumPy dtype kinds of weights: bool, signed and unsigned integers, floats, complex numbers.
NUMERIC_KINDS = "biufc"


def _weights_globals():
    """{(module, name): object} of the globals a detectron2 or Detectron weights pickle names:
    NumPy's array and scalar constructors under their NumPy 1 (numpy.core) and NumPy 2
    (numpy._core) names, ``numpy.ndarray``, ``numpy.dtype``, ``OrderedDict``, and the
    ``_codecs.encode`` that Python 3 writes bytes with in protocol 2."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # NumPy 1
        from numpy.core import multiarray, numeric
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("collections", "OrderedDict"): collections.OrderedDict,
               ("_codecs", "encode"): codecs.encode}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle names a global that weights files do not hold; ``args[0]`` is its name."""


class WeightsUnpickler(pickle.Unpickler):
    """Unpickles what weights pickles hold and nothing else: any other global (a class or
    function the pickle would call) raises RefusedGlobal before it is imported or called."""

    def find_class(self, module, name):
        try:
            return _weights_globals()[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None


class NucleiCheckpointer(DetectionCheckpointer):
    """detectron2's DetectionCheckpointer with the safety rules above."""

    def __init__(self, model, save_dir="", *, partial=False, allow_pickle=False, **checkpointables):
        """
        Args:
            partial (bool): allow weights that fit only part of the model.
            allow_pickle (bool): load ``.pkl`` files with Python's own unpickler, which can run
                code, when the restricted one refuses them.
            model, save_dir, checkpointables: as for DetectionCheckpointer.
        """
        super().__init__(model, save_dir, **checkpointables)
        self.partial = partial
        self.allow_pickle = allow_pickle
        self._backbone_summary = None

    @classmethod
    def from_config(cls, cfg, model, save_dir="", **checkpointables):
        return cls(model, save_dir, partial=cfg.MODEL.LOAD.PARTIAL,
                   allow_pickle=cfg.MODEL.LOAD.ALLOW_PICKLE, **checkpointables)

    def load(self, path, *args, **kwargs):
        """As DetectionCheckpointer.load; a URL (``detectron2://``, ``https://``) that cannot
        be downloaded is one UserInputError naming it and how to use a local copy."""
        parsed = urlparse(path or "")
        if parsed.scheme and parsed.scheme != "file" and "://" in path:
            url = parsed._replace(query="").geturl()
            try:
                local = PathManager.get_local_path(url)
            except OSError as e:  # urllib's URLError and HTTPError are OSErrors
                reason = getattr(e, "reason", None) or e
                https = _https_url(url)
                raise UserInputError(
                    f"Cannot download the weights {url}"
                    + (f" ({https})" if https != url else "")
                    + f": {str(reason).splitlines()[0][:200]}. Without internet access here, "
                    f"download {https} on a machine that has it, copy the file here and pass "
                    f"its path as MODEL.WEIGHTS (--weights, or train.init_checkpoint for a "
                    f"LazyConfig)."
                ) from None
            path = local + (f"?{parsed.query}" if parsed.query else "")
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename):
        try:
            if filename.endswith(".pkl"):
                return self._load_pickle(filename)
            return super()._load_file(filename)
        except RefusedGlobal as e:
            raise UserInputError(
                f"{filename} is a pickle that holds {e.args[0]}, which weights files do not "
                "hold; it was not loaded, since unpickling it could run code. Load .pth "
                "weights instead, or, for a file from a source you trust, set "
                "MODEL.LOAD.ALLOW_PICKLE True."
            ) from None
        except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError,
                ValueError, AttributeError, TypeError, KeyError, IndexError) as e:
            if isinstance(e, UserInputError):
                raise
            raise UserInputError(
                f"Cannot read the weights in {filename}: the file is truncated, corrupt or not "
                f"a checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})."
            ) from None

    def _load_pickle(self, filename):
        """A detectron2 or Detectron .pkl, as DetectionCheckpointer reads it, unpickled by
        WeightsUnpickler (or by pickle itself where allow_pickle trusts the file)."""
        if self.allow_pickle:
            return super()._load_file(filename)
        with PathManager.open(filename, "rb") as f:
            data = WeightsUnpickler(f, encoding="latin1").load()
        if not isinstance(data, dict):
            raise UserInputError(f"{filename} holds a {type(data).__name__}, not a checkpoint "
                                 "(a dict of weights).")
        if "model" in data and "__author__" in data:  # detectron2's model zoo format
            self.logger.info(f"Reading a file from '{data['__author__']}'")
        else:  # Detectron's (Caffe2): detectors keep their weights in "blobs"
            weights = data.get("blobs", data)
            data = {"model": {k: v for k, v in weights.items() if not k.endswith("_momentum")},
                    "__author__": "Caffe2", "matching_heuristics": True}
        _check_arrays(filename, data["model"])
        return data

    def _torch_load(self, f):
        return torch.load(f, map_location=torch.device("cpu"), weights_only=True)

    def _load_model(self, checkpoint):
        model_keys = list(self.model.state_dict())
        incompatible = super()._load_model(checkpoint)
        self._backbone_summary = _backbone_summary(model_keys, incompatible)
        problems = []
        if incompatible.incorrect_shapes:
            problems.append(f"{len(incompatible.incorrect_shapes)} of another shape "
                            f"({_shown(key for key, _, _ in incompatible.incorrect_shapes)})")
        if incompatible.missing_keys:
            problems.append(f"{len(incompatible.missing_keys)} missing from the weights "
                            f"({_shown(incompatible.missing_keys)})")
        if incompatible.unexpected_keys:
            problems.append(f"{len(incompatible.unexpected_keys)} the model does not have "
                            f"({_shown(incompatible.unexpected_keys)})")
        if problems and not self.partial and self._backbone_summary is None:
            raise UserInputError(
                "The weights do not fit this model: parameters " + "; ".join(problems) + ". They "
                "were trained with another architecture or config: load them with the config "
                "they were trained with, or set MODEL.LOAD.PARTIAL True to load the matching "
                "part and train the rest (fine-tuning)."
            )
        return incompatible

    def _log_incompatible_keys(self, incompatible):
        if self._backbone_summary is None:
            super()._log_incompatible_keys(incompatible)
            return
        for line in self._backbone_summary:
            self.logger.info(line)

    def save(self, name, **kwargs):
        """Write ``<save_dir>/<name>.pth`` whole or not at all, then point last_checkpoint at it."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        path = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info(f"Saving checkpoint to {path}")
        with atomic_path(path) as tmp:
            torch.save(data, tmp)
        self.tag_last_checkpoint(f"{name}.pth")

    def tag_last_checkpoint(self, last_filename_basename):
        write_text(last_filename_basename, os.path.join(self.save_dir, "last_checkpoint"))


def _https_url(url):
    """Where ``detectron2://NAME`` is downloaded from; other URLs as they are."""
    prefix = "detectron2://"
    if url.startswith(prefix):
        return "https://dl.fbaipublicfiles.com/detectron2/" + url[len(prefix):]
    return url


def _check_arrays(filename, weights):
    """Raise unless every value of a pickle's weights is an array of numbers (or a tensor)."""
    if not isinstance(weights, dict):
        raise UserInputError(f"{filename} holds no dict of weights: it is not a checkpoint.")
    for key, value in weights.items():
        if isinstance(value, torch.Tensor):
            continue
        if not isinstance(value, np.ndarray) or value.dtype.kind not in NUMERIC_KINDS:
            kind = f"an array of {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
            raise UserInputError(f"{filename} is not a weights file: its entry {key!r} holds "
                                 f"{kind}, not an array of numbers.")


def _backbone_summary(model_keys, incompatible):
    """Log lines for a file of the bottom-up ResNet alone that initialised all of it (and
    nothing else of the model), or None for any other fit."""
    missing = set(incompatible.missing_keys)
    loaded = [k for k in model_keys if k not in missing]
    fresh = [k for k in model_keys if k in missing]
    unused = list(incompatible.unexpected_keys)
    if (incompatible.incorrect_shapes or not loaded
            or not all(k.startswith(BOTTOM_UP) for k in loaded)
            or any(k.startswith(BOTTOM_UP) and not k.endswith("num_batches_tracked") for k in fresh)
            or not all(IMAGENET_LEFTOVERS.fullmatch(k) for k in unused)):
        return None
    parts = dict.fromkeys(k.split(".")[0] if not k.startswith("backbone.") else "backbone (neck)"
                          for k in fresh)
    lines = [f"Backbone weights: the file initialised the bottom-up ResNet ({BOTTOM_UP}*, "
             f"{len(loaded)} tensors); {len(fresh)} tensors start fresh: {', '.join(parts)}."]
    if unused:
        lines.append(f"Not used from the file (parts of the ImageNet classifier network that a "
                     f"detector does not have): {_shown(unused)}.")
    return lines


def _shown(keys):
    keys = list(keys)
    return ", ".join(keys[:SHOWN_KEYS]) + (", ..." if len(keys) > SHOWN_KEYS else "")


def load_weights(cfg, model):
    """Load ``cfg.MODEL.WEIGHTS`` into ``model`` by the rules above; returns ``model``."""
    NucleiCheckpointer.from_config(cfg, model).load(cfg.MODEL.WEIGHTS)
    return model
