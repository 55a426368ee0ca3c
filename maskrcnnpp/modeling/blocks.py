"""The neck's building blocks as tables (name -> builder): fusions, node blocks and resizers."""

from typing import List

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.layers import Conv2d, get_norm

__all__ = ["FUSIONS", "NODE_BLOCKS", "UPSAMPLERS"]


# How a node merges its inputs (each has the node width); concatenation multiplies the channels.
FUSIONS = {
    "concat": "stack the inputs along channels (k x node width into the node block)",
    "sum": "add the inputs (node width into the node block)",
}


def _conv_norm(in_channels, out_channels, kernel_size, norm, relu=True):
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        padding=kernel_size // 2,
        bias=not norm,
        norm=get_norm(norm, out_channels),
        activation=nn.ReLU() if relu else None,  # a module, not F.relu: TorchScript calls it
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
        self.conv2 = _conv_norm(width, width, 3, norm, relu=False)

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


@torch.jit.interface
class Resizer(nn.Module):
    """What every resizer is: (x, target size) -> x at that size. TorchScript calls a module
    picked from ``DenseFPN.resizers`` by name only through such an interface."""

    def forward(self, x: Tensor, size: List[int]) -> Tensor:
        pass


class Interpolate(nn.Module):
    """Parameter-free upsampling to the exact size of the target level.

    Resizing to a size rather than by a factor handles odd image sizes; when sizes divide,
    nearest mode equals detectron2's ``scale_factor=2`` bit for bit.
    """

    def __init__(self, mode):
        super().__init__()
        self.mode = mode
        self.align_corners = False if mode == "bilinear" else None

    def forward(self, x: Tensor, size: List[int]) -> Tensor:
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

    def forward(self, x: Tensor, size: List[int]) -> Tensor:
        return self.deconv(x)[..., : size[0], : size[1]]


class MaxPoolDown(nn.Module):
    """UNet 3+'s downsampling of finer levels: max-pool to the exact size of the target level."""

    def forward(self, x: Tensor, size: List[int]) -> Tensor:
        return F.adaptive_max_pool2d(x, size)


# Upsampling of a coarser node: builder(channels, factor) -> module called as (x, target_size).
UPSAMPLERS = {
    "nearest": lambda channels, factor: Interpolate("nearest"),
    "bilinear": lambda channels, factor: Interpolate("bilinear"),
    "transposed": TransposedConvUpsample,
}


def resizer_key(source, level):
    """The key in ``DenseFPN.resizers``, hence in state dicts, of the resizer from ``source``
    to ``level``."""
    return f"{source}_to_level{level}"

