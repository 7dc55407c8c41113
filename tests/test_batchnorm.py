"""Batch normalization from scratch: statistics over the right axes, moving averages, evaluation
mode, and agreement with flax.linen.BatchNorm, also across pmap replicas."""
import functools
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flaxcnn import training
from flaxcnn.models.batchnorm import BatchNorm, batch_norm
from tests import conftest

EPS = 1e-5
CHANNEL_MEANS = np.array([5.0, -3.0, 10.0], np.float32)
CHANNEL_SCALES = np.array([0.5, 2.0, 4.0], np.float32)


def channel_data(shape, seed=0):
    """Normal data whose channels (last axis) have very different means and scales."""
    noise = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return noise * CHANNEL_SCALES + CHANNEL_MEANS


def reference(x, gamma, beta, axes):
    mean, var = x.mean(axes), x.var(axes)
    return (x - mean) / np.sqrt(var + EPS) * gamma + beta, mean, var


def normalize(x, moving_mean=None, moving_var=None, train=True, gamma=None, beta=None, **kwargs):
    channels = x.shape[-1]
    return batch_norm(
        jnp.asarray(x),
        jnp.ones(channels) if gamma is None else gamma,
        jnp.zeros(channels) if beta is None else beta,
        jnp.zeros(channels) if moving_mean is None else moving_mean,
        jnp.ones(channels) if moving_var is None else moving_var,
        eps=EPS, momentum=0.9, train=train, **kwargs,
    )


@pytest.mark.parametrize("shape, axes", [((8, 6, 5, 3), (0, 1, 2)), ((64, 3), (0,))])
def test_training_standardises_each_channel(shape, axes):
    x = channel_data(shape)
    y = np.asarray(normalize(x)[0])
    np.testing.assert_allclose(y.mean(axes), 0, atol=1e-5)
    np.testing.assert_allclose(y.var(axes), 1, atol=1e-3)
    # the channels' means differ, so statistics that mixed channels (d2l's JAX version averages
    # N, W and C of NHWC inputs) would leave per-channel means far from 0; statistics per pixel
    # would also give mean 0 and variance 1, but not the reference's values
    np.testing.assert_allclose(y, reference(x, 1.0, 0.0, axes)[0], atol=1e-4)


