"""LazyConfig: the Python twins of the YAML configs build the same models, check their options
with the same messages, and train under tools/train_net.py; each dense config differs from its
FPN twin only in the neck."""
import json
import os
import re

import pytest
import torch
from conftest import REPO, load_tool
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from omegaconf import DictConfig, OmegaConf

from maskrcnnpp import cli
from maskrcnnpp.config_loader import build_cfg
from maskrcnnpp.data.datasets import register_nuclei_coco
from maskrcnnpp.errors import UserInputError
from maskrcnnpp.lazy import build_lazy_model, load_lazy_config
from maskrcnnpp.modeling import DenseFPN
from maskrcnnpp.preflight import check_lazy_inputs

train_net = load_tool("train_net")
LAZY = os.path.join(REPO, "configs", "lazy")
# (FPN twin, dense config), as LazyConfigs; each is also the twin of the YAML config of its name.
NECK_TWINS = [("maskrcnn_R50_FPN.py", "maskrcnnpp_R50.py"),
              ("cascade_maskrcnn_R50_FPN.py", "cascade_maskrcnnpp_R50.py"),
              ("pointrend_R50_FPN.py", "pointrend_maskrcnnpp_R50.py"),
              ("retinanet_R50_FPN.py", "retinanetpp_R50.py")]
TWINS = [(lazy, lazy[:-3] + ".yaml") for pair in NECK_TWINS for lazy in pair]
# What a dense config takes from its FPN twin's neck; the rest is maskrcnnpp_R50.py's.
FROM_THE_TWIN = ("bottom_up", "in_features", "out_channels", "top_block")


def parameter_shapes(model):
    return sorted(tuple(p.shape) for p in model.parameters())


@pytest.mark.parametrize("lazy,yaml", TWINS)
def test_each_lazy_config_builds_the_model_of_its_yaml_twin(lazy, yaml):
    from_lazy = build_lazy_model(load_lazy_config(os.path.join(LAZY, lazy)), device="cpu")
    from_yaml = build_model(build_cfg(os.path.join(REPO, "configs", yaml), ["MODEL.DEVICE", "cpu"]))
    assert type(from_lazy) is type(from_yaml)
    assert type(from_lazy.backbone) is type(from_yaml.backbone)
    assert parameter_shapes(from_lazy) == parameter_shapes(from_yaml)


