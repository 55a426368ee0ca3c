"""Checkpoints: no code runs from a weights file, unfitting weights are an error unless asked for,
and a checkpoint is written whole."""
import os
import pickle

import pytest
import torch
from conftest import REPO
from detectron2.modeling import build_model

from maskrcnnpp.checkpoint import NucleiCheckpointer, load_weights
from maskrcnnpp.config_loader import build_cfg
from maskrcnnpp.errors import UserInputError

QUICKSTART = os.path.join(REPO, "configs", "quickstart_synthetic.yaml")
DENSE = os.path.join(REPO, "configs", "quickstart_synthetic_dense.yaml")


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
    """The quickstart FPN model, saved as .pth and as a pickle, and a .pth carrying code."""
    folder = tmp_path_factory.mktemp("checkpoints")
    _, model = model_of(QUICKSTART)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    torch.save({"model": model.state_dict()}, folder / "fpn.pth")
    with open(folder / "fpn.pkl", "wb") as f:
        pickle.dump({"model": state, "__author__": "test"}, f)
    torch.save({"model": CreatesAFileWhenUnpickled(str(folder / "pwned"))}, folder / "evil.pth")
    return folder, model.state_dict()


def test_a_pth_that_would_run_code_is_refused_without_running_it(fpn):
    folder, _ = fpn
    cfg, model = model_of(QUICKSTART, "MODEL.WEIGHTS", str(folder / "evil.pth"))
    with pytest.raises(UserInputError, match="evil.pth: the file is truncated, corrupt or not a"):
        load_weights(cfg, model)
    assert not (folder / "pwned").exists()


@pytest.mark.parametrize("config,weights,consent,refusal", [
    (QUICKSTART, "fpn.pkl", "MODEL.LOAD.ALLOW_PICKLE", "is a Python pickle, and loading a pickle runs"),
    (DENSE, "fpn.pth", "MODEL.LOAD.PARTIAL", "The weights do not fit this model: parameters"),
], ids=["a pickle", "FPN weights for the dense model"])
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


def test_a_checkpoint_is_written_whole_and_named_in_last_checkpoint(tmp_path):
    _, model = model_of(QUICKSTART)
    NucleiCheckpointer(model, str(tmp_path)).save("model_0000009")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    restored = torch.load(tmp_path / "model_0000009.pth", weights_only=True)["model"]
    assert all(torch.equal(restored[k], v) for k, v in model.state_dict().items())
