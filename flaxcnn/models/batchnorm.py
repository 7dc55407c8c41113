"""Batch normalization (Ioffe & Szegedy 2015) from scratch, and d2l's LeNet with it.

In training, batch normalization standardises each channel with the mean and variance
of the current minibatch (over N for dense outputs, over N, H and W for NHWC feature
maps), then applies a learned scale and shift; it also keeps moving averages of those
statistics, which replace the batch statistics at evaluation time.
"""
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from flaxcnn.models.init import conv, dense
from flaxcnn.models.input_size import check_input_size, smallest_input

# A module class, or a functools.partial of one, that a network hands its blocks: e.g. the
# network's BatchNorm, configured once (train or evaluation mode, momentum, epsilon, dtype,
# pmap axis), which each block calls as `self.norm()(x)` for a new layer.
ModuleDef = Any

# The norm of a block built on its own, as d2l builds one (`Residual(3)`): flax's BatchNorm in
# training mode with d2l's momentum and epsilon. Inside a network the network hands its blocks
# its own (`network_norm`).
block_norm = partial(nn.BatchNorm, use_running_average=False, momentum=0.9, epsilon=1e-5)


def network_norm(network: nn.Module, train: bool, layer: ModuleDef = nn.BatchNorm) -> ModuleDef:
    """The BatchNorm a network builds once per call and hands its blocks as their field `norm`:
    `partial(layer, use_running_average=not train, ...)` with the momentum, epsilon, dtype and
    pmap axis read from the network's OWN fields `bn_momentum`, `bn_epsilon`, `dtype` and
    `bn_axis_name`, which every network with BatchNorm declares (with its own defaults, e.g.
    Inception-v3's epsilon 0.001). `layer`: flax.linen.BatchNorm, or the from-scratch
    `BatchNorm` below, which takes the same arguments."""
    return partial(layer, use_running_average=not train, momentum=network.bn_momentum,
                   epsilon=network.bn_epsilon, dtype=network.dtype, axis_name=network.bn_axis_name)


def batch_norm(x, gamma, beta, moving_mean, moving_var, *, eps, momentum, train, axis_name=None):
    """Returns (normalized x, new moving mean, new moving variance).

    Statistics are per channel (the last axis), computed in at least float32, with the
    biased variance. With `axis_name`, mean and mean of squares are averaged across that
    pmap axis, so every replica normalizes with the statistics of the global batch. The
    moving averages follow flax's convention: new = momentum * old + (1 - momentum) * batch.
    """
    if x.ndim not in (2, 4):
        raise ValueError(f"batch_norm expects (N, C) or (N, H, W, C) inputs, got shape {x.shape}")
    if train:
        stats_axes = tuple(range(x.ndim - 1))
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        mean, mean_of_squares = x32.mean(stats_axes), jnp.square(x32).mean(stats_axes)
        if axis_name is not None:
            mean, mean_of_squares = lax.pmean((mean, mean_of_squares), axis_name)
        var = jnp.maximum(0.0, mean_of_squares - jnp.square(mean))  # clip round-off below zero
        moving_mean = momentum * moving_mean + (1 - momentum) * mean
        moving_var = momentum * moving_var + (1 - momentum) * var
    else:
        mean, var = moving_mean, moving_var
    y = (x - mean) * (lax.rsqrt(var + eps) * gamma) + beta
    return y, moving_mean, moving_var


class BatchNorm(nn.Module):
    """`batch_norm` as a layer, with the same variables and calling convention as
    flax.linen.BatchNorm: 'scale' and 'bias' in params, 'mean' and 'var' in batch_stats;
    `use_running_average` (evaluation mode) is a field or a call argument, exactly one of them
    set. So `partial(BatchNorm, use_running_average=not train, ...)` and the same partial of
    nn.BatchNorm are interchangeable. `dtype=None` returns the promoted dtype of input and
    parameters, as flax does."""

    use_running_average: bool | None = None
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = None
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None):
        train = not nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        channels = (x.shape[-1],)
        scale = self.param("scale", nn.initializers.ones, channels, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, channels, jnp.float32)
        moving_mean = self.variable("batch_stats", "mean", jnp.zeros, channels, jnp.float32)
        moving_var = self.variable("batch_stats", "var", jnp.ones, channels, jnp.float32)
        # Like flax: initialization neither updates the moving statistics nor needs the pmap axis.
        initializing = self.is_initializing()
        y, new_mean, new_var = batch_norm(
            x, scale, bias, moving_mean.value, moving_var.value,
            eps=self.epsilon, momentum=self.momentum, train=train,
            axis_name=None if initializing else self.axis_name,
        )
        if train and not initializing:
            moving_mean.value, moving_var.value = new_mean, new_var
        return y.astype(self.dtype or jnp.result_type(x, scale))


class LeNetBN(nn.Module):
    """LeNet-5 with batch normalization after every convolution and hidden dense layer, and
    sigmoid activations. `batch_norm_from_scratch` picks the `BatchNorm` above instead of
    flax.linen.BatchNorm; both have the same variables. `bn_axis_name`: the pmap axis to
    average the batch statistics over (None: each device's own batch)."""

    num_classes: int = 10
    batch_norm_from_scratch: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32

    @property
    def min_input_size(self) -> int:
        # two unpadded 5x5 convolutions, each followed by a 2x2 stride-2 average pooling
        return smallest_input([(5, 1, 0), (2, 2, 0)] * 2)

    @nn.compact
    def __call__(self, x, train: bool):
        check_input_size(type(self).__name__, x.shape, self.min_input_size)

        norm = network_norm(self, train, BatchNorm if self.batch_norm_from_scratch else nn.BatchNorm)

        def norm_sigmoid(x):
            return nn.sigmoid(norm()(x))

        x = norm_sigmoid(conv(x, 6, (5, 5), padding=0, dtype=self.dtype))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = norm_sigmoid(conv(x, 16, (5, 5), padding=0, dtype=self.dtype))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = norm_sigmoid(dense(x, 120, dtype=self.dtype))
        x = norm_sigmoid(dense(x, 84, dtype=self.dtype))
        return dense(x, self.num_classes, dtype=self.dtype)
