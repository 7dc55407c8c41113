"""Grouped convolutions as one convolution per group on the CPU.

The grouped convolution of ResNeXt (Xie, Girshick, Dollar, Tu & He 2017), which RegNetX
(Radosavovic, Kosaraju, Girshick, He & Dollar 2020) stacks, splits the channels into groups that
are convolved separately. XLA:CPU computes `feature_group_count > 1` 17-84x slower (forward and
backward) than the same groups as separate convolutions whose outputs are concatenated
(BENCHMARKS.md, "CPU: where the time goes"), so on the CPU backend `conv_general_dilated` computes
it that way: the same sums over the same products, group by group (tests/test_cpu_convolutions.py
compares every grouped convolution of the models with lax's). flax's `nn.Conv` takes it as its
`conv_general_dilated`; other backends, and ungrouped convolutions, call lax's.
"""
import jax
import jax.numpy as jnp
from jax import lax


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1, **kwargs):
    """`lax.conv_general_dilated`, with a grouped convolution on the CPU computed group by group."""
    if feature_group_count == 1 or jax.default_backend() != "cpu":
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers,
                                        feature_group_count=feature_group_count, **kwargs)
    numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    in_axis, out_axis, result_axis = numbers.lhs_spec[1], numbers.rhs_spec[0], numbers.out_spec[1]
    groups = [lax.conv_general_dilated(x, w, window_strides, padding, lhs_dilation, rhs_dilation,
                                       numbers, **kwargs)
              for x, w in zip(jnp.split(lhs, feature_group_count, axis=in_axis),
                              jnp.split(rhs, feature_group_count, axis=out_axis))]
    return jnp.concatenate(groups, axis=result_axis)
