"""d2l's PyTorch initialisation: Xavier-uniform weights (d2l's `init_cnn`) and PyTorch's default biases.

d2l initialises the weight of every `nn.Conv2d` and `nn.Linear` with
`nn.init.xavier_uniform_` and leaves the bias at PyTorch's default, uniform in
[-1/sqrt(fan_in), 1/sqrt(fan_in)], where fan_in is in_channels * kernel height * kernel
width for a convolution and in_features for a dense layer. flax computes the fans of a
(height, width, in, out) kernel the same way PyTorch does, so its Xavier-uniform is
PyTorch's. flax hands a bias initialiser only the bias's shape, so the bias's fan_in has
to come from the layer's input: `conv` and `dense` create the layer where the input is
known, inside the calling module's compact `__call__`, which names it as any layer created
there (Conv_0, Dense_1, ...). Bias-free convolutions (`use_bias=False`) just get the kernel.
"""
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxcnn.models.convolution import conv_general_dilated

xavier_uniform = nn.initializers.xavier_uniform()


def torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default bias initialiser for a layer with `fan_in` inputs per output:
    uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)]; zeros for fan_in 0, as PyTorch (an
    empty input, e.g. an image below a network's minimum size)."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv(x, features: int, kernel_size: Sequence[int], **conv_fields):
    """`nn.Conv(features, kernel_size, **conv_fields)` applied to the NHWC array x, initialised
    like d2l's `nn.Conv2d`: Xavier-uniform kernel, bias uniform in +-1/sqrt(fan_in). A grouped
    convolution (`feature_group_count=g`, PyTorch's `groups=g`) sees in_channels / g inputs per
    output, so fan_in = in_channels / g * kh * kw, as PyTorch computes it from its
    (out, in / g, kh, kw) weight; flax's (kh, kw, in / g, out) kernel gives Xavier the same fans.
    On the CPU a grouped convolution is computed group by group (flaxcnn.models.convolution)."""
    fan_in = x.shape[-1] // conv_fields.get("feature_group_count", 1) * math.prod(kernel_size)
    layer = nn.Conv(features, kernel_size, kernel_init=xavier_uniform,
                    bias_init=torch_bias_init(fan_in), conv_general_dilated=conv_general_dilated,
                    **conv_fields)
    return layer(x)


def dense(x, features: int, **dense_fields):
    """`nn.Dense(features, **dense_fields)` applied to x, initialised like d2l's `nn.Linear`:
    Xavier-uniform kernel, bias uniform in +-1/sqrt(in_features)."""
    layer = nn.Dense(features, kernel_init=xavier_uniform,
                     bias_init=torch_bias_init(x.shape[-1]), **dense_fields)
    return layer(x)