@pytest.mark.parametrize("shape, axes", [((8, 6, 5, 3), (0, 1, 2)), ((64, 3), (0,))])
def test_training_scales_shifts_and_updates_moving_statistics(shape, axes):
    x = channel_data(shape, seed=1)
    gamma, beta = np.array([2.0, 0.5, -1.0], np.float32), np.array([0.3, -0.2, 1.0], np.float32)
    moving_mean, moving_var = np.array([0.1, 0.2, 0.3], np.float32), np.array([1.5, 0.5, 2.0], np.float32)
    y, new_mean, new_var = normalize(x, moving_mean, moving_var, gamma=gamma, beta=beta)
    expected_y, batch_mean, batch_var = reference(x, gamma, beta, axes)  # biased variance
    np.testing.assert_allclose(y, expected_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(new_mean, 0.9 * moving_mean + 0.1 * batch_mean, rtol=1e-5)
    np.testing.assert_allclose(new_var, 0.9 * moving_var + 0.1 * batch_var, rtol=1e-5)


@pytest.mark.parametrize("shape", [(8, 6, 5, 3), (64, 3)])
def test_evaluation_uses_and_keeps_the_moving_statistics(shape):
    x = channel_data(shape, seed=2)
    gamma, beta = np.array([2.0, 0.5, -1.0], np.float32), np.array([0.3, -0.2, 1.0], np.float32)
    moving_mean, moving_var = np.array([4.0, -2.0, 9.0], np.float32), np.array([0.3, 3.0, 15.0], np.float32)
    y, new_mean, new_var = normalize(x, moving_mean, moving_var, train=False, gamma=gamma, beta=beta)
    np.testing.assert_allclose(y, (x - moving_mean) / np.sqrt(moving_var + EPS) * gamma + beta, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(new_mean, moving_mean)
    np.testing.assert_array_equal(new_var, moving_var)


def test_statistics_are_float32_for_bfloat16_inputs():
    x = channel_data((16, 4, 4, 3), seed=3)
    low = jnp.asarray(x, jnp.bfloat16)
    y, new_mean, new_var = normalize(low)
    assert new_mean.dtype == new_var.dtype == jnp.float32
    exact = np.asarray(low, np.float32)
    np.testing.assert_allclose(new_mean, 0.1 * exact.mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(new_var, 0.9 + 0.1 * exact.var((0, 1, 2)), rtol=1e-5)


def test_other_ranks_are_refused():
    with pytest.raises(ValueError, match=r"\(N, C\) or \(N, H, W, C\)"):
        normalize(np.zeros((4, 5, 3), np.float32))


# --- the module against flax.linen.BatchNorm -------------------------------------------

MOMENTUM, MODULE_EPS = 0.8, 1e-3


def scratch_and_flax(axis_name=None):
    scratch = BatchNorm(momentum=MOMENTUM, epsilon=MODULE_EPS, axis_name=axis_name)
    flax_bn = nn.BatchNorm(momentum=MOMENTUM, epsilon=MODULE_EPS, axis_name=axis_name)
    return (lambda variables, x, train: scratch.apply(variables, x, use_running_average=not train,
                                                      mutable=["batch_stats"]),
            lambda variables, x, train: flax_bn.apply(variables, x, use_running_average=not train,
                                                      mutable=["batch_stats"]))


def trained_variables(shape):
    """Variables as both modules initialise them, with non-trivial scale and bias."""
    x = jnp.asarray(channel_data(shape))
    variables = BatchNorm().init(jax.random.key(0), x, use_running_average=True)
    flax_variables = nn.BatchNorm(use_running_average=True).init(jax.random.key(0), x)
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(flax_variables)
    return {"params": {"scale": jnp.array([2.0, 0.5, -1.0]), "bias": jnp.array([0.3, -0.2, 1.0])},
            "batch_stats": variables["batch_stats"]}


@pytest.mark.parametrize("shape", [(8, 6, 5, 3), (64, 3)])
def test_module_matches_flax_batch_norm(shape):
    scratch, flax_bn = scratch_and_flax()
    variables = trained_variables(shape)
    ours, theirs = variables, variables
    for step in range(2):
        x = jnp.asarray(channel_data(shape, seed=10 + step))
        y, ours_state = scratch(ours, x, True)
        expected_y, theirs_state = flax_bn(theirs, x, True)
        np.testing.assert_allclose(y, expected_y, rtol=1e-5, atol=1e-5)
        ours = {**ours, **ours_state}
        theirs = {**theirs, **theirs_state}
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, theirs)
    x = jnp.asarray(channel_data(shape, seed=20))
    y, ours_state = scratch(ours, x, False)
    expected_y, _ = flax_bn(theirs, x, False)
    np.testing.assert_allclose(y, expected_y, rtol=1e-5, atol=1e-5)
    jax.tree_util.tree_map(np.testing.assert_array_equal, ours_state, {"batch_stats": ours["batch_stats"]})


def test_cross_replica_statistics_are_those_of_the_global_batch():
    assert jax.local_device_count() == 4, "conftest.py should give four CPU devices"
    shape = (4, 3, 5, 5, 3)  # replicas, per-replica batch, H, W, C
    offsets = np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1, 1) * 3.0  # replicas see different data
    x = jnp.asarray(channel_data(shape) + offsets)
    variables = trained_variables(shape[1:])
    scratch, flax_bn = scratch_and_flax(axis_name="replicas")
    replicated = jax.pmap(scratch, axis_name="replicas", in_axes=(None, 0, None), static_broadcasted_argnums=2)
    y, state = replicated(variables, x, True)

    single_device, _ = scratch_and_flax()
    global_y, global_state = single_device(variables, x.reshape(-1, *shape[2:]), True)
    np.testing.assert_allclose(np.asarray(y).reshape(global_y.shape), global_y, rtol=1e-4, atol=1e-4)
    for replica in range(4):
        replica_state = jax.tree_util.tree_map(lambda a: a[replica], state)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), replica_state, global_state)

    flax_replicated = jax.pmap(flax_bn, axis_name="replicas", in_axes=(None, 0, None), static_broadcasted_argnums=2)
    flax_y, flax_state = flax_replicated(variables, x, True)
    np.testing.assert_allclose(y, flax_y, rtol=1e-4, atol=1e-4)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), state, flax_state)


def test_use_running_average_is_a_field_or_an_argument_as_in_flax():
    """The network's partial of either BatchNorm is called the same way: `norm()(x)`."""
    x = jnp.asarray(channel_data((8, 6, 5, 3), seed=30))
    variables = trained_variables((8, 6, 5, 3))
    for train in (True, False):
        expected = BatchNorm().apply(variables, x, use_running_average=not train, mutable=["batch_stats"])
        for module_class in (BatchNorm, nn.BatchNorm):
            norm = functools.partial(module_class, use_running_average=not train, momentum=0.9)
            y, state = norm().apply(variables, x, mutable=["batch_stats"])
            np.testing.assert_allclose(y, expected[0], rtol=1e-5, atol=1e-5)
            jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), state, expected[1])
    with pytest.raises(ValueError, match="use_running_average"):
        BatchNorm(use_running_average=True).apply(variables, x, use_running_average=True)
    with pytest.raises(ValueError, match="use_running_average"):
        BatchNorm().apply(variables, x)


