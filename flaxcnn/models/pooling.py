"""Max pooling with a gradient XLA:CPU computes several times faster than its own.

The pooling of AlexNet (Krizhevsky, Sutskever & Hinton 2012) and the networks after it sends
each output's gradient to the input that was the window's maximum. JAX differentiates
`lax.reduce_window` max through `select_and_scatter_add`, which XLA:CPU runs as a variadic
reduce-window over four index arrays of the padded input's size: for ResNet-18's stem pooling at
batch 128 that is about 290 ms of a 1.6 s train step on the 2-core development VM (BENCHMARKS.md,
"CPU: where the time goes").

`max_pool` computes the same forward (the same `reduce_window`), and on the CPU backend a custom
gradient: the differentiated forward pass computes the maximum as a running maximum over the
window's offsets in row-major order, which a later offset replaces only where it is strictly
greater, and so records in the same comparisons which offset held each output's first maximum (an
int8 array of the output's size, kept instead of the input); the backward pass places each
output's gradient at that offset, one padded copy per offset summed into the stride's phases, then
interleaved. The choice of the first maximum is `select_and_scatter_add`'s (and PyTorch's), so the
gradients are those of `jax.grad` through `nn.max_pool` up to the order in which overlapping
windows' contributions are added (tests/test_pooling.py, for every pooling shape the models use;
tests/test_model_gradients.py, every model whole under jit). The position is never found by
comparing the input with a maximum computed elsewhere: inside a jitted network XLA may recompute
the pooling's input (BatchNorm, ReLU) in more than one fused kernel with other roundings, and the
windows whose values then differed in the last bit passed no gradient (issue 26: a fifth of
ResNet-18's gradient at d2l's 96 px). A window with a NaN has a NaN maximum, as XLA's max, and
sends its gradient to its last NaN (its loss is not finite, and the train step skips such a step).
Other backends keep JAX's own gradient: the custom one was measured on XLA:CPU only.
"""
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Padding = str | Sequence[tuple[int, int]]


def max_pool(x, window_shape: Sequence[int], strides: Sequence[int], padding: Padding = "VALID"):
    """`nn.max_pool(x, window_shape, strides, padding)` for an NHWC array x; padding is "VALID" or
    ((top, bottom), (left, right)), the padding counting as -inf."""
    window, stride = tuple(window_shape), tuple(strides)
    pads = ((0, 0), (0, 0)) if padding == "VALID" else tuple(tuple(p) for p in padding)
    if x.ndim != 4 or len(window) != 2 or len(stride) != 2 or len(pads) != 2:
        raise ValueError(f"max_pool takes an NHWC array and 2-D windows, got shape {x.shape}, "
                         f"window {window}, strides {stride}, padding {padding}")
    if jax.default_backend() != "cpu":
        return nn.max_pool(x, window, stride, pads)
    return _routed_max_pool(x, window, stride, pads, tuple(x.shape))


def _offsets(window):
    return [(i, j) for i in range(window[0]) for j in range(window[1])]


def _max_and_first(x, window, strides, padding):
    """The pooling's output and, for each output, the index (in `_offsets`' order) of the first
    window position that holds its maximum: a running maximum over the window's offsets, which a
    later offset replaces only where it is strictly greater (or NaN, which wins as in XLA's max).
    The maximum and its position come out of the same comparisons, so every window has exactly one
    position whatever values XLA computes for the input here. (Comparing the input with a maximum
    computed in another fused kernel is not safe: inside a jitted network XLA may recompute the
    input, e.g. BatchNorm and ReLU, in each kernel with other roundings, and windows whose values
    then differ in the last bit found no maximum and passed no gradient; tests/test_model_gradients.py.)"""
    (sh, sw), ((pt, pb), (pl, pr)) = strides, padding
    padded = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=-jnp.inf)
    n, h, w, c = padded.shape
    ho, wo = (h - window[0]) // sh + 1, (w - window[1]) // sw + 1
    offsets = _offsets(window)
    index_type = jnp.int8 if len(offsets) < 127 else jnp.int32
    best = first = None
    for k, (i, j) in enumerate(offsets):
        seen = lax.slice(padded, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                         (1, sh, sw, 1))
        if best is None:
            best, first = seen, jnp.zeros(seen.shape, index_type)
        else:
            replaces = (seen > best) | jnp.isnan(seen)
            best, first = jnp.where(replaces, seen, best), jnp.where(replaces, index_type(k), first)
    return best, first


def _route_gradient(first, g, input_shape, window, strides, padding):
    """The input's gradient: each output's `g` at its first maximum. Offset (i, j) lands on the
    padded input's rows s*a + i, i.e. on phase i % s at row a + i // s; each phase is a sum of
    shifted copies, and the phases interleave into the padded input."""
    (sh, sw), ((pt, pb), (pl, pr)) = strides, padding
    n, h, w, c = input_shape
    ho, wo = g.shape[1:3]
    phase_h, phase_w = -(-(h + pt + pb) // sh), -(-(w + pl + pr) // sw)
    zero = jnp.zeros((), g.dtype)
    phases = {}
    for k, (i, j) in enumerate(_offsets(window)):
        (qh, rh), (qw, rw) = divmod(i, sh), divmod(j, sw)
        placed = lax.pad(jnp.where(first == k, g, zero), zero,
                         ((0, 0, 0), (qh, phase_h - ho - qh, 0), (qw, phase_w - wo - qw, 0),
                          (0, 0, 0)))
        phases[rh, rw] = phases[rh, rw] + placed if (rh, rw) in phases else placed
    empty = jnp.zeros((n, phase_h, phase_w, c), g.dtype)
    grid = jnp.stack([jnp.stack([phases.get((rh, rw), empty) for rw in range(sw)], axis=3)
                      for rh in range(sh)], axis=2)  # (n, phase_h, sh, phase_w, sw, c)
    padded = grid.reshape(n, phase_h * sh, phase_w * sw, c)
    return padded[:, pt:pt + h, pl:pl + w, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _routed_max_pool(x, window, strides, padding, input_shape):
    del input_shape  # for the backward pass, which does not keep x
    return nn.max_pool(x, window, strides, padding)


def _routed_forward(x, window, strides, padding, input_shape):
    return _max_and_first(x, window, strides, padding)


def _routed_backward(window, strides, padding, input_shape, first, g):
    return (_route_gradient(first, g, input_shape, window, strides, padding),)


_routed_max_pool.defvjp(_routed_forward, _routed_backward)
