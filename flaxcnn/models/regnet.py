"""AnyNet and RegNetX (Radosavovic, Kosaraju, Girshick, He & Dollar 2020, "Designing Network
Design Spaces"), as in d2l's PyTorch code.

AnyNet is a design space: a stem (3x3 stride-2 convolution, BatchNorm, ReLU), stages of
ResNeXt blocks (resnet.py's `ResNeXtBlock`), each stage starting with a stride-2 block with
a 1x1 convolution on its shortcut, and a head (global average pooling, dense layer). Each
stage is set by its depth, width, group width and bottleneck multiplier. RegNetX restricts
the space to shared group widths, no bottleneck (multiplier 1) and widths and depths that
grow from stage to stage; d2l's RegNetX-32 has two stages, (depth 4, 32 channels) and
(depth 6, 80 channels), with group width 16.
"""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from flaxcnn.models.batchnorm import network_norm
from flaxcnn.models.init import conv, dense
from flaxcnn.models.input_size import check_input_size, smallest_input
from flaxcnn.models.resnet import ResNeXtBlock

# d2l's RegNetX32: (depth, channels, group width, bottleneck multiplier) per stage
REGNETX32_ARCH = ((4, 32, 16, 1), (6, 80, 16, 1))


class AnyNet(nn.Module):
    """d2l's AnyNet(arch, stem_channels): `arch` lists (depth, num_channels, groups, bot_mul) per
    stage, `groups` being the group width as in `ResNeXtBlock`. `bn_axis_name`: the pmap axis
    to sum the batch statistics over (None: each device's own batch); `mask` (N,): the real
    examples of a padded batch."""

    arch: Sequence[tuple[int, int, int, float]] = REGNETX32_ARCH
    stem_channels: int = 32
    num_classes: int = 10
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32

    @property
    def min_input_size(self) -> int:
        # the stem's 3x3 stride-2 convolution and each stage's first, stride-2, 3x3 convolution
        return smallest_input([(3, 2, 1)] * (1 + len(self.arch)))

    @nn.compact
    def __call__(self, x, train: bool, mask=None):
        check_input_size(type(self).__name__, x.shape, self.min_input_size)
        norm = network_norm(self, train, mask)
        x = nn.relu(norm()(conv(x, self.stem_channels, (3, 3), strides=2, padding=1, dtype=self.dtype)))
        for depth, num_channels, groups, bot_mul in self.arch:
            for i in range(depth):
                first = i == 0
                x = ResNeXtBlock(num_channels, groups, bot_mul, norm, use_1x1conv=first,
                                 strides=2 if first else 1, dtype=self.dtype)(x)
        x = x.mean(axis=(1, 2))
        return dense(x, self.num_classes, dtype=self.dtype)
