"""The napari plugin: a dock widget that segments nuclei in an image layer with a trained model.

It runs the model as tools/predict.py does (:class:`TiledPredictor`: overlap-tile inference for an
image larger than a tile) on the layer's pixels, read by the rules of the project's image reader
(:func:`to_rgb8`: 16-bit and float images stretched by their percentiles), and adds the label map
predict.py writes as a ``Labels`` layer, plus the scores as a ``Points`` layer if asked. Bad
input (no weights, weights that do not fit the config, a layer that is no 2-D image) is shown as
one napari error message and leaves the viewer as it was. Installed by ``pip install -e
".[napari]"``; napari finds it through maskrcnnpp/napari.yaml.
"""
import functools
import os

import napari
import numpy as np
from detectron2.config import get_cfg
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, PushButton,
                              SpinBox, create_widget)
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error

from . import model_zoo
from .config import add_maskrcnnpp_config
from .config_loader import build_cfg
from .data.images import INTENSITY_SCALINGS, to_rgb8
from .errors import UserInputError
from .inference.predict_files import kept_labelmap
from .inference.tiling import TiledPredictor, batch_count
from .preflight import check_model

# The config menu's first entry: the YAML file chosen below it (a training run's config.yaml).
CONFIG_FROM_FILE = "config file below"
# The layer placement a segmentation copies from its image, so that the two overlay.
PLACEMENT = ("scale", "translate", "rotate", "shear", "affine")


def layer_image(layer, intensity="percentile"):
    """The pixels of an Image ``layer`` as the model reads an image file: HxWx3 uint8 RGB by
    :func:`to_rgb8`'s rules. A 3-D or multichannel layer is a UserInputError that says what to do
    (the model reads one 2-D grey or RGB(A) image)."""
    if layer is None:
        raise UserInputError("No image layer to segment: open an image (File > Open File(s)...).")
    data = layer.data[0] if layer.multiscale else layer.data  # the full-resolution level
    if data.ndim != (3 if layer.rgb else 2):
        raise UserInputError(
            f"Layer {layer.name!r} has shape {tuple(data.shape)}: it is 3-D or multichannel, and "
            "the model reads one 2-D grey or RGB image. Segment one plane or channel: right-click "
            "the layer and choose Split Stack (or Split RGB), then pick one of the new layers."
        )
    return to_rgb8(np.asarray(data), intensity, path=f"Layer {layer.name!r}")


def segmentation_cfg(config_file, weights, tile_size):
    """The config the widget runs: ``config_file`` with ``weights`` and TEST.TILE.SIZE."""
    if weights is None:
        raise UserInputError(
            "No weights file chosen: choose the trained model (model_final.pth) of a training "
            "run of this config."
        )
    return build_cfg(config_file, ["MODEL.WEIGHTS", str(weights), "TEST.TILE.SIZE", tile_size])


@functools.lru_cache(maxsize=1)
def _predictor(config_file, weights, tile_size, file_times):
    """The last predictor built, kept while its files are unchanged (``file_times``): building
    and loading a model takes seconds, and the next image often uses the same one."""
    cfg = segmentation_cfg(config_file, weights, tile_size)
    if not cfg.MODEL.MASK_ON:
        raise UserInputError(
            f"{config_file} predicts boxes only (MODEL.MASK_ON is False), and the plugin draws "
            "each nucleus' mask: choose a Mask R-CNN config."
        )
    check_model(cfg)  # the weights load safely and fit the config, as tools/predict.py checks
    return TiledPredictor.from_config(cfg)


def load_predictor(config_file, weights, tile_size):
    """The :class:`TiledPredictor` of ``config_file`` with ``weights`` loaded (UserInputError
    for weights that are missing, unsafe or do not fit the config)."""
    file_times = tuple(os.path.getmtime(path) if os.path.isfile(path) else None
                       for path in (config_file, weights))
    return _predictor(config_file, weights, tile_size, file_times)


def segment(config_file, weights, tile_size, image, score_threshold):
    """Segment ``image`` (HxWx3 uint8 RGB) one tile batch at a time, for a progress bar: yields
    once the model is loaded and after each tile batch; returns (label map, kept nuclei's box
    centres as (row, column) in pixel coordinates, their scores), or the message of the
    UserInputError that stopped it (a worker that returns an exception raises it). The label map
    is tools/predict.py's: label ``k + 1`` marks the ``k``-th nucleus scoring at least
    ``score_threshold``."""
    try:
        predictor = load_predictor(config_file, weights, tile_size)
    except UserInputError as error:
        return str(error)
    yield
    bgr = np.ascontiguousarray(image[:, :, ::-1])  # the predictor's input, as predict.py's
    instances = (yield from predictor.steps(bgr))["instances"]
    scores = instances.scores.tolist()
    labels, kept = kept_labelmap(instances.pred_masks, scores, score_threshold)
    # detectron2's pixel k spans [k, k + 1); napari's is centred on k
    centres = instances.pred_boxes.get_centers()[kept].numpy()[:, ::-1] - 0.5
    return labels, centres, [scores[i] for i in kept]


