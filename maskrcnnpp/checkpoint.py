"""Checkpoints that are safe to load and to keep: no code runs from a weights file, weights must
fit the model, and a checkpoint is written whole or not at all.

- ``.pth`` files load with ``torch.load(weights_only=True)``, which rebuilds tensors and plain
  containers and refuses anything else. ``.pkl`` files are Python pickles (detectron2's and
  Detectron's model zoo): unpickling can run any code the file contains, so they are refused
  unless ``MODEL.LOAD.ALLOW_PICKLE`` says the user trusts the file.
- A checkpoint whose parameters do not all match the model (another architecture, such as FPN
  weights for the dense neck, or ImageNet weights of the backbone alone) is an error, unless
  ``MODEL.LOAD.PARTIAL`` asks for the matching part (fine-tuning). detectron2 would only log it.
- A truncated or corrupt file is an error that names it.
- Checkpoints and ``last_checkpoint`` are written to a temporary file and renamed, so a run killed
  while saving leaves the previous checkpoint to resume from.
"""
import os
import pickle
import zipfile

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .errors import UserInputError
from .io_utils import atomic_path, write_text

# Keys listed in an error, at most.
SHOWN_KEYS = 5


class NucleiCheckpointer(DetectionCheckpointer):
    """detectron2's DetectionCheckpointer with the safety rules above."""

    def __init__(self, model, save_dir="", *, partial=False, allow_pickle=False, **checkpointables):
        """
        Args:
            partial (bool): allow weights that fit only part of the model.
            allow_pickle (bool): allow ``.pkl`` files (pickles can run code when loaded).
            model, save_dir, checkpointables: as for DetectionCheckpointer.
        """
        super().__init__(model, save_dir, **checkpointables)
        self.partial = partial
        self.allow_pickle = allow_pickle

    @classmethod
    def from_config(cls, cfg, model, save_dir="", **checkpointables):
        return cls(model, save_dir, partial=cfg.MODEL.LOAD.PARTIAL,
                   allow_pickle=cfg.MODEL.LOAD.ALLOW_PICKLE, **checkpointables)

    def _load_file(self, filename):
        if filename.endswith(".pkl") and not self.allow_pickle:
            raise UserInputError(
                f"{filename} is a Python pickle, and loading a pickle runs whatever code it "
                "contains. Load .pth weights instead, or, for a file from a source you trust "
                "(such as detectron2's model zoo), set MODEL.LOAD.ALLOW_PICKLE True."
            )
        try:
            return super()._load_file(filename)
        except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError,
                ValueError) as e:
            raise UserInputError(
                f"Cannot read the weights in {filename}: the file is truncated, corrupt or not "
                f"a checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})."
            ) from None

    def _torch_load(self, f):
        return torch.load(f, map_location=torch.device("cpu"), weights_only=True)

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
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
        if problems and not self.partial:
            raise UserInputError(
                "The weights do not fit this model: parameters " + "; ".join(problems) + ". They "
                "were trained with another architecture or config: load them with the config "
                "they were trained with, or set MODEL.LOAD.PARTIAL True to load the matching "
                "part and train the rest (fine-tuning)."
            )
        return incompatible

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


def _shown(keys):
    keys = list(keys)
    return ", ".join(keys[:SHOWN_KEYS]) + (", ..." if len(keys) > SHOWN_KEYS else "")


def load_weights(cfg, model):
    """Load ``cfg.MODEL.WEIGHTS`` into ``model`` by the rules above; returns ``model``."""
    NucleiCheckpointer.from_config(cfg, model).load(cfg.MODEL.WEIGHTS)
    return model


