"""AlexNet (Krizhevsky, Sutskever & Hinton 2012), as in d2l's PyTorch code.

Five convolutions, the first with a large 11x11 window and stride 4, three overlapping
3x3 max-poolings, then two 4096-wide dense layers regularised by dropout.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from flaxcnn.models.init import conv, dense
from flaxcnn.models.input_size import check_input_size, smallest_input
from flaxcnn.models.pooling import max_pool


class AlexNet(nn.Module):
    num_classes: int = 10
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    @property
    def min_input_size(self) -> int:
        # the 11x11 stride-4 convolution and the three 3x3 stride-2 max-poolings
        return smallest_input([(11, 4, 1), (3, 2, 0), (3, 2, 0), (3, 2, 0)])

    @nn.compact
    def __call__(self, x, train: bool):
        check_input_size(type(self).__name__, x.shape, self.min_input_size)
        x = nn.relu(conv(x, 96, (11, 11), strides=4, padding=1, dtype=self.dtype))
        x = max_pool(x, (3, 3), strides=(2, 2))
        x = nn.relu(conv(x, 256, (5, 5), padding=2, dtype=self.dtype))
        x = max_pool(x, (3, 3), strides=(2, 2))
        x = nn.relu(conv(x, 384, (3, 3), padding=1, dtype=self.dtype))
        x = nn.relu(conv(x, 384, (3, 3), padding=1, dtype=self.dtype))
        x = nn.relu(conv(x, 256, (3, 3), padding=1, dtype=self.dtype))
        x = max_pool(x, (3, 3), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        for _ in range(2):
            x = nn.relu(dense(x, 4096, dtype=self.dtype))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return dense(x, self.num_classes, dtype=self.dtype)
