"""The dense pyramid necks: wiring tables, the FPN contract, gradients, FPN equivalence, pruning,
deep supervision and a few training steps, on tiny CPU models."""

from pathlib import Path

import fvcore.nn
import numpy as np
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.engine import DefaultPredictor
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import BitMasks, Instances
from detectron2.utils.events import EventStorage

from maskrcnnpp.config import add_maskrcnnpp_config
from maskrcnnpp.errors import UserInputError
from maskrcnnpp.modeling import DeeplySupervisedRCNN, DenseFPN
from maskrcnnpp.modeling.topology import (
    WIRINGS,
    Edge,
    Node,
    available_depths,
    dense_wiring,
    fpn_wiring,
    fullscale_wiring,
    nested_wiring,
    pyramid_nodes,
    schedule,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MY_CONFIGS = sorted(p.name for p in CONFIGS.glob("maskrcnnpp_R50*.yaml"))

# A ResNet-18 Mask R-CNN with small heads: the shipped configs, shrunk to run in seconds.
TINY = [
    "MODEL.RESNETS.DEPTH", 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
    "MODEL.FPN.OUT_CHANNELS", 64,
    "MODEL.DENSE_FPN.NODE_WIDTH", 32,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 500,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", 100,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 500,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 50,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64,
    "MODEL.ROI_BOX_HEAD.NUM_CONV", 0,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 128,
    "MODEL.ROI_MASK_HEAD.NUM_CONV", 1,
    "MODEL.ROI_MASK_HEAD.CONV_DIM", 64,
    "TEST.DETECTIONS_PER_IMAGE", 20,
]  # fmt: skip

# What every backbone must give, as detectron2's FPN does: p2...p6, strides 4...64, FPN's channels.
FPN_OUTPUT_SHAPE = {f"p{stage}": ShapeSpec(channels=64, stride=2**stage) for stage in range(2, 7)}

# (topology, fusion, node block, upsampling): every option appears at least once.
VARIANTS = [
    ("dense", "concat", "reduce_conv3x3", "nearest"),
    ("nested", "concat", "conv3x3", "bilinear"),
    ("fullscale", "concat", "residual", "transposed"),
    ("fpn", "sum", "identity", "nearest"),
    ("dense", "sum", "residual", "transposed"),
    ("fullscale", "sum", "conv3x3", "nearest"),
]


def make_cfg(config="maskrcnnpp_R50.yaml", *opts, tiny=True):
    cfg = get_cfg()
    add_maskrcnnpp_config(cfg)
    cfg.merge_from_file(str(CONFIGS / config))
    cfg.merge_from_list((TINY if tiny else []) + list(opts) + ["MODEL.DEVICE", "cpu"])
    return cfg


def variant_opts(topology, fusion, block, upsample):
    return [
        "MODEL.DENSE_FPN.TOPOLOGY", topology,
        "MODEL.DENSE_FPN.FUSION", fusion,
        "MODEL.DENSE_FPN.NODE_BLOCK", block,
        "MODEL.DENSE_FPN.UPSAMPLE", upsample,
    ]  # fmt: skip


def disc_batch(num_images=2, size=128, seed=0):
    """Dark images with three bright discs each, as detectron2 training dicts."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    batch = []
    for _ in range(num_images):
        image = np.full((3, size, size), 20, np.float32)
        masks = []
        for _ in range(3):
            cy, cx = rng.uniform(24, size - 24, 2)
            radius = rng.uniform(8, 16)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
            image[:, mask] = 220
            masks.append(mask)
        masks = BitMasks(torch.from_numpy(np.stack(masks)))
        instances = Instances(
            (size, size),
            gt_boxes=masks.get_bounding_boxes(),
            gt_classes=torch.zeros(len(masks), dtype=torch.int64),
            gt_masks=masks,
        )
        batch.append(
            {
                "image": torch.from_numpy(image),
                "instances": instances,
                "height": size,
                "width": size,
            }
        )
    return batch


# --- wiring tables -------------------------------------------------------------------------------


def test_dense_node_takes_its_whole_row_and_the_node_below():
    assert dense_wiring(4)[Node(0, 3)] == [
        Edge(Node(0, 0), "identity"),
        Edge(Node(0, 1), "identity"),
        Edge(Node(0, 2), "identity"),
        Edge(Node(1, 2), "upsample"),
    ]
    assert len(dense_wiring(4)) == 6  # the triangle X^{i,j}, j >= 1, i + j <= 3


def test_nested_node_takes_its_predecessor_and_the_node_below():
    assert nested_wiring(4)[Node(0, 3)] == [
        Edge(Node(0, 2), "identity"),
        Edge(Node(1, 2), "upsample"),
    ]


def test_fpn_wiring_is_lateral_plus_upsampled_merge_above():
    assert fpn_wiring(4) == {
        Node(2, 1): [Edge(Node(2, 0), "identity"), Edge(Node(3, 0), "upsample")],
        Node(1, 2): [Edge(Node(1, 0), "identity"), Edge(Node(2, 1), "upsample")],
        Node(0, 3): [Edge(Node(0, 0), "identity"), Edge(Node(1, 2), "upsample")],
    }


def test_fullscale_node_takes_every_lateral_and_the_coarser_outputs():
    assert fullscale_wiring(4)[Node(1, 2)] == [
        Edge(Node(0, 0), "maxpool"),
        Edge(Node(1, 0), "identity"),
        Edge(Node(2, 0), "upsample"),
        Edge(Node(3, 0), "upsample"),
        Edge(Node(2, 1), "upsample"),
    ]


@pytest.mark.parametrize("topology", sorted(WIRINGS))
@pytest.mark.parametrize("num_levels", [2, 4, 5])
def test_every_input_is_computed_before_its_node(topology, num_levels):
    done = {Node(level, 0) for level in range(num_levels)}
    for node, edges in WIRINGS[topology](num_levels).items():
        assert all(edge.source in done for edge in edges), node
        done.add(node)
    assert set(pyramid_nodes(num_levels, num_levels - 1)) <= done


def test_depths_and_pruning():
    assert available_depths(dense_wiring(4), 4) == [1, 2, 3]
    assert available_depths(nested_wiring(4), 4) == [1, 2, 3]
    assert available_depths(fpn_wiring(4), 4) == [3]
    assert available_depths(fullscale_wiring(4), 4) == [3]
    assert pyramid_nodes(4, 2) == [Node(0, 2), Node(1, 2), Node(2, 1), Node(3, 0)]
    wiring = dense_wiring(4)
    assert schedule(wiring, pyramid_nodes(4, 1)) == [Node(0, 1), Node(1, 1), Node(2, 1)]
    assert schedule(wiring, pyramid_nodes(4, 2)) == [
        Node(0, 1), Node(1, 1), Node(2, 1), Node(0, 2), Node(1, 2)
    ]  # fmt: skip
    assert schedule(wiring, pyramid_nodes(4, 3)) == list(wiring)


# --- the backbone --------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids="-".join)
def test_fpn_contract_on_odd_image_sizes(variant):
    cfg = make_cfg("maskrcnnpp_R50.yaml", *variant_opts(*variant))
    backbone = build_backbone(cfg)
    assert backbone.output_shape() == FPN_OUTPUT_SHAPE
    assert backbone.size_divisibility == 32

    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 97, 131))
    assert list(features) == ["p2", "p3", "p4", "p5", "p6"]
    for name, shape in backbone.output_shape().items():
        expected = (1, 64, -(-97 // shape.stride), -(-131 // shape.stride))  # ceil division
        assert tuple(features[name].shape) == expected, name


@pytest.mark.parametrize("variant", VARIANTS, ids="-".join)
def test_gradients_reach_every_parameter(variant):
    torch.manual_seed(0)
    backbone = build_backbone(make_cfg("maskrcnnpp_R50.yaml", *variant_opts(*variant))).train()
    features = backbone(torch.randn(2, 3, 64, 96))
    # A random projection: a plain sum would give zero gradients through GroupNorm.
    loss = sum((f * torch.randn_like(f)).sum() for f in features.values())
    loss.backward()
    no_grad = [
        name
        for name, p in backbone.named_parameters()
        if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert not no_grad


@pytest.mark.parametrize("variant", VARIANTS[:1] + VARIANTS[4:5], ids="-".join)
def test_mixed_precision_flows_through_the_neck(variant):
    # Autocast in bfloat16 on the CPU stands in for float16 on a GPU: concatenating and summing
    # half- and single-precision inputs (GroupNorm runs in float32) must work, stay close to
    # float32 and give finite gradients.
    torch.manual_seed(0)
    backbone = build_backbone(make_cfg("maskrcnnpp_R50.yaml", *variant_opts(*variant))).train()
    image = torch.randn(2, 3, 64, 96)
    reference = backbone(image)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = backbone(image)
    for name, value in reference.items():
        error = (mixed[name].float() - value).norm() / value.norm()
        assert error < 0.05, f"{name}: relative error {error:.3f} under autocast"
    sum((f.float() * torch.randn_like(f.float())).sum() for f in mixed.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in backbone.parameters() if p.grad is not None)


def test_fpn_topology_reproduces_detectron2_fpn_exactly():
    ours = build_backbone(make_cfg("maskrcnnpp_R50_fpn.yaml", "MODEL.DENSE_FPN.NODE_WIDTH", 64))
    theirs = build_backbone(make_cfg("maskrcnn_R50_FPN.yaml"))
    assert isinstance(ours, DenseFPN)
    assert ours.output_shape() == theirs.output_shape()
    ours.load_state_dict(theirs.state_dict())  # strict: the module names are FPN's
    x = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        ours_out, theirs_out = ours.eval()(x), theirs.eval()(x)
    assert list(ours_out) == list(theirs_out)
    for name in theirs_out:
        assert torch.equal(ours_out[name], theirs_out[name]), name


def test_retinanet_backbone_reproduces_detectron2_retinanet_fpn_exactly():
    retinanet = ["MODEL.FPN.IN_FEATURES", ["res3", "res4", "res5"],
                 "MODEL.RESNETS.OUT_FEATURES", ["res3", "res4", "res5"]]
    ours = build_backbone(make_cfg("maskrcnnpp_R50_fpn.yaml", *retinanet,
                                   "MODEL.BACKBONE.NAME", "build_retinanet_resnet_dense_fpn_backbone",
                                   "MODEL.DENSE_FPN.NODE_WIDTH", 64))
    theirs = build_backbone(make_cfg("maskrcnn_R50_FPN.yaml", *retinanet,
                                     "MODEL.BACKBONE.NAME", "build_retinanet_resnet_fpn_backbone"))
    assert list(ours.output_shape()) == ["p3", "p4", "p5", "p6", "p7"]
    assert ours.output_shape() == theirs.output_shape()
    ours.load_state_dict(theirs.state_dict())  # strict: top_block.p6 / p7 too
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        ours_out, theirs_out = ours.eval()(x), theirs.eval()(x)
    for name in theirs_out:
        assert torch.equal(ours_out[name], theirs_out[name]), name


def test_pruned_inference_computes_the_shallow_pyramid_for_fewer_flops():
    torch.manual_seed(0)
    full = build_backbone(make_cfg()).eval()
    pruned = build_backbone(make_cfg("maskrcnnpp_R50.yaml", "MODEL.DENSE_FPN.INFERENCE_DEPTH", 1))
    pruned.load_state_dict(full.state_dict())
    pruned.eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        shallow = pruned(x)
        both = full.forward_pyramids(x, [1, 3])
        deep = full(x)
    for name in shallow:
        assert torch.equal(shallow[name], both[1][name])
        assert torch.equal(deep[name], both[3][name])
    assert not torch.equal(shallow["p2"], deep["p2"])
    assert torch.equal(shallow["p5"], deep["p5"])  # the top level is X^{3,0} at every depth

    def flops(backbone):
        return fvcore.nn.FlopCountAnalysis(backbone, x).unsupported_ops_warnings(False).total()

    assert flops(pruned) < flops(full)


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.DENSE_FPN.TOPOLOGY", "denes"], "Did you mean 'dense'"),
        (["MODEL.DENSE_FPN.FUSION", "mean"], "['concat', 'sum']"),
        (["MODEL.DENSE_FPN.NODE_BLOCK", "conv"], "MODEL.DENSE_FPN.NODE_BLOCK"),
        (["MODEL.DENSE_FPN.UPSAMPLE", "bicubic"], "'transposed'"),
        (["MODEL.DENSE_FPN.NODE_BLOCK", "identity"], "FUSION='sum'"),
        (["MODEL.DENSE_FPN.INFERENCE_DEPTH", 4], "[0, 1, 2, 3]"),
        (["MODEL.DENSE_FPN.TOPOLOGY", "fpn", "MODEL.DENSE_FPN.INFERENCE_DEPTH", 1], "[0, 3]"),
    ],
)
def test_bad_options_fail_at_build_time(opts, message):
    with pytest.raises(UserInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_backbone(make_cfg("maskrcnnpp_R50.yaml", *opts))


@pytest.mark.parametrize("config", MY_CONFIGS)
def test_shipped_configs_build_with_resnet50(config):
    backbone = build_backbone(make_cfg(config, tiny=False))
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in features.values()] == [256] * 5


@pytest.mark.slow
def test_default_predictor_runs_the_dense_config():
    cfg = make_cfg("maskrcnnpp_R50.yaml", tiny=False)
    cfg.merge_from_list(
        ["INPUT.MIN_SIZE_TEST", 128, "INPUT.MAX_SIZE_TEST", 128, "TEST.DETECTIONS_PER_IMAGE", 10,
         "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0]
    )
    image = np.random.default_rng(0).integers(0, 255, (100, 120, 3), dtype=np.uint8)
    instances = DefaultPredictor(cfg)(image)["instances"]
    # Resized to 128 for the model, mapped back to the 100x120 input: full-size masks, boxes in it.
    assert instances.image_size == (100, 120) and len(instances) == 10
    assert tuple(instances.pred_masks.shape) == (10, 100, 120)
    boxes = instances.pred_boxes.tensor
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 120).all() and (boxes[:, 3] <= 100).all()
    assert torch.equal(instances.scores, instances.scores.sort(descending=True).values)


# --- training and deep supervision ---------------------------------------------------------------


def train_losses(model, batch, iterations, lr=0.01):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    history = []
    with EventStorage():
        for _ in range(iterations):
            loss = sum(model(batch).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.append(loss.item())
    return history


@pytest.mark.slow
def test_a_few_training_iterations_lower_the_loss():
    torch.manual_seed(0)
    model = build_model(make_cfg())
    history = train_losses(model, disc_batch(), iterations=20)
    assert np.isfinite(history).all()
    assert np.mean(history[-3:]) < 0.75 * np.mean(history[:3]), history


def test_deep_supervision_sums_depth_suffixed_losses():
    torch.manual_seed(0)
    model = build_model(make_cfg("maskrcnnpp_R50_deepsup.yaml"))
    assert isinstance(model, DeeplySupervisedRCNN)
    model.train()
    with EventStorage():
        losses = model(disc_batch())
    names = ["loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"]
    assert set(losses) == {f"{name}_d{depth}" for name in names for depth in (1, 2, 3)}
    sum(losses.values()).backward()
    nodes = model.backbone.nodes
    assert all(p.grad is not None for p in nodes.parameters())


def test_deep_supervision_inference_is_generalized_rcnn_at_the_inference_depth():
    torch.manual_seed(0)
    opts = ["MODEL.DENSE_FPN.INFERENCE_DEPTH", 1]
    deeply = build_model(make_cfg("maskrcnnpp_R50_deepsup.yaml", *opts)).eval()
    plain = build_model(make_cfg("maskrcnnpp_R50.yaml", *opts)).eval()
    plain.load_state_dict(deeply.state_dict())
    inputs = [{"image": d["image"]} for d in disc_batch(num_images=1)]
    with torch.no_grad():
        ours, theirs = deeply(inputs)[0]["instances"], plain(inputs)[0]["instances"]
    assert len(ours) > 0
    assert torch.equal(ours.pred_boxes.tensor, theirs.pred_boxes.tensor)
    assert torch.equal(ours.pred_masks, theirs.pred_masks)


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.DENSE_FPN.DEEP_SUPERVISION_DEPTHS", []], "DEEP_SUPERVISION_DEPTHS, e.g."),
        (["MODEL.DENSE_FPN.DEEP_SUPERVISION_DEPTHS", [1, 4]], "DEPTHS=4 is not valid"),
        (["MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone"], "dense pyramid backbone"),
    ],
)
def test_deep_supervision_rejects_bad_depths(opts, message):
    with pytest.raises(UserInputError, match=message):
        build_model(make_cfg("maskrcnnpp_R50_deepsup.yaml", *opts))
