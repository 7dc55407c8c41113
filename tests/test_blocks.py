"""The building blocks keep or change height, width and channels exactly as their papers say."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from flaxcnn.models.googlenet import Inception
from flaxcnn.models.nin import nin_block
from flaxcnn.models.resnet import Bottleneck, Residual
from flaxcnn.models.vgg import vgg_block

# what a network hands its blocks as `norm` in evaluation mode
EVAL_NORM = functools.partial(nn.BatchNorm, use_running_average=True)


def output_and_variables(block, shape, **call_kwargs):
    """Output shape and variable shapes of `block` on an input of `shape`, without computing anything."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32)

    def init_and_apply(x):
        variables = block.init(jax.random.key(0), x, **call_kwargs)
        return block.apply(variables, x, **call_kwargs), variables

    out, variables = jax.eval_shape(init_and_apply, x)
    return out.shape, variables


@pytest.mark.parametrize("size, halved", [(8, 4), (9, 4)])
def test_vgg_block_halves_height_and_width_and_sets_channels(size, halved):
    shape, variables = output_and_variables(vgg_block(3, 16), (2, size, size + 2, 5))
    assert shape == (2, halved, (size + 2) // 2, 16)
    assert [layer["kernel"].shape for layer in variables["params"].values()] == [
        (3, 3, 5, 16), (3, 3, 16, 16), (3, 3, 16, 16)]


def test_nin_block_keeps_the_size_its_first_convolution_implies():
    # (15 + 2*1 - 5) // 2 + 1 = 7
    shape, variables = output_and_variables(nin_block(32, 5, 2, 1), (2, 15, 15, 3))
    assert shape == (2, 7, 7, 32)
    assert [layer["kernel"].shape for layer in variables["params"].values()] == [
        (5, 5, 3, 32), (1, 1, 32, 32), (1, 1, 32, 32)]
    assert output_and_variables(nin_block(8, 3, 1, 1), (2, 15, 11, 3))[0] == (2, 15, 11, 8)
    assert output_and_variables(nin_block(8, 11, 4, 0), (2, 224, 224, 1))[0] == (2, 54, 54, 8)


def test_inception_keeps_height_and_width_and_concatenates_its_paths():
    shape, variables = output_and_variables(Inception(4, (3, 5), (2, 6), 7), (2, 9, 7, 3))
    assert shape == (2, 9, 7, 4 + 5 + 6 + 7)
    assert len(variables["params"]) == 6  # 1 + 2 + 2 + 1 convolutions


def test_residual_keeps_the_shape_at_stride_1():
    shape, variables = output_and_variables(Residual(8, EVAL_NORM), (2, 9, 9, 8))
    assert shape == (2, 9, 9, 8)
    assert sorted(variables["params"]) == ["BatchNorm_0", "BatchNorm_1", "Conv_0", "Conv_1"]


@pytest.mark.parametrize("size, halved", [(8, 4), (9, 5)])
def test_residual_with_projection_halves_height_and_width_at_stride_2(size, halved):
    block = Residual(16, EVAL_NORM, use_1x1conv=True, strides=2)
    shape, variables = output_and_variables(block, (2, size, size, 8))
    assert shape == (2, halved, halved, 16)
    # d2l: a biased 1x1 convolution on the shortcut, without BatchNorm
    assert sorted(variables["params"]) == ["BatchNorm_0", "BatchNorm_1", "Conv_0", "Conv_1", "Conv_2"]
    assert variables["params"]["Conv_2"]["kernel"].shape == (1, 1, 8, 16)
    assert variables["params"]["Conv_2"]["bias"].shape == (16,)


def test_bottleneck_keeps_the_shape_at_stride_1_with_an_identity_shortcut():
    shape, variables = output_and_variables(Bottleneck(4, EVAL_NORM), (2, 9, 9, 16))
    assert shape == (2, 9, 9, 16)
    assert len(variables["params"]) == 6  # three bias-free convolutions, three BatchNorms
    assert all("bias" not in variables["params"][f"Conv_{i}"] for i in range(3))


@pytest.mark.parametrize("size, halved", [(8, 4), (9, 5)])
def test_bottleneck_with_projection_halves_height_and_width_at_stride_2(size, halved):
    shape, variables = output_and_variables(Bottleneck(8, EVAL_NORM, strides=2), (2, size, size, 16))
    assert shape == (2, halved, halved, 32)
    params = variables["params"]
    assert len(params) == 8  # the projection adds a bias-free 1x1 convolution and a BatchNorm
    assert params["Conv_1"]["kernel"].shape == (3, 3, 8, 8)  # the stride sits on the 3x3
    assert params["Conv_3"]["kernel"].shape == (1, 1, 16, 32)


def test_bottleneck_projects_when_only_the_channels_change():
    shape, variables = output_and_variables(Bottleneck(4, EVAL_NORM), (2, 8, 8, 8))
    assert shape == (2, 8, 8, 16)
    assert variables["params"]["Conv_3"]["kernel"].shape == (1, 1, 8, 16)


def test_blocks_build_their_batch_norms_from_the_norm_field():
    """The same block with the from-scratch BatchNorm as its `norm` has the same variables."""
    from flaxcnn.models.batchnorm import BatchNorm

    scratch = functools.partial(BatchNorm, use_running_average=True)
    for block, scratch_block, shape in [
        (Residual(8, EVAL_NORM), Residual(8, scratch), (2, 9, 9, 8)),
        (Bottleneck(8, EVAL_NORM, strides=2), Bottleneck(8, scratch, strides=2), (2, 8, 8, 16)),
    ]:
        flax_shape, flax_variables = output_and_variables(block, shape)
        scratch_shape, scratch_variables = output_and_variables(scratch_block, shape)
        assert flax_shape == scratch_shape
        assert jax.tree_util.tree_map(lambda a: a.shape, flax_variables) == jax.tree_util.tree_map(
            lambda a: a.shape, scratch_variables)