def flat(node, prefix=""):
    """{"model.backbone.norm": "GN", ...} of a loaded LazyConfig, as plain data (interpolations
    such as the evaluator's "${...train.output_dir}" unresolved)."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    if not hasattr(node, "items"):
        return {prefix[:-1]: node}
    return {key: value for name, child in node.items() for key, value in
            flat(child, f"{prefix}{name}.").items()}


@pytest.mark.parametrize("fpn,dense", NECK_TWINS)
def test_each_dense_lazy_config_differs_from_its_fpn_twin_only_in_the_neck(fpn, dense):
    a, b = (LazyConfig.load(os.path.join(LAZY, name)) for name in (fpn, dense))
    flat_a, flat_b = flat(a), flat(b)
    changed = {key for key in flat_a.keys() | flat_b.keys() if flat_a.get(key) != flat_b.get(key)}
    assert changed - {"train.output_dir"}
    assert all(key.startswith("model.backbone.") for key in changed - {"train.output_dir"})
    neck = b.model.backbone
    reference = LazyConfig.load(os.path.join(LAZY, "maskrcnnpp_R50.py")).model.backbone
    assert neck._target_ is DenseFPN
    for key in reference:
        assert neck[key] == (a.model.backbone[key] if key in FROM_THE_TWIN else reference[key]), key


@pytest.mark.parametrize("override,message", [
    ("model.backbone.topology=densee", "MODEL.DENSE_FPN.TOPOLOGY='densee' is not valid"),
    ("model.backbone.fusion=max", "MODEL.DENSE_FPN.FUSION='max' is not valid"),
    ("model.backbone.inference_depth=7", "MODEL.DENSE_FPN.INFERENCE_DEPTH=7 is not valid"),
    ("train.max_iter", "is written key=value, e.g. train.max_iter=100"),
    ("train.device=cuda:x", "train.device='cuda:x'"),
    ("train.device=gpu", "train.device='gpu' is not valid; use 'cuda', 'cuda:N' or 'cpu'"),
])
def test_a_bad_option_gets_the_same_message_as_in_yaml(override, message):
    with pytest.raises(UserInputError, match=message):
        check_lazy_inputs(load_lazy_config(os.path.join(LAZY, "maskrcnnpp_R50.py"), [override]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
@pytest.mark.parametrize("overrides,message", [
    (["train.device=cuda"], "train.device='cuda' needs a GPU, but no GPU is visible here"),
    (["train.amp.enabled=True"], "train.amp.enabled True asks for mixed precision, which on the "
     "CPU is bfloat16 autocast, but this CPU (AVX2) lacks the bfloat16 instructions (AVX512-BF16 or "
     "AMX) that CPU mixed precision needs. Drop the override to train in float32, or run on a GPU "
     "(train.device cuda)."),
])
def test_a_device_or_precision_this_machine_lacks_is_refused_before_the_model_builds(
        overrides, message, cpu_without_bfloat16):
    with pytest.raises(UserInputError, match=re.escape(message)):
        check_lazy_inputs(load_lazy_config(os.path.join(LAZY, "maskrcnnpp_R50.py"), overrides))


@pytest.mark.parametrize("top_block,message", [
    (L(LastLevelP6P7)(in_channels=2048, out_channels=256, in_feature="p5"),
     "takes 2048 channels, but 'p5' has 256"),
    (L(LastLevelP6P7)(in_channels=256, out_channels=256, in_feature="p3"),
     "extends the pyramid from its coarsest level 'p5'"),
    (L(LastLevelP6P7)(in_channels=256, out_channels=256, in_feature="c5"), "reads 'c5', which is"),
])
def test_a_top_block_that_does_not_match_the_in_features_is_refused(top_block, message):
    cfg = load_lazy_config(os.path.join(LAZY, "maskrcnnpp_R50.py"))
    cfg.model.backbone.top_block = top_block
    with pytest.raises(UserInputError, match=message):
        build_lazy_model(cfg, device="cpu")


def test_an_unknown_point_rend_option_is_refused():
    cfg = load_lazy_config(os.path.join(LAZY, "pointrend_R50_FPN.py"),
                           ["model.roi_heads.mask_head.point_head.NUM_FCS=2"])
    with pytest.raises(UserInputError, match="no option MODEL.POINT_HEAD.NUM_FCS. Did you mean"):
        build_lazy_model(cfg, device="cpu")


def test_retinanet_top_block_from_res5_gives_p3_to_p7():
    cfg = load_lazy_config(os.path.join(LAZY, "maskrcnnpp_R50.py"))
    cfg.model.backbone.in_features = ["res3", "res4", "res5"]
    cfg.model.backbone.top_block = L(LastLevelP6P7)(in_channels=2048, out_channels=256,
                                                    in_feature="res5")
    from detectron2.config import instantiate
    import torch

    neck = instantiate(cfg.model.backbone)
    assert isinstance(neck, DenseFPN)
    features = neck(torch.zeros(1, 3, 128, 128))
    assert {k: v.shape[-1] for k, v in features.items()} == {"p3": 16, "p4": 8, "p5": 4, "p6": 2, "p7": 1}


@pytest.mark.slow
@pytest.mark.parametrize("config", ["maskrcnnpp_R50.py", "retinanetpp_R50.py"])  # masks; boxes only
def test_train_net_trains_and_evaluates_a_lazy_config(config, tiny_nuclei, tmp_path, capsys):
    folder = tiny_nuclei["folder"]
    if "tiny_nuclei_lazy" not in DatasetCatalog.list():
        register_nuclei_coco("tiny_nuclei_lazy", os.path.join(folder, "annotations.json"),
                             os.path.join(folder, "images"))
    small = [
        "dataloader.train.dataset.names=tiny_nuclei_lazy", "dataloader.test.dataset.names=tiny_nuclei_lazy",
        "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0", "dataloader.train.mapper.augmentations.0.target_height=128",
        "dataloader.train.mapper.augmentations.0.target_width=128",
        "dataloader.train.mapper.augmentations.1.crop_size=[128,128]",
        "dataloader.test.mapper.augmentations.0.short_edge_length=128",
        "train.max_iter=3", "train.eval_period=0", "train.device=cpu", "train.amp.enabled=False",
        f"train.output_dir={tmp_path / 'out'}",
    ]
    argv = ["--config-file", os.path.join(LAZY, config), *small]
    assert cli.run(train_net.main, argv) == 0, capsys.readouterr().err[-3000:]
    assert (tmp_path / "out" / "model_final.pth").is_file()
    metrics = json.loads((tmp_path / "out" / "nuclei_metrics.json").read_text())
    assert metrics["num_images"] == 4
    assert ("mask_AP" in metrics) == (config == "maskrcnnpp_R50.py")  # RetinaNet: box AP only
