"""Residual networks (He, Zhang, Ren & Sun 2015) and ResNeXt (Xie, Girshick, Dollar, Tu & He 2017).

A residual block adds its input back onto the output of a few convolutions, so each
block only has to learn a correction to the identity. `Residual` is d2l's basic block
(two biased 3x3 convolutions) used by d2l's ResNet-18 and -34; `BasicBlock` is torchvision's
version of it (bias-free, BatchNorm on the projection shortcut), which its published ImageNet
weights need; `Bottleneck` is torchvision's 1x1-3x3-1x1 block used by ResNet-50 and, with a
grouped 3x3 convolution, ResNeXt-50.
When a block changes the shape, the shortcut goes through a 1x1 convolution with the
block's stride. `ResNeXtBlock` is d2l's ResNeXt block (section 8.6.5), which RegNetX
(regnet.py) stacks.

The network builds its BatchNorm once per call (mode, momentum, epsilon, dtype, pmap axis, the
batch's mask; batchnorm.py's `network_norm`) and hands it to its blocks as the field `norm`; each
block creates its BatchNorm layers with `self.norm()`.
"""
from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from flaxcnn.models.batchnorm import ModuleDef, network_norm
from flaxcnn.models.init import conv, dense
from flaxcnn.models.input_size import check_input_size, smallest_input
from flaxcnn.models.pooling import max_pool

# the stem's windows, (kernel, stride, padding): 7x7 stride-2 convolution, 3x3 stride-2 max-pooling
STEM_WINDOWS = [(7, 2, 3), (3, 2, 1)]
BLOCKS = ("residual", "basic", "bottleneck")  # d2l's Residual, torchvision's BasicBlock and Bottleneck


def stem(x, num_channels: int, norm: ModuleDef, *, use_bias: bool = True, dtype: Any = jnp.float32):
    """d2l's b1 of ResNet, which its DenseNet reuses: 7x7 stride-2 convolution to `num_channels`,
    BatchNorm, ReLU, 3x3 stride-2 max-pooling (`STEM_WINDOWS`). Called inside a network's
    compact `__call__`, which names its layers as its own (Conv_0, BatchNorm_0)."""
    x = conv(x, num_channels, (7, 7), strides=2, padding=3, use_bias=use_bias, dtype=dtype)
    x = nn.relu(norm()(x))
    return max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class Residual(nn.Module):
    """d2l's basic block: biased convolutions, no BatchNorm on the 1x1 shortcut."""

    num_channels: int
    norm: ModuleDef
    use_1x1conv: bool = False
    strides: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        channels = self.num_channels
        y = nn.relu(self.norm()(conv(x, channels, (3, 3), strides=self.strides, padding=1, dtype=self.dtype)))
        y = self.norm()(conv(y, channels, (3, 3), padding=1, dtype=self.dtype))
        if self.use_1x1conv:
            x = conv(x, channels, (1, 1), strides=self.strides, dtype=self.dtype)
        return nn.relu(y + x)


class BasicBlock(nn.Module):
    """torchvision's basic block: two bias-free 3x3 convolutions, each followed by BatchNorm;
    a projection shortcut (bias-free strided 1x1 convolution and BatchNorm) where the block
    changes the shape."""

    num_channels: int
    norm: ModuleDef
    strides: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        bias_free_conv = partial(conv, use_bias=False, dtype=self.dtype)
        channels = self.num_channels
        y = nn.relu(self.norm()(bias_free_conv(x, channels, (3, 3), strides=self.strides, padding=1)))
        y = self.norm()(bias_free_conv(y, channels, (3, 3), padding=1))
        if self.strides != 1 or x.shape[-1] != channels:
            x = self.norm()(bias_free_conv(x, channels, (1, 1), strides=self.strides))
        return nn.relu(y + x)


class Bottleneck(nn.Module):
    """torchvision's bottleneck (v1.5, stride on the 3x3): outputs 4 * num_channels channels;
    bias-free convolutions, each followed by BatchNorm, also on the projection shortcut.
    The 1x1 and 3x3 convolutions are int(num_channels * base_width / 64) * cardinality wide,
    the 3x3 split into `cardinality` groups (torchvision's `groups`, the NUMBER of groups):
    cardinality 1, base_width 64 is ResNet-50's block, 32 and 4 ResNeXt-50 32x4d's."""

    num_channels: int
    norm: ModuleDef
    strides: int = 1
    cardinality: int = 1
    base_width: int = 64
    dtype: Any = jnp.float32

    expansion = 4

    @nn.compact
    def __call__(self, x):
        bias_free_conv = partial(conv, use_bias=False, dtype=self.dtype)
        width = int(self.num_channels * self.base_width / 64) * self.cardinality
        out_channels = self.expansion * self.num_channels
        y = nn.relu(self.norm()(bias_free_conv(x, width, (1, 1))))
        y = bias_free_conv(y, width, (3, 3), strides=self.strides, padding=1, feature_group_count=self.cardinality)
        y = nn.relu(self.norm()(y))
        y = self.norm()(bias_free_conv(y, out_channels, (1, 1)))
        if self.strides != 1 or x.shape[-1] != out_channels:
            x = self.norm()(bias_free_conv(x, out_channels, (1, 1), strides=self.strides))
        return nn.relu(y + x)


