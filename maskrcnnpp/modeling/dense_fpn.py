"""One pyramid neck for every topology: a graph executor that walks a wiring table.

``DenseFPN`` drops in for detectron2's FPN (same p2...p6, strides, channels, ``size_divisibility``
and ``output_shape()``), so RPN/ROI heads, DefaultPredictor and export work unchanged. What varies
between FPN, UNet+, UNet++ and UNet 3+ is only the table from :mod:`.topology`; how a node merges
its inputs (fusion), the block after it, the normalization and the upsampling are options.
"""

import functools
import math

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from ..errors import UserInputError, check_choice
from .topology import WIRINGS, Node, available_depths, pyramid_nodes, schedule

__all__ = ["DenseFPN", "build_resnet_dense_fpn_backbone", "FUSIONS", "NODE_BLOCKS", "UPSAMPLERS"]


def _concat(inputs):
    return torch.cat(inputs, dim=1)


def _sum(inputs):
    return functools.reduce(torch.add, inputs)


# How a node merges its inputs (each has the node width); concatenation multiplies the channels.
FUSIONS = {"concat": _concat, "sum": _sum}


def _conv_norm(in_channels, out_channels, kernel_size, norm, activation=F.relu):
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        padding=kernel_size // 2,
        bias=not norm,
        norm=get_norm(norm, out_channels),
        activation=activation,
    )
    weight_init.c2_msra_fill(conv)
    return conv


class ResidualNodeBlock(nn.Module):
    """FusionNet's residual unit: conv-norm-relu, conv-norm, + skip, relu.

    The skip keeps the fused inputs one addition away from the node's output; concatenated
    inputs are first reduced to the node width (1x1) so that the skip can be added.
    """

    def __init__(self, in_channels, width, norm):
        super().__init__()
        self.reduce = _conv_norm(in_channels, width, 1, norm) if in_channels != width else None
        self.conv1 = _conv_norm(width, width, 3, norm)
        self.conv2 = _conv_norm(width, width, 3, norm, activation=None)

    def forward(self, x):
        if self.reduce is not None:
            x = self.reduce(x)
        return F.relu(x + self.conv2(self.conv1(x)))


# The block applied to a node's fused inputs: builder(in_channels, width, norm) -> module.
# "reduce_conv3x3" keeps stride-4 nodes cheap: the 3x3 conv sees `width` channels, not k * width.
# "identity" is FPN's merge (a plain sum), so it needs sum fusion.
NODE_BLOCKS = {
    "conv3x3": lambda in_channels, width, norm: _conv_norm(in_channels, width, 3, norm),
    "reduce_conv3x3": lambda in_channels, width, norm: nn.Sequential(
        _conv_norm(in_channels, width, 1, norm), _conv_norm(width, width, 3, norm)
    ),
    "residual": ResidualNodeBlock,
    "identity": lambda in_channels, width, norm: nn.Identity(),
}


class Interpolate(nn.Module):
    """Parameter-free upsampling to the exact size of the target level.

    Resizing to a size rather than by a factor handles odd image sizes; when sizes divide,
    nearest mode equals detectron2's ``scale_factor=2`` bit for bit.
    """

    def __init__(self, mode):
        super().__init__()
        self.mode = mode
        self.align_corners = False if mode == "bilinear" else None

    def forward(self, x, size):
        return F.interpolate(x, size=size, mode=self.mode, align_corners=self.align_corners)


class TransposedConvUpsample(nn.Module):
    """Learned upsampling by ``factor``: a stride-``factor`` deconvolution, cropped to the target.

    It starts as nearest upsampling (each channel copied to its factor x factor block), so
    choosing it changes nothing at initialisation and training only learns the difference.
    """

    def __init__(self, channels, factor):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(channels, channels, factor, stride=factor)
        with torch.no_grad():
            self.deconv.weight.zero_()
            self.deconv.weight[range(channels), range(channels)] = 1.0
            self.deconv.bias.zero_()

    def forward(self, x, size):
        return self.deconv(x)[..., : size[0], : size[1]]


class MaxPoolDown(nn.Module):
    """UNet 3+'s downsampling of finer levels: max-pool to the exact size of the target level."""

    def forward(self, x, size):
        return F.adaptive_max_pool2d(x, size)


