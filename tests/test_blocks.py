"""The building blocks keep or change height, width and channels exactly as their papers say."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from flaxcnn.models.densenet import DenseBlock, TransitionBlock
from flaxcnn.models.googlenet import Inception
from flaxcnn.models.inception import InceptionA, InceptionAux, InceptionB, InceptionC, InceptionD, InceptionE
from flaxcnn.models.nin import nin_block
from flaxcnn.models.resnet import BasicBlock, Bottleneck, ResNet, ResNeXtBlock, Residual
from flaxcnn.models.vgg import vgg_block
from flaxcnn.summary import param_count

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


def test_torchvisions_basic_block_keeps_the_shape_with_an_identity_shortcut():
    shape, variables = output_and_variables(BasicBlock(8, EVAL_NORM), (2, 9, 9, 8))
    assert shape == (2, 9, 9, 8)
    assert sorted(variables["params"]) == ["BatchNorm_0", "BatchNorm_1", "Conv_0", "Conv_1"]
    assert all("bias" not in variables["params"][f"Conv_{i}"] for i in range(2))


def test_torchvisions_basic_block_projects_with_batch_norm_at_stride_2():
    shape, variables = output_and_variables(BasicBlock(16, EVAL_NORM, strides=2), (2, 9, 9, 8))
    assert shape == (2, 5, 5, 16)
    params = variables["params"]
    # unlike d2l's Residual: a bias-free 1x1 convolution and a BatchNorm on the shortcut
    assert sorted(params) == ["BatchNorm_0", "BatchNorm_1", "BatchNorm_2", "Conv_0", "Conv_1", "Conv_2"]
    assert params["Conv_2"]["kernel"].shape == (1, 1, 8, 16) and "bias" not in params["Conv_2"]
    assert params["Conv_0"]["kernel"].shape == (3, 3, 8, 16)  # the stride sits on the first 3x3


def test_resnet_refuses_an_unknown_block_naming_the_known_ones():
    with pytest.raises(ValueError, match="unknown ResNet block 'wide'; use one of residual, basic, bottleneck"):
        ResNet(block="wide").init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)), train=False)


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


# --- DenseNet -------------------------------------------------------------------------

def test_dense_block_adds_growth_rate_channels_per_convolution():
    shape, variables = output_and_variables(DenseBlock(2, 10, EVAL_NORM), (4, 8, 8, 3))
    assert shape == (4, 8, 8, 3 + 2 * 10)
    params = variables["params"]
    # d2l's conv_block: BatchNorm and ReLU before a biased 3x3 convolution, which sees all channels so far
    assert params["Conv_0"]["kernel"].shape == (3, 3, 3, 10)
    assert params["Conv_1"]["kernel"].shape == (3, 3, 13, 10)
    assert params["Conv_1"]["bias"].shape == (10,)
    assert params["BatchNorm_0"]["scale"].shape == (3,) and params["BatchNorm_1"]["scale"].shape == (13,)


@pytest.mark.parametrize("size, halved", [(8, 4), (9, 4)])
def test_transition_block_sets_channels_and_halves_height_and_width(size, halved):
    shape, variables = output_and_variables(TransitionBlock(10, EVAL_NORM), (4, size, size, 23))
    assert shape == (4, halved, halved, 10)
    assert variables["params"]["Conv_0"]["kernel"].shape == (1, 1, 23, 10)
    assert variables["params"]["BatchNorm_0"]["scale"].shape == (23,)


# --- ResNeXt -----------------------------------------------------------------------------

def test_resnext_block_without_shortcut_keeps_the_shape():
    shape, variables = output_and_variables(ResNeXtBlock(64, 16, 1, EVAL_NORM), (4, 12, 12, 64))
    assert shape == (4, 12, 12, 64)
    assert param_count(variables["params"]) == 17_984  # d2l's PyTorch ResNeXtBlock(64, 16, 1)
    # `groups` is the group WIDTH: 64 bottleneck channels in 64 // 16 = 4 groups of 16
    assert variables["params"]["Conv_1"]["kernel"].shape == (3, 3, 16, 64)
    assert sorted(variables["params"]) == ["BatchNorm_0", "BatchNorm_1", "BatchNorm_2", "Conv_0", "Conv_1", "Conv_2"]


def test_resnext_block_with_shortcut_halves_height_and_width_at_stride_2():
    block = ResNeXtBlock(32, 16, 1, EVAL_NORM, use_1x1conv=True, strides=2)
    shape, variables = output_and_variables(block, (4, 96, 96, 64))
    assert shape == (4, 48, 48, 32)
    assert param_count(variables["params"]) == 10_112  # d2l's ResNeXtBlock(32, 16, 1, True, 2)
    params = variables["params"]
    assert params["Conv_1"]["kernel"].shape == (3, 3, 16, 32)  # 2 groups of 16
    assert params["Conv_3"]["kernel"].shape == (1, 1, 64, 32) and params["BatchNorm_3"]["scale"].shape == (32,)


def test_resnext_block_bottleneck_multiplier():
    _, variables = output_and_variables(ResNeXtBlock(32, 8, 0.5, EVAL_NORM), (2, 4, 4, 32))
    params = variables["params"]
    assert params["Conv_0"]["kernel"].shape == (1, 1, 32, 16)  # round(32 * 0.5) bottleneck channels
    assert params["Conv_1"]["kernel"].shape == (3, 3, 8, 16)  # in 16 // 8 = 2 groups
    assert params["Conv_2"]["kernel"].shape == (1, 1, 16, 32)


def test_grouped_bottleneck_has_cardinality_groups():
    # torchvision's ResNeXt 32x4d bottleneck for planes=64: width 64 * 4 / 64 * 32 = 128, 32 groups of 4
    shape, variables = output_and_variables(Bottleneck(64, EVAL_NORM, cardinality=32, base_width=4), (2, 8, 8, 64))
    assert shape == (2, 8, 8, 256)
    params = variables["params"]
    assert params["Conv_0"]["kernel"].shape == (1, 1, 64, 128)
    assert params["Conv_1"]["kernel"].shape == (3, 3, 4, 128)
    assert params["Conv_2"]["kernel"].shape == (1, 1, 128, 256)


# --- Inception-v3 ------------------------------------------------------------------------

@pytest.mark.parametrize("block, in_channels, size, out", [
    (InceptionA(32, EVAL_NORM), 192, 35, (35, 64 + 64 + 96 + 32)),
    (InceptionA(64, EVAL_NORM), 256, 35, (35, 64 + 64 + 96 + 64)),
    (InceptionB(EVAL_NORM), 288, 35, (17, 768)),
    (InceptionC(128, EVAL_NORM), 768, 17, (17, 768)),
    (InceptionD(EVAL_NORM), 768, 17, (8, 1280)),
    (InceptionE(EVAL_NORM), 1280, 8, (8, 2048)),
    (InceptionE(EVAL_NORM), 2048, 8, (8, 2048)),
])
def test_inception_v3_modules_output_channels(block, in_channels, size, out):
    shape, variables = output_and_variables(block, (2, size, size, in_channels))
    out_size, out_channels = out
    assert shape == (2, out_size, out_size, out_channels)
    # every convolution is torchvision's BasicConv2d: bias-free, with BatchNorm
    convs = [path for path, _ in jax.tree_util.tree_leaves_with_path(variables["params"]) if path[-1].key == "kernel"]
    assert convs and all("bias" not in variables["params"][path[0].key]["Conv_0"] for path in convs)
    assert len(jax.tree_util.tree_leaves(variables["batch_stats"])) == 2 * len(convs)


def test_inception_c_factorizes_7x7_into_1x7_and_7x1():
    _, variables = output_and_variables(InceptionC(160, EVAL_NORM), (2, 17, 17, 768))
    params = variables["params"]
    assert params["branch7x7_2"]["Conv_0"]["kernel"].shape == (1, 7, 160, 160)
    assert params["branch7x7_3"]["Conv_0"]["kernel"].shape == (7, 1, 160, 192)


def test_inception_aux_maps_a_17x17_grid_to_logits():
    shape, variables = output_and_variables(InceptionAux(10, EVAL_NORM), (2, 17, 17, 768))
    assert shape == (2, 10)
    assert param_count(variables["params"]) == 768 * 128 + 2 * 128 + 5 * 5 * 128 * 768 + 2 * 768 + 768 * 10 + 10


def test_blocks_build_with_d2ls_names_and_arguments_alone():
    """As the book builds them, without a network's norm: BatchNorm in training mode, its
    statistics updated by apply(..., mutable=["batch_stats"])."""
    from flaxcnn.models.densenet import transition_block

    for block, channels, shape in [(Residual(3), 3, (4, 6, 6, 3)),
                                   (Residual(6, use_1x1conv=True, strides=2), 3, (4, 3, 3, 6)),
                                   (ResNeXtBlock(32, 16, 1), 32, (4, 6, 6, 32)),
                                   (DenseBlock(2, 10), 3, (4, 6, 6, 23)),
                                   (transition_block(10), 3, (4, 3, 3, 10))]:
        def init_and_apply(x, block=block):
            variables = block.init(jax.random.key(0), x)
            return block.apply(variables, x, mutable=["batch_stats"])[0]

        x = jax.ShapeDtypeStruct((4, 6, 6, channels), jnp.float32)
        assert jax.eval_shape(init_and_apply, x).shape == shape, block
    # one of them run for real: every statistic moves, as BatchNorm's do in training mode
    block, x = DenseBlock(2, 10), jax.random.normal(jax.random.key(1), (4, 6, 6, 3))
    variables = jax.jit(block.init)(jax.random.key(0), x)
    _, updates = jax.jit(functools.partial(block.apply, mutable=["batch_stats"]))(variables, x + 1)
    moved = jax.tree_util.tree_map(lambda new, old: bool(jnp.any(new != old)),
                                   updates["batch_stats"], variables["batch_stats"])
    assert len(jax.tree_util.tree_leaves(moved)) == 4 and all(jax.tree_util.tree_leaves(moved))  # 2 BNs
    with pytest.raises(TypeError):
        Residual()
