"""Batch normalization (Ioffe & Szegedy 2015) from scratch, the one BatchNorm layer of every
network, and d2l's LeNet with it.

In training, batch normalization standardises each channel with the mean and variance
of the current minibatch (over N for dense outputs, over N, H and W for NHWC feature
maps), then applies a learned scale and shift; it also keeps moving averages of those
statistics, which replace the batch statistics at evaluation time.

Every network here uses this layer rather than flax.linen.BatchNorm, for two things training
exactly as the references do needs:

* The running variance in the reference's convention. PyTorch's nn.BatchNorm (d2l's concise
  models, torchvision's) normalizes with the biased batch variance but updates its running
  variance with the unbiased one (x n/(n-1), n the examples times the pixels of the batch); d2l's
  from-scratch `batch_norm` (`lenet_bn_scratch`) and flax keep the biased one.
* A mask of the batch's real examples (an epoch's last batch is padded to the compiled shape).
  The statistics are sums and counts over the real examples, summed across the pmap axis, so
  they are those of the global batch of real examples however unevenly the devices hold them.
  flax.linen.BatchNorm with mask and axis_name instead averages each device's masked mean
  (flax 0.12.8, linen/normalization.py, `_compute_stats`: `x.mean(axes, where=mask)` then
  `lax.pmean`), which weights devices with few real examples too much, and a device with none
  gives 0/0.

The layer has flax.linen.BatchNorm's variables and name (params scale and bias, batch_stats mean
and var, BatchNorm_k), so checkpoints and torchvision's weights (flaxcnn.pretrained) load into it.
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
# pmap axis, the batch's mask), which each block calls as `self.norm()(x)` for a new layer.
ModuleDef = Any


def network_norm(network: nn.Module, train: bool, mask=None, *,
                 unbiased_running_var: bool = True) -> ModuleDef:
    """The BatchNorm a network builds once per call and hands its blocks as their field `norm`:
    `partial(BatchNorm, use_running_average=not train, ...)` with the momentum, epsilon, dtype and
    pmap axis read from the network's OWN fields `bn_momentum`, `bn_epsilon`, `dtype` and
    `bn_axis_name`, which every network with BatchNorm declares (with its own defaults, e.g.
    Inception-v3's epsilon 0.001). `mask`: the network call's (N,) mask of real examples (None:
    all are). `unbiased_running_var`: torch's nn.BatchNorm convention (True) or d2l's
    from-scratch one (False)."""
    return partial(BatchNorm, use_running_average=not train, momentum=network.bn_momentum,
                   epsilon=network.bn_epsilon, dtype=network.dtype, axis_name=network.bn_axis_name,
                   mask=mask, unbiased_running_var=unbiased_running_var)


def batch_norm(x, gamma, beta, moving_mean, moving_var, *, eps, momentum, train, axis_name=None,
               mask=None, unbiased_running_var=False):
    """Returns (normalized x, new moving mean, new moving variance).

    Statistics are per channel (the last axis), computed in at least float32 over the examples
    that `mask` (shape (N,), None: all) marks, with the biased variance. With `axis_name`, their
    sums and counts are summed across that pmap axis, so every replica normalizes with the
    statistics of the global batch. The moving averages follow flax's convention:
    new = momentum * old + (1 - momentum) * batch, the batch's variance made unbiased
    (x n/(n-1), n the values per channel) if `unbiased_running_var`.
    """
    if x.ndim not in (2, 4):
        raise ValueError(f"batch_norm expects (N, C) or (N, H, W, C) inputs, got shape {x.shape}")
    if train:
        stats_axes = tuple(range(x.ndim - 1))
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        values_per_example = x[0].size // x.shape[-1]
        if mask is None:
            total, total_of_squares = x32.sum(stats_axes), jnp.square(x32).sum(stats_axes)
            count = jnp.asarray(x.shape[0] * values_per_example, x32.dtype)
        else:
            where = mask.reshape(-1, *[1] * (x.ndim - 1))
            total = jnp.sum(x32, stats_axes, where=where)
            total_of_squares = jnp.sum(jnp.square(x32), stats_axes, where=where)
            count = jnp.sum(mask).astype(x32.dtype) * values_per_example
        if axis_name is not None:
            total, total_of_squares, count = lax.psum((total, total_of_squares, count), axis_name)
        count = jnp.maximum(count, 1)  # a device without real examples (unsynchronised statistics)
        mean = total / count
        var = jnp.maximum(0.0, total_of_squares / count - jnp.square(mean))  # round-off below 0
        moving_mean = momentum * moving_mean + (1 - momentum) * mean
        running_var = var * (count / jnp.maximum(count - 1, 1)) if unbiased_running_var else var
        moving_var = momentum * moving_var + (1 - momentum) * running_var
    else:
        mean, var = moving_mean, moving_var
    y = (x - mean) * (lax.rsqrt(var + eps) * gamma) + beta
    return y, moving_mean, moving_var


class BatchNorm(nn.Module):
    """`batch_norm` as a layer, with the same variables and calling convention as
    flax.linen.BatchNorm: 'scale' and 'bias' in params, 'mean' and 'var' in batch_stats;
    `use_running_average` (evaluation mode) is a field or a call argument, exactly one of them
    set, and so is `mask`. `dtype=None` returns the promoted dtype of input and parameters, as
    flax does. `unbiased_running_var`: True is torch's nn.BatchNorm, False flax's and d2l's
    from-scratch `batch_norm`."""

    use_running_average: bool | None = None
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = None
    axis_name: str | None = None
    mask: Any = None
    unbiased_running_var: bool = False

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        train = not nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        if mask is not None and self.mask is not None:
            raise ValueError("BatchNorm's mask is set both as a field and as a call argument")
        mask = self.mask if mask is None else mask
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
            axis_name=None if initializing else self.axis_name, mask=mask,
            unbiased_running_var=self.unbiased_running_var,
        )
        if train and not initializing:
            moving_mean.value, moving_var.value = new_mean, new_var
        return y.astype(self.dtype or jnp.result_type(x, scale))


# The norm of a block built on its own, as d2l builds one (`Residual(3)`): the layer above in
# training mode, as d2l's nn.BatchNorm2d is by default (momentum, epsilon and running variance in
# torch's convention). Inside a network the network hands its blocks its own (`network_norm`).
block_norm = partial(BatchNorm, use_running_average=False, momentum=0.9, epsilon=1e-5,
                     unbiased_running_var=True)


class LeNetBN(nn.Module):
    """LeNet-5 with batch normalization after every convolution and hidden dense layer, and
    sigmoid activations. `batch_norm_from_scratch`: d2l's from-scratch `batch_norm` (a biased
    running variance) instead of d2l's concise nn.BatchNorm2d/1d (torch's unbiased one); the
    variables are the same. `bn_axis_name`: the pmap axis to sum the batch statistics over
    (None: each device's own batch). `mask` (N,): the real examples of a padded batch."""

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
    def __call__(self, x, train: bool, mask=None):
        check_input_size(type(self).__name__, x.shape, self.min_input_size)
        norm = network_norm(self, train, mask,
                            unbiased_running_var=not self.batch_norm_from_scratch)

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
