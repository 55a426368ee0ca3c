"""Deployment: a trained model exported by detectron2's own machinery (``detectron2.export``) to
TorchScript, by scripting or by tracing, or to ONNX by tracing; the exported model checked against
PyTorch on sample tiles and timed beside it.

What is exported is the model a tile goes through in ``tools/predict.py``: a (C, H, W) float image
in INPUT.FORMAT, already resized as the test-time resize does, in; boxes, scores, classes and (for
mask models) the mask head's 28x28 probabilities out, in that image's coordinates (detectron2's
``do_postprocess=False``). Overlap-tile inference, resizing back and pasting masks stay outside, as
in detectron2's deployment examples.
"""
import contextlib
import copy
import os
import re
import time
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
import torch
from detectron2.export import TracingAdapter, scripting_with_instances
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Boxes, Instances
from torch import Tensor, nn

from .errors import UserInputError, check_choice
from .io_utils import atomic_path

# method -> the file it writes
EXPORT_METHODS = {"scripting": "model.ts", "tracing": "model.ts", "onnx": "model.onnx"}

# ROIAlignV2 (aligned=True, every config here) became ONNX's RoiAlign "half_pixel" mode in opset 16;
# older opsets export it without the half-pixel shift, silently wrong (boxes off by 100+ pixels).
MIN_ONNX_OPSET = 16
DEFAULT_ONNX_OPSET = 17

# Instances fields a scripted model may return, with their types (detectron2's export_model.py).
SCRIPTED_FIELDS = {
    "proposal_boxes": Boxes,
    "objectness_logits": Tensor,
    "pred_boxes": Boxes,
    "scores": Tensor,
    "pred_classes": Tensor,
    "pred_masks": Tensor,
}


# Untimed calls before timing: TorchScript's profiling executor records and optimises its graph
# during the first two calls, which are several times slower than the rest.
WARM_UP_CALLS = 2


@dataclass(frozen=True)
class Tolerance:
    """How far an exported model's outputs may be from PyTorch's: the same detections in the same
    order and classes, boxes within ``box_pixels``, scores and mask probabilities within theirs."""

    box_pixels: float = 1e-2
    score: float = 1e-4
    mask_probability: float = 1e-3


def inference(model, inputs):
    """The exported computation in eager PyTorch: ``[Instances]`` in the resized image's frame."""
    if isinstance(model, GeneralizedRCNN):
        return model.inference(inputs, do_postprocess=False)
    return [output["instances"] for output in model(inputs)]  # RetinaNet: already at image size


def _trace_inference(model, inputs):
    return [{"instances": instances} for instances in inference(model, inputs)]


class _ScriptableRCNN(nn.Module):
    """An R-CNN as TorchScript can hold it: images in, each image's Instances fields out.
    (One class per meta-architecture: TorchScript compiles both branches of an ``if``.)"""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.eval()  # scripting_with_instances exports eval mode only

    def forward(self, inputs: Tuple[Dict[str, Tensor]]) -> List[Dict[str, Tensor]]:
        instances = self.model.inference(inputs, do_postprocess=False)
        return [i.get_fields() for i in instances]


class _ScriptableDetector(_ScriptableRCNN):
    """A one-stage detector (RetinaNet), whose forward gives the Instances."""

    def forward(self, inputs: Tuple[Dict[str, Tensor]]) -> List[Dict[str, Tensor]]:
        return [output["instances"].get_fields() for output in self.model(inputs)]


class ExportedModel:
    """An exported model and how to run it on one image tensor, giving ``Instances`` as
    :func:`inference` does."""

    def __init__(self, method, path, run):
        self.method, self.path, self._run = method, path, run

    def __call__(self, image):
        return self._run(image)


def check_opset(opset):
    """``opset`` if this exporter can write it and RoiAlign is right in it, else UserInputError."""
    from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as newest

    if not MIN_ONNX_OPSET <= opset <= newest:
        raise UserInputError(
            f"ONNX opset {opset} cannot hold this model: its ROIAlignV2 pooling (aligned=True) is "
            f"ONNX RoiAlign's half_pixel mode, new in opset {MIN_ONNX_OPSET}, and this PyTorch "
            f"exports up to opset {newest}. Pass --opset {DEFAULT_ONNX_OPSET} (or {MIN_ONNX_OPSET}"
            f"-{newest})."
        )
    return opset


def export(model, method, sample_image, output_dir, opset=DEFAULT_ONNX_OPSET):
    """Export ``model`` (eval mode, CPU) by ``method`` into ``output_dir``; returns the
    :class:`ExportedModel`. Tracing and ONNX record the computation on ``sample_image`` (C, H, W);
    the ONNX graph takes any image size. The file is written atomically;
    an op the method cannot export is a UserInputError naming it."""
    check_choice("--method", method, EXPORT_METHODS)
    model.eval()
    path = os.path.join(output_dir, EXPORT_METHODS[method])
    if method == "scripting":
        adapter = (_ScriptableRCNN if isinstance(model, GeneralizedRCNN) else _ScriptableDetector)
        with _explained_failure(method):  # on a copy: scripting swaps in the modules'
            # __prepare_scriptable__ versions in place, which would rename the model's parameters
            exported = scripting_with_instances(adapter(copy.deepcopy(model)), SCRIPTED_FIELDS)
        _save_torchscript(exported, path)
        return ExportedModel(method, path, lambda image: _fields_to_instances(
            exported(({"image": image},))[0], image.shape[-2:]))

    adapter = TracingAdapter(model, [{"image": sample_image}], _trace_inference).eval()
    if method == "tracing":
        with _explained_failure(method), torch.no_grad():
            exported = torch.jit.trace(adapter, (sample_image,), check_trace=False)
        _save_torchscript(exported, path)
        return ExportedModel(method, path, lambda image: adapter.outputs_schema(
            exported(image))[0]["instances"])

    check_opset(opset)
    session = _export_onnx(adapter, sample_image, path, opset)
    input_name = session.get_inputs()[0].name

    def run_onnx(image):
        outputs = session.run(None, {input_name: image.numpy()})
        return adapter.outputs_schema([torch.from_numpy(o) for o in outputs])[0]["instances"]

    return ExportedModel(method, path, run_onnx)