# Upsampling of a coarser node: builder(channels, factor) -> module called as (x, target_size).
UPSAMPLERS = {
    "nearest": lambda channels, factor: Interpolate("nearest"),
    "bilinear": lambda channels, factor: Interpolate("bilinear"),
    "transposed": TransposedConvUpsample,
}


def _resizer_name(source, level):
    return f"{source}_to_level{level}"


class DenseFPN(Backbone):
    """A feature pyramid computed by walking a wiring table (see :mod:`.topology`).

    Node X^{i,0} is the lateral 1x1 projection of ``in_features[i]`` to ``node_width``; every
    node of the table is ``block(fuse(resized inputs))``; pyramid level i is the output conv
    (3x3, node_width -> out_channels) of X^{i, min(d, L-i)} for depth d, and p6 is max-pooled
    from p5 as in FPN. Laterals and output convs carry FPN's names (``fpn_lateral2``,
    ``fpn_output2``...), so with the fpn wiring, sum fusion and identity blocks, a detectron2 FPN
    state dict loads as is and gives the same outputs.

    ``forward`` returns the full-depth pyramid in training and the ``inference_depth`` pyramid in
    eval mode, computing only the nodes that pyramid needs; :meth:`forward_pyramids` returns
    several depths from one pass over the grid (deep supervision).
    """

    def __init__(
        self,
        bottom_up,
        in_features,
        out_channels,
        wiring,
        *,
        node_width,
        fusion="concat",
        node_block="reduce_conv3x3",
        norm="",
        upsample="nearest",
        inference_depth=0,
    ):
        """
        Args:
            bottom_up (Backbone): gives ``in_features``, finest first, strides log2-contiguous.
            in_features (list[str]): e.g. ["res2", "res3", "res4", "res5"].
            out_channels (int): channels of every pyramid level (FPN.OUT_CHANNELS).
            wiring (dict[Node, list[Edge]]): the topology, from :data:`.topology.WIRINGS`.
            node_width (int): channels of every grid node, laterals included.
            fusion, node_block, upsample (str): keys of FUSIONS, NODE_BLOCKS, UPSAMPLERS.
            norm (str): detectron2 norm name for laterals, nodes and output convs ("" for none).
            inference_depth (int): pyramid depth used in eval mode; 0 for the full depth.
        """
        super().__init__()
        input_shapes = bottom_up.output_shape()
        stages = [int(math.log2(input_shapes[f].stride)) for f in in_features]
        self.bottom_up = bottom_up
        self.in_features = tuple(in_features)
        self.wiring = wiring
        self.num_levels = len(in_features)
        self.full_depth = self.num_levels - 1
        self.available_depths = available_depths(wiring, self.num_levels)
        self.inference_depth = inference_depth or self.full_depth

        use_bias = norm == ""
        self.lateral_convs, self.output_convs = [], []
        for stage, feature in zip(stages, in_features):
            lateral = Conv2d(
                input_shapes[feature].channels,
                node_width,
                kernel_size=1,
                bias=use_bias,
                norm=get_norm(norm, node_width),
            )
            output = Conv2d(
                node_width,
                out_channels,
                kernel_size=3,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
            )
            weight_init.c2_xavier_fill(lateral)
            weight_init.c2_xavier_fill(output)
            self.add_module(f"fpn_lateral{stage}", lateral)
            self.add_module(f"fpn_output{stage}", output)
            self.lateral_convs.append(lateral)
            self.output_convs.append(output)

        self._fuse = FUSIONS[fusion]
        make_resizer = {
            "maxpool": lambda channels, factor: MaxPoolDown(),
            "upsample": UPSAMPLERS[upsample],
        }
        self.nodes = nn.ModuleDict()
        self.resizers = nn.ModuleDict()  # one per (source, target level), even if edges share it
        for node, edges in wiring.items():
            in_channels = node_width * len(edges) if fusion == "concat" else node_width
            self.nodes[str(node)] = NODE_BLOCKS[node_block](in_channels, node_width, norm)
            for edge in edges:
                name = _resizer_name(edge.source, node.level)
                if edge.resize != "identity" and name not in self.resizers:
                    factor = 2 ** abs(edge.source.level - node.level)
                    self.resizers[name] = make_resizer[edge.resize](node_width, factor)

        self.top_block = LastLevelMaxPool()
        self._out_feature_strides = {f"p{s}": 2**s for s in stages + [stages[-1] + 1]}
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {name: out_channels for name in self._out_features}
        self._size_divisibility = 2 ** stages[-1]
        self._schedules = {}

    @property
    def size_divisibility(self):
        return self._size_divisibility

    def forward(self, x):
        """The pyramid {"p2": ..., "p6": ...}: full depth in training, inference_depth in eval."""
        depth = self.full_depth if self.training else self.inference_depth
        return self.forward_pyramids(x, [depth])[depth]

    def forward_pyramids(self, x, depths):
        """{depth: pyramid} for each of ``depths``; each node and output conv is computed once."""
        bottom_up_features = self.bottom_up(x)
        nodes = {
            Node(level, 0): lateral(bottom_up_features[feature])
            for level, (feature, lateral) in enumerate(zip(self.in_features, self.lateral_convs))
        }
        resized = {}
        for node in self._schedule(depths):
            inputs = [self._resized(nodes, resized, edge, node.level) for edge in self.wiring[node]]
            nodes[node] = self.nodes[str(node)](self._fuse(inputs))

        projected = {}  # output convs are shared across depths: each node is projected once
        pyramids = {}
        for depth in depths:
            pyramid = {}
            for name, node in zip(self._out_features, pyramid_nodes(self.num_levels, depth)):
                if node not in projected:
                    projected[node] = self.output_convs[node.level](nodes[node])
                pyramid[name] = projected[node]
            (pyramid[self._out_features[-1]],) = self.top_block(pyramid[self._out_features[-2]])
            pyramids[depth] = pyramid
        return pyramids

    def _schedule(self, depths):
        """The nodes to compute for ``depths``, in wiring order (cached: a handful of keys)."""
        key = tuple(depths)
        if key not in self._schedules:
            outputs = [n for d in depths for n in pyramid_nodes(self.num_levels, d)]
            self._schedules[key] = schedule(self.wiring, outputs)
        return self._schedules[key]

    def _resized(self, nodes, cache, edge, level):
        """``edge``'s source at ``level``'s size, resized once per (source, level) per forward."""
        if edge.resize == "identity":
            return nodes[edge.source]
        key = (edge.source, level)
        if key not in cache:
            resizer = self.resizers[_resizer_name(edge.source, level)]
            cache[key] = resizer(nodes[edge.source], nodes[Node(level, 0)].shape[-2:])
        return cache[key]


