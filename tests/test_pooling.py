"""flaxcnn.models.pooling.max_pool: nn.max_pool's outputs and JAX's own gradients, computed
without select_and_scatter_add on the CPU, for every pooling the models use."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxcnn.models.pooling import max_pool

# (window, strides, padding) of every max-pooling in flaxcnn.models, on inputs of odd and even sizes
ZOO_POOLINGS = {
    "alexnet, nin, inception (3x3/2)": ((3, 3), (2, 2), "VALID"),
    "vgg (2x2/2)": ((2, 2), (2, 2), "VALID"),
    "googlenet's inception path (3x3/1, pad 1)": ((3, 3), (1, 1), ((1, 1), (1, 1))),
    "resnet and googlenet stems (3x3/2, pad 1)": ((3, 3), (2, 2), ((1, 1), (1, 1))),
}
SHAPES = [(3, 13, 10, 3)]  # odd and even: VALID windows leave a row, not a column


def lax_gradient(x, g, window, strides, padding):
    """JAX's gradient of nn.max_pool (select_and_scatter_add), the reference."""
    return jax.vjp(lambda x: nn.max_pool(x, window, strides, padding), x)[1](g)[0]


def routed_gradient(x, g, window, strides, padding):
    return jax.vjp(lambda x: max_pool(x, window, strides, padding), x)[1](g)[0]


def tied_input(shape, seed, dtype=np.float32):
    """Few distinct values, so most windows hold their maximum more than once (as after a ReLU)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 3, shape).astype(dtype)


@pytest.mark.parametrize("pooling", ZOO_POOLINGS.values(), ids=ZOO_POOLINGS.keys())
@pytest.mark.parametrize("shape", SHAPES)
def test_the_output_is_nn_max_pools(pooling, shape):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    np.testing.assert_array_equal(jax.jit(lambda x: max_pool(x, *pooling))(x),
                                  nn.max_pool(x, *pooling))


@pytest.mark.parametrize("pooling", ZOO_POOLINGS.values(), ids=ZOO_POOLINGS.keys())
@pytest.mark.parametrize("shape", SHAPES)
def test_ties_go_to_the_first_maximum_as_in_jax(pooling, shape):
    """Whole-number gradients add up exactly in any order, so a maximum chosen differently from
    select_and_scatter_add's (the first in row-major window order) would show as a difference."""
    x = tied_input(shape, seed=1)
    y = nn.max_pool(x, *pooling)
    g = np.random.default_rng(2).integers(1, 9, y.shape).astype(np.float32)
    routed = jax.jit(routed_gradient, static_argnums=(2, 3, 4))(x, g, *pooling)
    np.testing.assert_array_equal(routed, lax_gradient(x, g, *pooling))


@pytest.mark.parametrize("pooling", ZOO_POOLINGS.values(), ids=ZOO_POOLINGS.keys())
def test_gradients_match_jax_within_float32_round_off_and_in_float64(pooling):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 15, 15, 4)).astype(np.float32)
    g = rng.normal(size=nn.max_pool(x, *pooling).shape).astype(np.float32)
    np.testing.assert_allclose(routed_gradient(x, g, *pooling), lax_gradient(x, g, *pooling),
                               rtol=1e-6, atol=1e-6)
    with jax.enable_x64(True):
        x64, g64 = x.astype(np.float64), g.astype(np.float64)
        routed, reference = routed_gradient(x64, g64, *pooling), lax_gradient(x64, g64, *pooling)
        assert routed.dtype == jnp.float64
        np.testing.assert_allclose(routed, reference, rtol=1e-14, atol=1e-14)


def test_bfloat16_gradients_match_jax():
    pooling = ZOO_POOLINGS["resnet and googlenet stems (3x3/2, pad 1)"]
    x = jnp.asarray(tied_input((2, 11, 11, 3), seed=4), jnp.bfloat16)
    g = jnp.ones(nn.max_pool(x, *pooling).shape, jnp.bfloat16)
    routed = routed_gradient(x, g, *pooling)
    assert routed.dtype == jnp.bfloat16
    np.testing.assert_array_equal(routed.astype(np.float32),
                                  lax_gradient(x, g, *pooling).astype(np.float32))


def test_the_cpu_gradient_does_not_use_select_and_scatter():
    assert jax.default_backend() == "cpu"
    x = jnp.zeros((2, 9, 9, 3))

    def loss(pool):
        return lambda x: pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))).sum()

    assert "select_and_scatter_add" in str(jax.make_jaxpr(jax.grad(loss(nn.max_pool)))(x))
    assert "select_and_scatter_add" not in str(jax.make_jaxpr(jax.grad(loss(max_pool)))(x))


def test_gradients_inside_a_pmapped_step_match_jax():
    x = tied_input((jax.local_device_count(), 2, 10, 10, 3), seed=5)

    def grads(pool):
        return jax.pmap(jax.grad(lambda x: (pool(x, (3, 3), (2, 2), "VALID") ** 2).sum()))(x)

    np.testing.assert_array_equal(grads(max_pool), grads(nn.max_pool))


@pytest.mark.parametrize("x_shape, window, strides", [
    ((9, 9, 3), (3, 3), (2, 2)),  # no batch axis
    ((2, 9, 9, 3), (3, 3, 3), (2, 2, 2)),
])
def test_other_than_nhwc_and_2d_windows_is_refused(x_shape, window, strides):
    with pytest.raises(ValueError, match="NHWC array and 2-D windows"):
        max_pool(jnp.zeros(x_shape), window, strides)


def test_a_window_holding_nan_pools_to_nan_under_differentiation_as_xlas_max():
    """The differentiated forward is a running maximum; a NaN must not be skipped by it, or a
    non-finite input would give a finite loss that the train step does not catch."""
    x = jnp.ones((1, 4, 4, 1)).at[0, 1, 2, 0].set(jnp.nan)
    pooled, vjp = jax.vjp(lambda x: max_pool(x, (2, 2), (2, 2)), x)
    np.testing.assert_array_equal(pooled, nn.max_pool(x, (2, 2), (2, 2)))
    assert np.isnan(pooled[0, 0, 1, 0])
    gradient = np.asarray(vjp(jnp.ones_like(pooled))[0])
    assert gradient[0, 1, 2, 0] == 1 and gradient.sum() == 4
