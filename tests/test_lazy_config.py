"""LazyConfig: the Python twins of the YAML configs build the same models, check their options
with the same messages, and train under tools/train_net.py."""
import json
import os

import pytest
import train_net  # tools/train_net.py
from conftest import REPO
from detectron2.config import LazyCall as L
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.modeling.backbone.fpn import LastLevelP6P7

from maskrcnnpp import cli
from maskrcnnpp.config import build_cfg
from maskrcnnpp.data.datasets import register_nuclei_coco
from maskrcnnpp.errors import UserInputError
from maskrcnnpp.lazy import build_lazy_model, check_lazy_inputs, load_lazy_config
from maskrcnnpp.modeling import DenseFPN

LAZY = os.path.join(REPO, "configs", "lazy")
TWINS = [("maskrcnn_R50_FPN.py", "maskrcnn_R50_FPN.yaml"), ("maskrcnnpp_R50.py", "maskrcnnpp_R50.yaml")]


def parameter_shapes(model):
    return sorted(tuple(p.shape) for p in model.parameters())


@pytest.mark.parametrize("lazy,yaml", TWINS)
def test_each_lazy_config_builds_the_model_of_its_yaml_twin(lazy, yaml):
    from_lazy = build_lazy_model(load_lazy_config(os.path.join(LAZY, lazy)), device="cpu")
    from_yaml = build_model(build_cfg(os.path.join(REPO, "configs", yaml), ["MODEL.DEVICE", "cpu"]))
    assert type(from_lazy.backbone) is type(from_yaml.backbone)
    assert parameter_shapes(from_lazy) == parameter_shapes(from_yaml)


@pytest.mark.parametrize("override,message", [
    ("model.backbone.topology=densee", "MODEL.DENSE_FPN.TOPOLOGY='densee' is not valid"),
    ("model.backbone.fusion=max", "MODEL.DENSE_FPN.FUSION='max' is not valid"),
    ("model.backbone.inference_depth=7", "MODEL.DENSE_FPN.INFERENCE_DEPTH=7 is not valid"),
    ("train.max_iter", "is written key=value, e.g. train.max_iter=100"),
])
def test_a_bad_option_gets_the_same_message_as_in_yaml(override, message):
    with pytest.raises(UserInputError, match=message):
        check_lazy_inputs(load_lazy_config(os.path.join(LAZY, "maskrcnnpp_R50.py"), [override]))


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
def test_train_net_trains_and_evaluates_a_lazy_config(tiny_nuclei, tmp_path, capsys):
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
    argv = ["--config-file", os.path.join(LAZY, "maskrcnnpp_R50.py"), *small]
    assert cli.run(train_net.main, argv) == 0, capsys.readouterr().err[-3000:]
    assert (tmp_path / "out" / "model_final.pth").is_file()
    metrics = json.loads((tmp_path / "out" / "nuclei_metrics.json").read_text())
    assert metrics["num_images"] == 4
