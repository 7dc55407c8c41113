"""Pytrees between the host and the devices of the pmap: one copy per local device, and back.

A pmapped function takes and returns arrays with a leading axis of the local devices. `replicate`
lays a host pytree out exactly as pmap's outputs are laid out (so feeding it back to a pmapped
function compiles nothing new); `unreplicate` fetches the first device's copy; `host_sums` turns
the step's replicated metric sums into Python numbers.
"""
from __future__ import annotations

import jax
import numpy as np

AXIS = "devices"  # the pmap axis: gradients, metrics and (by default) BatchNorm statistics average over it


def mesh(devices=None) -> jax.sharding.Mesh:
    return jax.sharding.Mesh(np.array(list(devices or jax.local_devices())), (AXIS,))


def replicate(tree, devices=None):
    """A host pytree -> a copy on each local device, with pmap's output layout."""
    devices = list(devices or jax.local_devices())
    sharding = jax.NamedSharding(mesh(devices), jax.P(AXIS))
    return jax.tree.map(
        lambda x: jax.device_put(np.stack([np.asarray(x)] * len(devices)), sharding), tree)


def per_device(values, devices=None):
    """One value per local device (a host array whose leading axis is the local devices), laid out
    like a pmapped output."""
    return jax.device_put(np.asarray(values), jax.NamedSharding(mesh(devices), jax.P(AXIS)))


def unreplicate(tree):
    """The first device's copy of a pmapped (or replicated) pytree, fetched to host numpy."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)


def local_array(x) -> np.ndarray:
    """A pmapped output -> this process's devices' values as one numpy array (leading axis: the
    local devices in order). With several processes the whole array is not addressable here."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start)
    return np.concatenate([np.asarray(s.data) for s in shards])


def host_sums(sums) -> dict:
    """Replicated on-device sums -> plain Python numbers."""
    return {k: v.item() for k, v in unreplicate(sums).items()}