class SegmentNuclei(Container):
    """The dock widget: an image layer, a config and weights, the score threshold, the tile size
    and the intensity scaling of deep images; "Segment" runs in a worker thread with a progress
    bar and adds the layers when it ends."""

    def __init__(self, viewer: napari.viewer.Viewer):
        defaults = get_cfg()
        add_maskrcnnpp_config(defaults)
        yaml_configs = [name for name in model_zoo.list_configs() if name.endswith(".yaml")]
        self.viewer = viewer
        self.image = create_widget(annotation=napari.layers.Image, label="image")
        self.config = ComboBox(label="config", choices=[CONFIG_FROM_FILE, *yaml_configs],
                               tooltip="a config of the model zoo, or the YAML file below")
        self.config_file = FileEdit(label="config file", filter="*.yaml", nullable=True)
        self.weights = FileEdit(label="weights", filter="*.pth *.pkl", nullable=True,
                                tooltip="the trained model: a training run's model_final.pth")
        self.score_threshold = FloatSpinBox(
            label="score threshold", min=0.0, max=1.0, step=0.05,
            value=defaults.TEST.NUCLEI.SCORE_THRESHOLD,
            tooltip="nuclei scoring below it are left out (TEST.NUCLEI.SCORE_THRESHOLD)")
        self.tile_size = SpinBox(
            label="tile size", min=32, max=16384, step=32, value=defaults.TEST.TILE.SIZE,
            tooltip="a larger image goes through overlap-tile inference (TEST.TILE.SIZE)")
        self.intensity = ComboBox(
            label="16-bit scaling", choices=sorted(INTENSITY_SCALINGS), value="percentile",
            tooltip="how images deeper than 8 bits become 8-bit, as predict.py --intensity")
        self.score_points = CheckBox(text="add the scores as points")
        self.segment_button = PushButton(text="Segment")
        super().__init__(widgets=[
            self.image, self.config, self.config_file, self.weights, self.score_threshold,
            self.tile_size, self.intensity, self.score_points, self.segment_button])
        self.config.changed.connect(self._show_config_file)
        self.weights.changed.connect(self._suggest_config_file)
        self.segment_button.changed.connect(self.start)
        self.worker = None

    def _show_config_file(self):
        self.config_file.visible = self.config.value == CONFIG_FROM_FILE

    def _suggest_config_file(self, weights):
        """A training run's folder holds its config.yaml beside the weights: offer it."""
        beside = os.path.join(os.path.dirname(weights), "config.yaml") if weights else ""
        if self.config_file.value is None and os.path.isfile(beside):
            self.config_file.value = beside

    def config_path(self):
        if self.config.value != CONFIG_FROM_FILE:
            return model_zoo.get_config_file(self.config.value)
        if self.config_file.value is None:
            raise UserInputError(
                "No config chosen: choose a config of the model zoo, or the config.yaml of the "
                "training run that made the weights."
            )
        return str(self.config_file.value)

    def start(self):
        """Check the input, then segment in a worker thread; bad input is one error message."""
        layer = self.image.value
        try:
            image = layer_image(layer, self.intensity.value)
            config_file, weights = self.config_path(), self.weights.value
            cfg = segmentation_cfg(config_file, weights, self.tile_size.value)
            total = 1 + batch_count(cfg, *image.shape[:2])
        except UserInputError as error:
            show_error(str(error))
            return
        self.segment_button.enabled = False
        self.worker = create_worker(
            segment, config_file, str(weights), self.tile_size.value, image,
            self.score_threshold.value,
            _progress={"total": total, "desc": f"Segmenting {layer.name}"})
        self.worker.returned.connect(lambda result: self._add_layers(layer, result))
        self.worker.finished.connect(lambda: setattr(self.segment_button, "enabled", True))
        self.worker.start()

    def _add_layers(self, layer, result):
        if isinstance(result, str):
            show_error(result)
            return
        labels, centres, scores = result
        placement = {name: getattr(layer, name) for name in PLACEMENT}
        self.viewer.add_labels(labels, name=f"{layer.name} nuclei", **placement)
        if self.score_points.value:
            self.viewer.add_points(
                centres, name=f"{layer.name} scores", features={"score": scores},
                text={"string": "{score:.2f}", "size": 8, "color": "yellow"},
                size=3, face_color="yellow", **placement)
