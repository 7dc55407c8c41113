"""Densely connected networks (Huang, Liu, van der Maaten & Weinberger 2017), as in d2l's PyTorch code.

Where a residual block adds its input to its output, a dense block concatenates them: each
of its convolution blocks (BatchNorm, ReLU, 3x3 convolution) sees the concatenation of the
block's input and all earlier outputs, and adds `growth_rate` channels. Transition blocks
between the dense blocks (BatchNorm, ReLU, 1x1 convolution halving the channels, 2x2
stride-2 average pooling) keep the width and the resolution in check. d2l's convolutions
have biases (nn.LazyConv2d).
"""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from flaxcnn.models.batchnorm import ModuleDef, block_norm, network_norm
from flaxcnn.models.init import conv, dense
from flaxcnn.models.input_size import check_input_size, smallest_input
from flaxcnn.models.resnet import STEM_WINDOWS, stem


class DenseBlock(nn.Module):
    """d2l's DenseBlock(num_convs, num_channels): outputs input channels + num_convs * num_channels
    channels at the input's height and width. On its own it normalizes with `block_norm`."""

    num_convs: int
    num_channels: int  # the growth rate
    norm: ModuleDef = block_norm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for _ in range(self.num_convs):
            y = conv(nn.relu(self.norm()(x)), self.num_channels, (3, 3), padding=1, dtype=self.dtype)
            x = jnp.concatenate([x, y], axis=-1)
        return x


class TransitionBlock(nn.Module):
    """d2l's transition_block(num_channels): BatchNorm, ReLU, 1x1 convolution to num_channels,
    2x2 stride-2 average pooling (halving height and width, rounding down). On its own it
    normalizes with `block_norm`."""

    num_channels: int
    norm: ModuleDef = block_norm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = conv(nn.relu(self.norm()(x)), self.num_channels, (1, 1), dtype=self.dtype)
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


def transition_block(num_channels: int) -> TransitionBlock:
    """d2l's `transition_block(num_channels)`: a `TransitionBlock` on its own."""
    return TransitionBlock(num_channels)


class DenseNet(nn.Module):
    """d2l's DenseNet: ResNet's stem (resnet.py's `stem`: 7x7 stride-2 convolution to
    `num_channels`, BatchNorm, ReLU, 3x3 stride-2 max-pooling), dense blocks of `arch`
    convolution blocks each with a transition block halving the channels between them, then
    BatchNorm, ReLU, global average pooling and a dense layer. `bn_axis_name`: the pmap axis
    to sum the batch statistics over (None: each device's own batch); `mask` (N,): the real
    examples of a padded batch."""

    num_channels: int = 64
    growth_rate: int = 32
    arch: Sequence[int] = (4, 4, 4, 4)
    num_classes: int = 10
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32

    @property
    def min_input_size(self) -> int:
        # the stem's 7x7 stride-2 convolution and 3x3 stride-2 max-pooling, then the
        # transition blocks' 2x2 stride-2 average poolings
        return smallest_input(STEM_WINDOWS + [(2, 2, 0)] * (len(self.arch) - 1))

    @nn.compact
    def __call__(self, x, train: bool, mask=None):
        check_input_size(type(self).__name__, x.shape, self.min_input_size)
        norm = network_norm(self, train, mask)
        x = stem(x, self.num_channels, norm, dtype=self.dtype)
        channels = self.num_channels
        for i, num_convs in enumerate(self.arch):
            x = DenseBlock(num_convs, self.growth_rate, norm, dtype=self.dtype)(x)
            channels += num_convs * self.growth_rate
            if i != len(self.arch) - 1:
                channels //= 2
                x = TransitionBlock(channels, norm, dtype=self.dtype)(x)
        x = nn.relu(norm()(x)).mean(axis=(1, 2))
        return dense(x, self.num_classes, dtype=self.dtype)