class ResNeXtBlock(nn.Module):
    """d2l's ResNeXtBlock(num_channels, groups, bot_mul, use_1x1conv, strides): a 1x1
    convolution to bot_channels = round(num_channels * bot_mul), a grouped 3x3 convolution
    (stride `strides`), a 1x1 convolution to num_channels, BatchNorm after each; with
    `use_1x1conv`, a strided 1x1 convolution and BatchNorm on the shortcut. As in d2l,
    `groups` is the WIDTH of a group (channels per group), not the number of groups: the
    3x3 convolution has bot_channels // groups groups. Convolutions have biases (d2l's
    nn.LazyConv2d)."""

    num_channels: int
    groups: int
    bot_mul: float
    norm: ModuleDef
    use_1x1conv: bool = False
    strides: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        bot_channels = int(round(self.num_channels * self.bot_mul))
        conv_ = partial(conv, dtype=self.dtype)
        y = nn.relu(self.norm()(conv_(x, bot_channels, (1, 1))))
        y = conv_(y, bot_channels, (3, 3), strides=self.strides, padding=1,
                  feature_group_count=bot_channels // self.groups)
        y = nn.relu(self.norm()(y))
        y = self.norm()(conv_(y, self.num_channels, (1, 1)))
        if self.use_1x1conv:
            x = self.norm()(conv_(x, self.num_channels, (1, 1), strides=self.strides))
        return nn.relu(y + x)


class ResNet(nn.Module):
    """Stem (7x7 stride-2 convolution, BatchNorm, ReLU, 3x3 stride-2 max-pooling), stages of
    residual blocks, global average pooling and a dense layer. `arch` lists (number of
    blocks, channels) per stage; every stage after the first starts by halving height and
    width. `block`: "residual" is d2l's ResNet with `Residual` blocks (biased stem
    convolution); "basic" and "bottleneck" are torchvision's, with a bias-free stem and
    `BasicBlock` or `Bottleneck` blocks, the latter of `cardinality` groups of `base_width`
    channels (ResNeXt) if given. `bn_axis_name`: the pmap axis to sum the batch statistics
    over (None: each device's own batch); `mask` (N,): the real examples of a padded batch."""

    arch: Sequence[tuple[int, int]] = ((2, 64), (2, 128), (2, 256), (2, 512))
    block: str = "residual"
    cardinality: int = 1
    base_width: int = 64
    num_classes: int = 10
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32

    @property
    def min_input_size(self) -> int:
        # the stem's 7x7 stride-2 convolution and 3x3 stride-2 max-pooling, then one
        # 3x3 stride-2 convolution per later stage (the 1x1 shortcuts shrink no more)
        return smallest_input(STEM_WINDOWS + [(3, 2, 1)] * (len(self.arch) - 1))

    @nn.compact
    def __call__(self, x, train: bool, mask=None):
        check_input_size(type(self).__name__, x.shape, self.min_input_size)
        if self.block not in BLOCKS:
            raise ValueError(f"unknown ResNet block {self.block!r}; use one of {', '.join(BLOCKS)}")
        norm = network_norm(self, train, mask)
        x = stem(x, 64, norm, use_bias=self.block == "residual", dtype=self.dtype)
        for stage, (num_blocks, channels) in enumerate(self.arch):
            for index in range(num_blocks):
                strides = 2 if stage > 0 and index == 0 else 1
                if self.block == "bottleneck":
                    x = Bottleneck(channels, norm, strides, cardinality=self.cardinality,
                                   base_width=self.base_width, dtype=self.dtype)(x)
                elif self.block == "basic":
                    x = BasicBlock(channels, norm, strides, dtype=self.dtype)(x)
                else:
                    x = Residual(channels, norm, use_1x1conv=strides == 2, strides=strides, dtype=self.dtype)(x)
        x = x.mean(axis=(1, 2))
        return dense(x, self.num_classes, dtype=self.dtype)