# --- torch's running statistics after training steps (tests/fixtures/make_batchnorm_references.py)

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from pretrained_tensors import reference_tensor  # noqa: E402

# d2l's LeNet-BN nn.Sequential positions -> flax's module names
TORCH_LAYERS = {"0": "Conv_0", "1": "BatchNorm_0", "4": "Conv_1", "5": "BatchNorm_1",
                "9": "Dense_0", "10": "BatchNorm_2", "12": "Dense_1", "13": "BatchNorm_3",
                "15": "Dense_2"}


def flax_layout(module: str, kind: str, weight: np.ndarray) -> np.ndarray:
    """A torch tensor of d2l's LeNet-BN in flax's layout (NCHW flattening -> NHWC for Dense_0)."""
    if kind != "kernel":
        return weight
    if module.startswith("Conv"):
        return weight.transpose(2, 3, 1, 0)
    if module == "Dense_0":  # torch flattens (16, 4, 4) feature maps channel-first
        return weight.reshape(-1, 16, 4, 4).transpose(2, 3, 1, 0).reshape(256, -1)
    return weight.T


def reference_params(params) -> dict:
    """The fixture's weights (pretrained_tensors.reference_tensor of torch's names) as `params`."""
    out = {}
    for position, module in TORCH_LAYERS.items():
        out[module] = {}
        for kind, value in params[module].items():
            shape = value.shape  # torch's: (out, in, kh, kw) and (out, in) for kernels
            if kind == "kernel":
                shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
            weight = reference_tensor(f"{position}.{'bias' if kind == 'bias' else 'weight'}", shape)
            out[module][kind] = flax_layout(module, kind, weight)
    return out


def reference_batches():
    """The fixture's 21 images and labels in batches of 8, the last padded and masked."""
    images = np.random.default_rng(1).integers(0, 256, (21, 28, 28), np.uint8)[..., None]
    labels = np.random.default_rng(2).integers(0, 10, 21).astype(np.int32)
    batches = []
    for start in range(0, 21, 8):
        real = min(8, 21 - start)
        pad = ((0, 8 - real),)
        batches.append((np.pad(images[start:start + 8], pad + ((0, 0),) * 3),
                        np.pad(labels[start:start + 8], pad), np.arange(8) < real))
    return batches


@pytest.mark.parametrize("model, reference, num_devices", [
    ("lenet_bn", "concise", 1), ("lenet_bn", "concise", 4), ("lenet_bn_scratch", "scratch", 4)])
def test_running_statistics_follow_the_reference_after_several_steps(model, reference,
                                                                     num_devices):
    """Three SGD steps of d2l's LeNet-BN in float64, the last of 5 examples padded to 8 (on 4
    devices: 2, 2, 1 and 0 real examples): torch's nn.BatchNorm updates the running variance with
    the unbiased batch variance, d2l's from-scratch batch_norm with the biased one; the losses,
    counts and final parameters are torch's too."""
    want = np.load(FIXTURES / "batchnorm_references.npz")
    with jax.enable_x64(True):
        state = training.create_train_state(model, optax.sgd(0.5), input_shape=(28, 28, 1),
                                            dtype=jnp.float64)
        state = state.replace(params=reference_params(state.params))
        steps = conftest.float64_steps(state, reference_batches(), num_devices)
    for step, (train, totals) in enumerate(steps):
        assert totals["count"] == (8 if step < 2 else 5)
        assert totals["correct"] == want[f"{reference}/{step}/correct"]
        np.testing.assert_allclose(totals["loss_sum"] / totals["count"],
                                   want[f"{reference}/{step}/loss"], rtol=1e-9)
        for layer, stats in train.batch_stats.items():
            for name in ("mean", "var"):
                np.testing.assert_allclose(stats[name], want[f"{reference}/{step}/{layer}/{name}"],
                                           rtol=1e-9, atol=1e-12, err_msg=f"{step} {layer} {name}")
    params = steps[-1][0].params
    for position, module in TORCH_LAYERS.items():
        for kind, value in params[module].items():
            torch_kind = "bias" if kind == "bias" else "weight"
            total, total_of_squares = want[f"{reference}/final/{position}.{torch_kind}"]
            np.testing.assert_allclose([value.sum(), np.square(value).sum()],
                                       [total, total_of_squares], rtol=1e-9, atol=1e-12)


def test_the_conventions_differ_where_the_references_do():
    """The fixture's concise and from-scratch statistics differ (by n/(n-1)), so the test above
    tells the two conventions apart."""
    want = np.load(FIXTURES / "batchnorm_references.npz")
    concise, scratch = want["concise/2/BatchNorm_2/var"], want["scratch/2/BatchNorm_2/var"]
    assert np.max(np.abs(concise - scratch) / scratch) > 1e-3
