"""VGG (Simonyan & Zisserman 2014), as in d2l's PyTorch code.

A VGG block stacks 3x3 convolutions (padding 1, so the size is kept) and ends with a 2x2
max-pooling that halves height and width. The network is a sequence of such blocks
followed by AlexNet's dense head. At 224x224 pixels it is torchvision's VGG layer for layer:
torchvision's adaptive 7x7 average pooling before the head is then the identity, and only the
order in which the final 7x7x512 map is flattened differs (NCHW there), which
flaxcnn.pretrained's mapping accounts for.
"""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from flaxcnn.models.init import conv, dense
from flaxcnn.models.input_size import check_input_size, smallest_input
from flaxcnn.models.pooling import max_pool

VGG11_ARCH = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
VGG13_ARCH = ((2, 64), (2, 128), (2, 256), (2, 512), (2, 512))
VGG16_ARCH = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
VGG19_ARCH = ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512))


class VGGBlock(nn.Module):
    """`num_convs` x (3x3 convolution + ReLU), then a 2x2 stride-2 max-pooling."""

    num_convs: int
    channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for _ in range(self.num_convs):
            x = nn.relu(conv(x, self.channels, (3, 3), padding=1, dtype=self.dtype))
        return max_pool(x, (2, 2), strides=(2, 2))


def vgg_block(num_convs: int, channels: int, dtype: Any = jnp.float32) -> VGGBlock:
    """d2l's `vgg_block(num_convs, out_channels)`: a `VGGBlock`."""
    return VGGBlock(num_convs, channels, dtype)


class VGG(nn.Module):
    """`conv_arch` lists (number of convolutions, channels) per block; `width_divisor`
    thins every convolution (d2l uses 4 to train on Fashion-MNIST) but not the dense head."""

    conv_arch: Sequence[tuple[int, int]] = VGG11_ARCH
    width_divisor: int = 1
    num_classes: int = 10
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    @property
    def min_input_size(self) -> int:
        return smallest_input([(2, 2, 0)] * len(self.conv_arch))

    @nn.compact
    def __call__(self, x, train: bool):
        check_input_size(type(self).__name__, x.shape, self.min_input_size)
        for num_convs, channels in self.conv_arch:
            x = vgg_block(num_convs, channels // self.width_divisor, self.dtype)(x)
        x = x.reshape(x.shape[0], -1)
        for _ in range(2):
            x = nn.relu(dense(x, 4096, dtype=self.dtype))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return dense(x, self.num_classes, dtype=self.dtype)
