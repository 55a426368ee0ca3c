"""One pyramid neck for every topology: a graph executor that walks a wiring table.

``DenseFPN`` drops in for detectron2's FPN (same p2...p6, strides, channels, ``size_divisibility``
and ``output_shape()``), so RPN/ROI heads, DefaultPredictor and export work unchanged. What varies
between FPN, UNet+, UNet++ and UNet 3+ is only the table from :mod:`.topology`; how a node merges
its inputs (fusion), the block after it, the normalization and the upsampling are options, picked
by name from the tables of :mod:`.blocks`.
"""

import copy
import math
from typing import Dict, List

import fvcore.nn.weight_init as weight_init
import torch
from torch import Tensor, nn

from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from ..errors import UserInputError, check_choice
from .blocks import FUSIONS, NODE_BLOCKS, UPSAMPLERS, MaxPoolDown, Resizer, resizer_key
from .topology import WIRINGS, Node, available_depths, pyramid_nodes, schedule

__all__ = [
    "DenseFPN",
    "build_resnet_dense_fpn_backbone",
    "build_retinanet_resnet_dense_fpn_backbone",
]


class DenseFPN(Backbone):
    """A feature pyramid computed by walking a wiring table (see :mod:`.topology`).

    Node X^{i,0} is the lateral 1x1 projection of ``in_features[i]`` to ``node_width``; every
    node of the table is ``block(fuse(resized inputs))``; pyramid level i is the output conv
    (3x3, node_width -> out_channels) of X^{i, min(d, L-i)} for depth d, and the top block adds
    the coarser levels as in FPN (p6 max-pooled from p5 for R-CNN, p6 and p7 convolved for
    RetinaNet). Laterals and output convs carry FPN's names (``fpn_lateral2``,
    ``fpn_output2``...), so with the fpn wiring, sum fusion and identity blocks, a detectron2 FPN
    state dict loads as is and gives the same outputs.

    ``forward`` returns the full-depth pyramid in training and the ``inference_depth`` pyramid in
    eval mode, computing only the nodes that pyramid needs; :meth:`forward_pyramids` returns
    several depths from one pass over the grid (deep supervision).
    """

    # The table itself is for Python (tests, reports); forward reads its compiled, name-keyed form.
    __jit_ignored_attributes__ = ["wiring"]

    def __init__(
        self,
        bottom_up,
        in_features,
        out_channels,
        *,
        topology="dense",
        node_width,
        fusion="concat",
        node_block="reduce_conv3x3",
        norm="",
        upsample="nearest",
        inference_depth=0,
        top_block=None,
    ):
        """
        Args:
            bottom_up (Backbone): gives ``in_features``, finest first, strides log2-contiguous.
            in_features (list[str]): e.g. ["res2", "res3", "res4", "res5"].
            out_channels (int): channels of every pyramid level (FPN.OUT_CHANNELS).
            topology (str): a key of :data:`.topology.WIRINGS`, the table this neck walks.
            node_width (int): channels of every grid node, laterals included.
            fusion, node_block, upsample (str): keys of FUSIONS, NODE_BLOCKS, UPSAMPLERS.
            norm (str): detectron2 norm name for laterals, nodes and output convs ("" for none).
            inference_depth (int): pyramid depth used in eval mode; 0 for the full depth.
            top_block (nn.Module or None): extra coarser levels, as in detectron2's FPN:
                ``LastLevelMaxPool()`` (p6 for R-CNN) or ``LastLevelP6P7(C, out_channels,
                in_feature)`` (p6, p7 for RetinaNet, from "p5" or from the bottom-up "res5").

        Every option is checked here, so a config of any kind (yacs or LazyConfig) that builds
        this neck with a bad one gets the same one-line UserInputError.
        """
        super().__init__()
        wiring = _checked_wiring(bottom_up, in_features, topology, fusion, node_block, upsample,
                                 inference_depth)
        input_shapes = bottom_up.output_shape()
        stages = [int(math.log2(input_shapes[f].stride)) for f in in_features]
        self.bottom_up = bottom_up
        self.in_features = tuple(in_features)
        self.topology = topology
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

        self.fusion = fusion
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
                name = resizer_key(edge.source, node.level)
                if edge.resize != "identity" and name not in self.resizers:
                    factor = 2 ** abs(edge.source.level - node.level)
                    self.resizers[name] = make_resizer[edge.resize](node_width, factor)

        # The wiring table compiled to names, the only types TorchScript can key by: laterals,
        # each node's inputs as (source, resizer or "" for same level, lateral giving the size),
        # and per depth the nodes to compute (pruning) and the node read at each level.
        self._lateral_names = [str(Node(level, 0)) for level in range(self.num_levels)]
        self._inputs = {
            str(node): [
                (str(e.source),
                 "" if e.resize == "identity" else resizer_key(e.source, node.level),
                 str(Node(node.level, 0)))
                for e in edges
            ]
            for node, edges in wiring.items()
        }
        self._steps = {
            depth: [str(n) for n in schedule(wiring, pyramid_nodes(self.num_levels, depth))]
            for depth in self.available_depths
        }
        self._pyramid_nodes = {
            depth: [str(n) for n in pyramid_nodes(self.num_levels, depth)]
            for depth in self.available_depths
        }

        self.top_block = top_block
        self._out_feature_strides = {f"p{s}": 2**s for s in stages}
        if top_block is not None:
            _check_top_block(top_block, input_shapes, self._out_feature_strides, out_channels)
            for s in range(stages[-1] + 1, stages[-1] + 1 + top_block.num_levels):
                self._out_feature_strides[f"p{s}"] = 2**s
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {name: out_channels for name in self._out_features}
        self._size_divisibility = 2 ** stages[-1]

    @property
    def size_divisibility(self):
        return self._size_divisibility

    def forward(self, x):
        """The pyramid {"p2": ..., "p6": ...}: full depth in training, inference_depth in eval."""
        depth = self.full_depth if self.training else self.inference_depth
        bottom_up_features = self.bottom_up(x)
        nodes = self._walk(bottom_up_features, self._steps[depth])
        projected: Dict[str, Tensor] = {}
        return self._pyramid(bottom_up_features, nodes, self._pyramid_nodes[depth], projected)

    @torch.jit.unused
    def forward_pyramids(self, x, depths):
        """{depth: pyramid} for each of ``depths``; each node and output conv is computed once."""
        bottom_up_features = self.bottom_up(x)
        steps = [name for name in self.nodes if any(name in self._steps[d] for d in depths)]
        nodes = self._walk(bottom_up_features, steps)
        projected = {}  # output convs are shared across depths: each node is projected once
        return {
            depth: self._pyramid(bottom_up_features, nodes, self._pyramid_nodes[depth], projected)
            for depth in depths
        }

    def _walk(self, bottom_up_features: Dict[str, Tensor], steps: List[str]) -> Dict[str, Tensor]:
        """Every lateral and the grid nodes named in ``steps``, in wiring order; each input is
        resized once per (source, target level)."""
        nodes: Dict[str, Tensor] = {}
        for level, lateral in enumerate(self.lateral_convs):
            nodes[self._lateral_names[level]] = lateral(bottom_up_features[self.in_features[level]])
        resized: Dict[str, Tensor] = {}
        for name, block in self.nodes.items():  # wiring order
            if name in steps:
                inputs: List[Tensor] = []
                for source, resizer_name, size_of in self._inputs[name]:
                    if resizer_name == "":
                        inputs.append(nodes[source])
                        continue
                    if resizer_name not in resized:
                        resizer: Resizer = self.resizers[resizer_name]
                        resized[resizer_name] = resizer.forward(
                            nodes[source], nodes[size_of].shape[-2:]
                        )
                    inputs.append(resized[resizer_name])
                nodes[name] = block(self._fused(inputs))
        return nodes

    def _fused(self, inputs: List[Tensor]) -> Tensor:
        if self.fusion == "concat":
            return torch.cat(inputs, dim=1)
        total = inputs[0]
        for feature in inputs[1:]:
            total = total + feature
        return total

    def _pyramid(self, bottom_up_features: Dict[str, Tensor], nodes: Dict[str, Tensor],
                 level_nodes: List[str], projected: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """{"p2": ...}: the output conv of each level's node in ``level_nodes`` (once per node,
        kept in ``projected``), then the top block's levels."""
        pyramid: Dict[str, Tensor] = {}
        for level, output_conv in enumerate(self.output_convs):
            node = level_nodes[level]
            if node not in projected:
                projected[node] = output_conv(nodes[node])
            pyramid[self._out_features[level]] = projected[node]
        if self.top_block is not None:
            source = self.top_block.in_feature
            top_input = pyramid[source] if source in pyramid else bottom_up_features[source]
            for i, feature in enumerate(self.top_block(top_input)):
                pyramid[self._out_features[self.num_levels + i]] = feature
        return pyramid

    def __prepare_scriptable__(self):
        """A copy TorchScript can compile: the conv lists become ModuleLists (as detectron2 does
        for its FPN in detectron2.export), which renames their parameters in the scripted copy."""
        scriptable = copy.deepcopy(self)
        scriptable.lateral_convs = nn.ModuleList(scriptable.lateral_convs)
        scriptable.output_convs = nn.ModuleList(scriptable.output_convs)
        for name, _ in self.named_children():
            if name.startswith("fpn_"):
                delattr(scriptable, name)
        return scriptable


def _checked_wiring(bottom_up, in_features, topology, fusion, node_block, upsample,
                    inference_depth):
    """The wiring table of ``topology`` for ``in_features``, once every option is valid."""
    for key, value, choices in (
        ("TOPOLOGY", topology, WIRINGS),
        ("FUSION", fusion, FUSIONS),
        ("NODE_BLOCK", node_block, NODE_BLOCKS),
        ("UPSAMPLE", upsample, UPSAMPLERS),
    ):
        check_choice(f"MODEL.DENSE_FPN.{key}", value, choices)
    if node_block == "identity" and fusion != "sum":
        raise UserInputError(
            "MODEL.DENSE_FPN.NODE_BLOCK='identity' keeps its input's channels, so it needs "
            "MODEL.DENSE_FPN.FUSION='sum'; use a conv block to merge concatenated inputs."
        )
    available = bottom_up.output_shape()
    unknown = [f for f in in_features if f not in available]
    if unknown or len(in_features) < 2:
        raise UserInputError(
            f"The neck's in_features {list(in_features)} must be two or more of the bottom-up "
            f"outputs {list(available)}, finest first."
        )
    wiring = WIRINGS[topology](len(in_features))
    check_choice("MODEL.DENSE_FPN.INFERENCE_DEPTH", inference_depth,
                 [0] + available_depths(wiring, len(in_features)))
    return wiring


def _check_top_block(top_block, input_shapes, pyramid_strides, out_channels):
    """Raise unless ``top_block`` reads an existing feature with the channels it expects."""
    source = getattr(top_block, "in_feature", None)
    if source in input_shapes:
        channels = input_shapes[source].channels
    elif source in pyramid_strides:
        channels = out_channels
    else:
        raise UserInputError(
            f"The top block {type(top_block).__name__} reads {source!r}, which is neither a "
            f"pyramid level {list(pyramid_strides)} nor a bottom-up in-feature; set its in_feature "
            "to the last of them (e.g. 'p5' or 'res5')."
        )
    if source != list(pyramid_strides)[-1] and source not in input_shapes:
        raise UserInputError(
            f"The top block reads {source!r}, but it extends the pyramid from its coarsest "
            f"level {list(pyramid_strides)[-1]!r}; read that level (or the bottom-up feature)."
        )
    convs = [m for m in top_block.modules() if isinstance(m, nn.Conv2d)]
    if convs and convs[0].in_channels != channels:
        raise UserInputError(
            f"The top block {type(top_block).__name__} takes {convs[0].in_channels} channels, "
            f"but {source!r} has {channels}; build it with in_channels={channels}."
        )


def _dense_fpn_from_config(cfg, bottom_up, top_block):
    dense = cfg.MODEL.DENSE_FPN
    return DenseFPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        topology=dense.TOPOLOGY,
        node_width=dense.NODE_WIDTH,
        fusion=dense.FUSION,
        node_block=dense.NODE_BLOCK,
        norm=dense.NORM,
        upsample=dense.UPSAMPLE,
        inference_depth=dense.INFERENCE_DEPTH,
        top_block=top_block,
    )


@BACKBONE_REGISTRY.register()
def build_resnet_dense_fpn_backbone(cfg, input_shape: ShapeSpec):
    """ResNet + :class:`DenseFPN` configured by ``cfg.MODEL.DENSE_FPN``; FPN.IN_FEATURES,
    FPN.OUT_CHANNELS and the p2...p6 outputs are those of ``build_resnet_fpn_backbone``."""
    return _dense_fpn_from_config(cfg, build_resnet_backbone(cfg, input_shape), LastLevelMaxPool())


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_dense_fpn_backbone(cfg, input_shape: ShapeSpec):
    """ResNet + :class:`DenseFPN` for RetinaNet: p6 and p7 from res5, as in detectron2's
    ``build_retinanet_resnet_fpn_backbone`` (usually FPN.IN_FEATURES res3-res5: p3...p7)."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    res5_channels = bottom_up.output_shape()["res5"].channels
    top_block = LastLevelP6P7(res5_channels, cfg.MODEL.FPN.OUT_CHANNELS, in_feature="res5")
    return _dense_fpn_from_config(cfg, bottom_up, top_block)