def _save_torchscript(module, path):
    with atomic_path(path) as tmp:
        torch.jit.save(module, tmp)


def _export_onnx(adapter, sample_image, path, opset):
    """Write the ONNX file and open it in onnxruntime (which checks the graph)."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime
    except ImportError as e:
        raise UserInputError(
            f"ONNX export needs the onnx and onnxruntime packages ({e.name} is missing): "
            "pip install onnx onnxruntime."
        ) from None
    with atomic_path(path) as tmp:
        with _explained_failure("onnx"), torch.no_grad():
            torch.onnx.export(adapter, (sample_image,), tmp, opset_version=opset, dynamo=False,
                              input_names=["image"],
                              dynamic_axes={"image": {1: "height", 2: "width"}})
        session = onnxruntime.InferenceSession(tmp, providers=["CPUExecutionProvider"])
    adapter.eval()  # the exporter restores the adapter's mode, which is the model's
    return session


# What to do when a method cannot export an op.
ADVICE = {
    "scripting": "export by tracing instead (--method tracing), which records the ops run on a "
                 "sample image and needs no TorchScript types",
    "tracing": "export by scripting (--method scripting), or replace the op in the model",
    "onnx": "export TorchScript instead (--method tracing or scripting), which runs it",
}


@contextlib.contextmanager
def _explained_failure(method):
    """Turn an exporter's failure into one UserInputError that names the op and what to do."""
    try:
        yield
    except UserInputError:
        raise
    except Exception as error:  # the exporters raise many types, all meaning "cannot export"
        raise UserInputError(
            f"Export by {method} failed: {_first_line(error)}. To go on, {ADVICE[method]}."
        ) from error


def _first_line(error):
    """The line of an exporter's (often pages long) message that says what is unsupported."""
    text = str(error).strip()
    for pattern in (r"Unsupported: ONNX export of operator [^\[]*", r"Exporting the operator[^\n]*",
                    r"[^\n]*is not supported[^\n]*", r"[^\n]*[Uu]nsupported[^\n]*"):
        found = re.search(pattern, text)
        if found:
            return found.group(0).split(". ")[0].strip().rstrip(".")
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".rstrip(".")


def _fields_to_instances(fields, image_size):
    instances = Instances(tuple(image_size))
    for name, value in fields.items():
        instances.set(name, Boxes(value) if name == "pred_boxes" else value)
    return instances


def compare(reference, exported):
    """Largest differences between two models' Instances on one image (detections compared in
    order); ``count`` is None when both found the same number of detections."""
    if len(reference) != len(exported):
        return {"count": (len(reference), len(exported))}
    difference = {"count": None, "detections": len(reference)}
    pairs = {"box_pixels": ("pred_boxes", lambda b: b.tensor), "score": ("scores", None),
             "mask_probability": ("pred_masks", None)}
    for key, (field, unwrap) in pairs.items():
        if reference.has(field):
            a, b = reference.get(field), exported.get(field)
            a, b = (unwrap(a), unwrap(b)) if unwrap else (a, b)
            difference[key] = float((a.float() - b.float()).abs().max()) if len(a) else 0.0
    difference["classes_equal"] = bool(torch.equal(reference.pred_classes, exported.pred_classes))
    return difference


def within(difference, tolerance=Tolerance()):
    """Whether a :func:`compare` result is within ``tolerance``."""
    if difference["count"] is not None or not difference["classes_equal"]:
        return False
    return all(difference.get(key, 0.0) <= getattr(tolerance, key)
               for key in ("box_pixels", "score", "mask_probability"))


def check_and_time(model, exported, images, repeats=3, progress=iter):
    """Run PyTorch and the exported model on each image ``repeats`` times, interleaved so that
    both see the same machine load, after :data:`WARM_UP_CALLS` untimed calls; returns the
    per-image differences and the median latencies (seconds per image) of each. ``progress``
    wraps the images (e.g. a tqdm bar)."""
    differences, eager_times, exported_times = [], [], []
    with torch.no_grad():
        for _ in range(WARM_UP_CALLS):  # not timed: TorchScript optimises its graph on these
            inference(model, [{"image": images[0]}])
            exported(images[0])
        for image in progress(images):
            reference, result = None, None
            for _ in range(repeats):
                start = time.perf_counter()
                reference = inference(model, [{"image": image}])[0]
                eager_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                result = exported(image)
                exported_times.append(time.perf_counter() - start)
            differences.append(compare(reference, result))
    return {
        "differences": differences,
        "eager_seconds": float(np.median(eager_times)),
        "exported_seconds": float(np.median(exported_times)),
    }