@BACKBONE_REGISTRY.register()
def build_resnet_dense_fpn_backbone(cfg, input_shape: ShapeSpec):
    """ResNet + :class:`DenseFPN` configured by ``cfg.MODEL.DENSE_FPN``; FPN.IN_FEATURES,
    FPN.OUT_CHANNELS and the p2...p6 outputs are those of ``build_resnet_fpn_backbone``."""
    dense = cfg.MODEL.DENSE_FPN
    for key, choices in (
        ("TOPOLOGY", WIRINGS),
        ("FUSION", FUSIONS),
        ("NODE_BLOCK", NODE_BLOCKS),
        ("UPSAMPLE", UPSAMPLERS),
    ):
        check_choice(f"MODEL.DENSE_FPN.{key}", dense[key], choices)
    if dense.NODE_BLOCK == "identity" and dense.FUSION != "sum":
        raise UserInputError(
            "MODEL.DENSE_FPN.NODE_BLOCK='identity' keeps its input's channels, so it needs "
            "MODEL.DENSE_FPN.FUSION='sum'; use a conv block to merge concatenated inputs."
        )
    in_features = cfg.MODEL.FPN.IN_FEATURES
    wiring = WIRINGS[dense.TOPOLOGY](len(in_features))
    check_choice(
        "MODEL.DENSE_FPN.INFERENCE_DEPTH",
        dense.INFERENCE_DEPTH,
        [0] + available_depths(wiring, len(in_features)),
    )
    return DenseFPN(
        bottom_up=build_resnet_backbone(cfg, input_shape),
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        wiring=wiring,
        node_width=dense.NODE_WIDTH,
        fusion=dense.FUSION,
        node_block=dense.NODE_BLOCK,
        norm=dense.NORM,
        upsample=dense.UPSAMPLE,
        inference_depth=dense.INFERENCE_DEPTH,
    )
