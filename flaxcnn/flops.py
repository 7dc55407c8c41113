"""FLOPs of the zoo's computations, counted the same way on every backend.

XLA's cost analysis is the counter, but where it runs matters:

- GPU and TPU are PJRT C-API backends: `Lowered.cost_analysis()` returns None there.
- After compilation on GPU, convolutions and matmuls are cuDNN/cuBLAS custom calls that the
  compiled cost analysis does not count, so `compile().cost_analysis()` undercounts a CNN badly.

So every count here lowers the computation for the host CPU (which every jax install has, next to
any accelerator) and reads the cost analysis of that unoptimised HLO: convolutions and matmuls
included, the same number on a laptop, a GPU or a TPU host. Only shapes are used: nothing is
copied to a device, and nothing is compiled except where jax has no cost analysis before
compilation (pmap in jax 0.7).

Imports neither TensorFlow nor ml_collections.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _cpu_device():
    """The host CPU device, or None when jax was told to leave the CPU backend out."""
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return None


def _flops(lowered) -> float | None:
    """The 'flops' of a Lowered or Compiled stage's cost analysis; None if it has none."""
    try:
        cost = lowered.cost_analysis()
    except NotImplementedError:
        return None
    if isinstance(cost, (list, tuple)):  # one entry per program in older jax versions
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def count(lower: Callable[[object | None], object]) -> float:
    """FLOPs of the computation that `lower(device)` lowers for `device` (a CPU device when
    there is one, else None for the default device).

    On the CPU: XLA's cost analysis of the unoptimised HLO, or where jax has none for it (pmap in
    jax 0.7), of the program compiled for the CPU (XLA:CPU keeps convolutions as HLO, so they are
    counted). Without a CPU backend (JAX_PLATFORMS names only an accelerator), the default
    backend's analysis of the unoptimised HLO, or an error: a count after compilation for an
    accelerator would silently leave out its cuDNN/cuBLAS calls.
    """
    cpu = _cpu_device()
    if cpu is not None:
        with jax.default_device(cpu):
            lowered = lower(cpu)
            flops = _flops(lowered)
            if flops is None:
                flops = _flops(lowered.compile())
        if flops is not None:
            return flops
    flops = _flops(lower(None))
    if flops is None:
        raise RuntimeError("XLA reports no FLOP count for this computation on the "
                           f"{jax.default_backend()} backend; let jax use the CPU backend too "
                           "(add 'cpu' to JAX_PLATFORMS) to count FLOPs")
    return flops


def _abstract(tree, device=None):
    """Shape/dtype structs of a pytree of arrays (or of structs), placed on `device` if given."""
    sharding = jax.sharding.SingleDeviceSharding(device) if device is not None else None

    def struct(x):
        dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
        return jax.ShapeDtypeStruct(np.shape(x), dtype, sharding=sharding)

    return jax.tree.map(struct, tree)


def forward_flops(model, image_shape: Sequence[int], *, batch: int = 1,
                  dtype=jnp.float32) -> float:
    """FLOPs of `model`'s forward pass in evaluation mode on `batch` images of `image_shape`
    (H, W, C)."""
    image = jax.ShapeDtypeStruct((batch, *image_shape), dtype)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), image)

    def lower(device):
        forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
        return forward.lower(_abstract(variables, device), _abstract(image, device))

    return count(lower)


def train_step_flops(state, step_kwargs: dict, batch_per_device: int,
                     image_shape: Sequence[int]) -> float:
    """FLOPs of one device's share of `training.counted_train_step` (uint8 images of
    `image_shape`, a batch of `batch_per_device`); multiply by the device count for a global step.
    `state` (a TrainState) may hold arrays on any device, or shape structs: only shapes and dtypes
    are read."""
    from flaxcnn import training

    images = jax.ShapeDtypeStruct((1, batch_per_device, *image_shape), jnp.uint8)
    labels = jax.ShapeDtypeStruct((1, batch_per_device), jnp.int32)
    mask = jax.ShapeDtypeStruct((1, batch_per_device), jnp.bool_)
    key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
    run_state = training.RunState(state, key, key, training.zero_totals())
    one = jax.tree.map(lambda x: jax.ShapeDtypeStruct((1, *np.shape(x)), x.dtype),
                       _abstract(run_state))

    def lower(device):
        devices = [device] if device is not None else jax.local_devices()[:1]
        step = jax.pmap(lambda s, x, y, m: training.counted_train_step(s, x, y, m, step_kwargs),
                        training.AXIS, devices=devices)
        return step.lower(one, images, labels, mask)

    return count(lower)
