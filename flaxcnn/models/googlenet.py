"""GoogLeNet (Szegedy et al. 2014), as in d2l's PyTorch code.

An Inception block runs four paths side by side on the same input -- a 1x1 convolution;
1x1 then 3x3; 1x1 then 5x5; 3x3 max-pooling then 1x1 -- each padded to keep height and
width, and concatenates their outputs along the channels. The network is a stem (b1, b2),
three groups of Inception blocks (b3-b5) and global average pooling before the dense layer.
"""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from flaxcnn.models.init import conv, dense
from flaxcnn.models.input_size import check_input_size, smallest_input
from flaxcnn.models.pooling import max_pool


class Inception(nn.Module):
    """Outputs c1 + c2[1] + c3[1] + c4 channels at the input's height and width."""

    c1: int
    c2: Sequence[int]
    c3: Sequence[int]
    c4: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        def conv_relu(x, channels, size):
            return nn.relu(conv(x, channels, (size, size), padding=size // 2, dtype=self.dtype))

        path1 = conv_relu(x, self.c1, 1)
        path2 = conv_relu(conv_relu(x, self.c2[0], 1), self.c2[1], 3)
        path3 = conv_relu(conv_relu(x, self.c3[0], 1), self.c3[1], 5)
        path4 = max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        path4 = conv_relu(path4, self.c4, 1)
        return jnp.concatenate([path1, path2, path3, path4], axis=-1)


class GoogLeNet(nn.Module):
    num_classes: int = 10
    dtype: Any = jnp.float32

    @property
    def min_input_size(self) -> int:
        # the 7x7 stride-2 convolution and the four 3x3 stride-2 max-poolings
        return smallest_input([(7, 2, 3)] + [(3, 2, 1)] * 4)

    @nn.compact
    def __call__(self, x, train: bool):
        check_input_size(type(self).__name__, x.shape, self.min_input_size)

        def pool(x):
            return max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

        # b1
        x = nn.relu(conv(x, 64, (7, 7), strides=2, padding=3, dtype=self.dtype))
        x = pool(x)
        # b2
        x = nn.relu(conv(x, 64, (1, 1), dtype=self.dtype))
        x = nn.relu(conv(x, 192, (3, 3), padding=1, dtype=self.dtype))
        x = pool(x)
        # b3
        x = Inception(64, (96, 128), (16, 32), 32, dtype=self.dtype)(x)
        x = Inception(128, (128, 192), (32, 96), 64, dtype=self.dtype)(x)
        x = pool(x)
        # b4
        x = Inception(192, (96, 208), (16, 48), 64, dtype=self.dtype)(x)
        x = Inception(160, (112, 224), (24, 64), 64, dtype=self.dtype)(x)
        x = Inception(128, (128, 256), (24, 64), 64, dtype=self.dtype)(x)
        x = Inception(112, (144, 288), (32, 64), 64, dtype=self.dtype)(x)
        x = Inception(256, (160, 320), (32, 128), 128, dtype=self.dtype)(x)
        x = pool(x)
        # b5
        x = Inception(256, (160, 320), (32, 128), 128, dtype=self.dtype)(x)
        x = Inception(384, (192, 384), (48, 128), 128, dtype=self.dtype)(x)
        x = x.mean(axis=(1, 2))
        return dense(x, self.num_classes, dtype=self.dtype)
