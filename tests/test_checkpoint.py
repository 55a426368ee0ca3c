"""Checkpoints: no code runs from a weights file, unfitting weights are an error unless asked for
(ImageNet weights of the ResNet alone load as they are), and a checkpoint is written whole."""
import datetime
import logging
import os
import pickle
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from conftest import REPO
from detectron2.modeling import build_model

from maskrcnnpp.checkpoint import NucleiCheckpointer, load_weights
from maskrcnnpp.config_loader import build_cfg
from maskrcnnpp.errors import UserInputError

QUICKSTART = os.path.join(REPO, "configs", "quickstart_synthetic.yaml")
DENSE = os.path.join(REPO, "configs", "quickstart_synthetic_dense.yaml")
BOTTOM_UP = "backbone.bottom_up."
FROZEN_BN = ("MODEL.RESNETS.NORM", "FrozenBN")


def model_of(config, *opts):
    torch.manual_seed(0)
    cfg = build_cfg(config, ["MODEL.DEVICE", "cpu", *opts])
    return cfg, build_model(cfg)


class CreatesAFileWhenUnpickled:
    """What a malicious checkpoint holds: unpickling it calls ``open(path, "w")``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture(scope="module")
def fpn(tmp_path_factory):
    """The quickstart FPN model, saved as .pth and as a weights pickle (NumPy arrays, as
    detectron2's model zoo has them), a pickle holding another object too, and files carrying code."""
    folder = tmp_path_factory.mktemp("checkpoints")
    _, model = model_of(QUICKSTART)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    torch.save({"model": model.state_dict()}, folder / "fpn.pth")
    with open(folder / "fpn.pkl", "wb") as f:
        pickle.dump({"model": state, "__author__": "test"}, f)
    with open(folder / "dated.pkl", "wb") as f:
        pickle.dump({"model": state, "__author__": "test", "date": datetime.date(2024, 1, 1)}, f)
    torch.save({"model": CreatesAFileWhenUnpickled(str(folder / "pwned"))}, folder / "evil.pth")
    with open(folder / "evil.pkl", "wb") as f:
        pickle.dump({"model": CreatesAFileWhenUnpickled(str(folder / "pwned")), "__author__": "x"}, f)
    return folder, model.state_dict()


def test_a_pth_that_would_run_code_is_refused_without_running_it(fpn):
    folder, _ = fpn
    cfg, model = model_of(QUICKSTART, "MODEL.WEIGHTS", str(folder / "evil.pth"))
    with pytest.raises(UserInputError, match="evil.pth: the file is truncated, corrupt or not a"):
        load_weights(cfg, model)
    assert not (folder / "pwned").exists()


def test_a_pkl_that_would_run_code_is_refused_naming_what_it_calls_without_running_it(fpn):
    folder, _ = fpn
    cfg, model = model_of(QUICKSTART, "MODEL.WEIGHTS", str(folder / "evil.pkl"))
    with pytest.raises(UserInputError, match=r"evil.pkl is a pickle that holds io.open, which "
                                             r"weights files do not hold; it was not loaded") as e:
        load_weights(cfg, model)
    assert "\n" not in str(e.value) and "MODEL.LOAD.ALLOW_PICKLE True" in str(e.value)
    assert not (folder / "pwned").exists()


def test_a_detectron2_weights_pickle_loads_without_flags(fpn):
    folder, state = fpn
    cfg, model = model_of(QUICKSTART, "MODEL.WEIGHTS", str(folder / "fpn.pkl"))
    load_weights(cfg, model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_a_pickle_of_safe_objects_that_are_not_weights_is_refused(tmp_path):
    with open(tmp_path / "notes.pkl", "wb") as f:
        pickle.dump({"model": {"conv1_w": "not an array"}, "__author__": "x"}, f)
    cfg, model = model_of(QUICKSTART, "MODEL.WEIGHTS", str(tmp_path / "notes.pkl"))
    with pytest.raises(UserInputError, match="notes.pkl is not a weights file: its entry 'conv1_w' "
                                             "holds str, not an array of numbers"):
        load_weights(cfg, model)


@pytest.mark.parametrize("config,weights,consent,refusal", [
    (QUICKSTART, "dated.pkl", "MODEL.LOAD.ALLOW_PICKLE",
     "dated.pkl is a pickle that holds datetime.date, which weights files do not hold"),
    (DENSE, "fpn.pth", "MODEL.LOAD.PARTIAL", "The weights do not fit this model: parameters"),
], ids=["a pickle of other objects", "FPN weights for the dense model"])
def test_weights_refused_by_default_load_when_the_user_says_so(fpn, config, weights, consent, refusal):
    folder, state = fpn
    cfg, model = model_of(config, "MODEL.WEIGHTS", str(folder / weights))
    with pytest.raises(UserInputError, match=refusal):
        load_weights(cfg, model)
    cfg, model = model_of(config, "MODEL.WEIGHTS", str(folder / weights), consent, "True")
    load_weights(cfg, model)
    loaded = model.state_dict()
    fitting = [k for k in state if k in loaded and loaded[k].shape == state[k].shape]
    assert any(k.startswith("backbone.bottom_up.") for k in fitting)
    assert all(torch.equal(loaded[k], state[k]) for k in fitting)


# --- ImageNet weights of the ResNet alone, in detectron2's and Detectron's formats -------------

def detectron_name(key, norm):
    """The Detectron (Caffe2) name of a bottom-up parameter, as ImageNet files have it:
    stem.conv1.weight -> conv1_w, stem.conv1.norm.weight -> res_conv1_bn_s (conv1_gn_s with
    GroupNorm), res3.0.conv2.norm.bias -> res3_0_branch2b_bn_b, res3.0.shortcut.weight ->
    res3_0_branch1_w."""
    suffix = {"weight": "s", "bias": "b"}
    if key == "stem.conv1.weight":
        return "conv1_w"
    if key.startswith("stem.conv1.norm."):
        stem = "res_conv1_bn" if norm == "bn" else "conv1_gn"
        return f"{stem}_{suffix[key.rsplit('.', 1)[1]]}"
    stage, block, conv, *rest = key.split(".")
    branch = "branch1" if conv == "shortcut" else "branch2" + "abc"[int(conv[-1]) - 1]
    name = f"{stage}_{block}_{branch}"
    return f"{name}_{norm}_{suffix[rest[1]]}" if rest[0] == "norm" else f"{name}_w"


def imagenet_file(path, model, layout, norm="gn", extra=()):
    """Random weights for the bottom-up ResNet of ``model`` in one of the layouts of detectron2's
    ImageNet files, with their ImageNet classifier; returns {model key: array written}."""
    rng = np.random.default_rng(1)
    written, names = {}, {}
    for key, value in model.state_dict().items():
        short = key[len(BOTTOM_UP):]
        if key.startswith(BOTTOM_UP) and not short.endswith(("running_mean", "running_var")):
            written[key] = rng.standard_normal(tuple(value.shape)).astype(np.float32)
            names[key] = short if layout == "detectron2" else detectron_name(short, norm)
    weights = {names[k]: v for k, v in written.items()}
    classifier = rng.standard_normal((1000, 8)).astype(np.float32)
    if layout == "detectron2":  # tools/convert-torchvision-to-d2.py's output
        weights.update({"fc.weight": classifier, "fc.bias": classifier[:, 0]})
        data = {"model": weights, "__author__": "torchvision", "matching_heuristics": True}
    else:
        weights.update({"fc1000_w": classifier, "fc1000_b": classifier[:, 0],
                        "conv1_b": classifier[:64, 0], "res2_0_branch2a_bn_momentum": classifier})
        weights.update({name: classifier for name in extra})
        data = {"blobs": weights, "cfg": "MODEL: ..."} if layout == "detectron blobs" else weights
    data = pickle.dumps(data, protocol=2)
    if layout != "detectron2":  # written by NumPy 1, which names its module numpy.core
        data = data.replace(b"numpy._core.", b"numpy.core.")
    path.write_bytes(data)
    return written


@pytest.fixture
def checkpoint_log():
    """The lines the checkpointer logs (INFO and above) while a test runs."""
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("fvcore.common.checkpoint")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.parametrize("layout,norm", [
    ("detectron", "gn"), ("detectron", "bn"), ("detectron blobs", "gn"), ("detectron2", "gn"),
], ids=["Detectron GN (R-50-GN.pkl)", "Detectron frozen BN (R-50.pkl)", "Detectron blobs",
        "detectron2 with __author__"])
def test_imagenet_weights_of_the_resnet_alone_load_without_flags(layout, norm, tmp_path, checkpoint_log):
    opts = FROZEN_BN if norm == "bn" else ()
    _, fresh = model_of(QUICKSTART, *opts)
    written = imagenet_file(tmp_path / "R-18.pkl", fresh, layout, norm)
    cfg, model = model_of(QUICKSTART, *opts, "MODEL.WEIGHTS", str(tmp_path / "R-18.pkl"))
    load_weights(cfg, model)
    loaded, initial = model.state_dict(), fresh.state_dict()
    bottom_up = [k for k in loaded if k.startswith(BOTTOM_UP)]
    assert set(written) == {k for k in bottom_up if not k.endswith(("running_mean", "running_var"))}
    assert all(torch.equal(loaded[k], torch.from_numpy(written[k])) for k in written)
    assert all(torch.equal(loaded[k], initial[k]) for k in loaded if not k.startswith(BOTTOM_UP))
    summary = next(line for line in checkpoint_log if line.startswith("Backbone weights"))
    assert f"initialised the bottom-up ResNet (backbone.bottom_up.*, {len(bottom_up)} tensors)" in summary
    assert summary.endswith("start fresh: backbone (neck), proposal_generator, roi_heads.")
    unused = "fc.bias, fc.weight" if layout == "detectron2" else "fc1000.bias, fc1000.weight, stem.conv1.bias"
    assert ("Not used from the file (parts of the ImageNet classifier network that a detector does "
            f"not have): {unused}.") in checkpoint_log


def test_backbone_weights_with_tensors_the_resnet_lacks_need_partial(tmp_path):
    _, fresh = model_of(QUICKSTART)
    written = imagenet_file(tmp_path / "deeper.pkl", fresh, "detectron", extra=["res4_6_branch2a_w"])
    cfg, model = model_of(QUICKSTART, "MODEL.WEIGHTS", str(tmp_path / "deeper.pkl"))
    with pytest.raises(UserInputError, match=r"do not fit this model: .*the model does not have "
                                             r"\(fc1000.bias, fc1000.weight, res4.6.conv1.weight"):
        load_weights(cfg, model)
    cfg, model = model_of(QUICKSTART, "MODEL.WEIGHTS", str(tmp_path / "deeper.pkl"),
                          "MODEL.LOAD.PARTIAL", "True")
    load_weights(cfg, model)
    assert all(torch.equal(model.state_dict()[k], torch.from_numpy(v)) for k, v in written.items())


D2_HTTPS = "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/FAIR/R-50-GN.pkl"


@pytest.mark.parametrize("url,https", [
    ("detectron2://ImageNetPretrained/FAIR/R-50-GN.pkl", D2_HTTPS),
    ("https://weights.invalid/R-18.pkl", "https://weights.invalid/R-18.pkl"),
], ids=["detectron2://", "https://"])
def test_weights_that_cannot_be_downloaded_name_the_url_and_a_local_copy(url, https, tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path))  # not the user's cache of downloads
    monkeypatch.setattr(urllib.request, "urlretrieve", no_network)
    cfg, model = model_of(QUICKSTART, "MODEL.WEIGHTS", url)
    with pytest.raises(UserInputError) as e:
        load_weights(cfg, model)
    shown = url if url == https else f"{url} ({https})"
    assert str(e.value) == (
        f"Cannot download the weights {shown}: [Errno -3] Temporary failure in name resolution. "
        f"Without internet access here, download {https} on a machine that has it, copy the file "
        "here and pass its path as MODEL.WEIGHTS (--weights, or train.init_checkpoint for a "
        "LazyConfig).")


def test_a_checkpoint_is_written_whole_and_named_in_last_checkpoint(tmp_path):
    _, model = model_of(QUICKSTART)
    NucleiCheckpointer(model, str(tmp_path)).save("model_0000009")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    restored = torch.load(tmp_path / "model_0000009.pth", weights_only=True)["model"]
    assert all(torch.equal(restored[k], v) for k, v in model.state_dict().items())
