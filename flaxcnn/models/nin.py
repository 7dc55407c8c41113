"""Network in Network (Lin, Chen & Yan 2013), as in d2l's PyTorch code.

A NiN block is one ordinary convolution followed by two 1x1 convolutions, which act as
a small per-pixel MLP across channels. The last block outputs one channel per class and
global average pooling turns them into logits, so there is no dense layer at all.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from flaxcnn.models.init import conv
from flaxcnn.models.input_size import check_input_size, smallest_input
from flaxcnn.models.pooling import max_pool


class NiNBlock(nn.Module):
    """A kernel_size x kernel_size convolution, then two 1x1 convolutions, each followed by ReLU."""

    out_channels: int
    kernel_size: int
    strides: int
    padding: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        window = (self.kernel_size, self.kernel_size)
        x = nn.relu(conv(x, self.out_channels, window, strides=self.strides, padding=self.padding,
                         dtype=self.dtype))
        x = nn.relu(conv(x, self.out_channels, (1, 1), dtype=self.dtype))
        return nn.relu(conv(x, self.out_channels, (1, 1), dtype=self.dtype))


def nin_block(
    out_channels: int, kernel_size: int, strides: int, padding: int, dtype: Any = jnp.float32
) -> NiNBlock:
    """d2l's `nin_block(out_channels, kernel_size, strides, padding)`: a `NiNBlock`."""
    return NiNBlock(out_channels, kernel_size, strides, padding, dtype)


class NiN(nn.Module):
    num_classes: int = 10
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    @property
    def min_input_size(self) -> int:
        # the 11x11 stride-4 convolution and the three 3x3 stride-2 max-poolings
        return smallest_input([(11, 4, 0), (3, 2, 0), (3, 2, 0), (3, 2, 0)])

    @nn.compact
    def __call__(self, x, train: bool):
        check_input_size(type(self).__name__, x.shape, self.min_input_size)
        x = nin_block(96, 11, 4, 0, self.dtype)(x)
        x = max_pool(x, (3, 3), strides=(2, 2))
        x = nin_block(256, 5, 1, 2, self.dtype)(x)
        x = max_pool(x, (3, 3), strides=(2, 2))
        x = nin_block(384, 3, 1, 1, self.dtype)(x)
        x = max_pool(x, (3, 3), strides=(2, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nin_block(self.num_classes, 3, 1, 1, self.dtype)(x)
        return x.mean(axis=(1, 2))
