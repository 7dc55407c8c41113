"""The model zoo: registry, parameter counts, d2l's layer shapes, smallest inputs, train/eval behaviour, dtypes."""
import dataclasses
import functools
import importlib
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxcnn import models
from flaxcnn.models.batchnorm import BatchNorm as ScratchBatchNorm
from flaxcnn.models.init import xavier_uniform
from flaxcnn.models.resnet import ResNeXtBlock
from flaxcnn.models.vgg import vgg_block
from flaxcnn.summary import param_count
from tests.conftest import CHAPTER_CONFIGS, slow_for_larger_networks

KEY = jax.random.key(0)
# XLA:CPU compiles the random-number code of a real init slowly; these options make it quick
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

# trainable parameters with 1 input channel and 10 classes, at the input size d2l uses
PARAM_COUNTS = {
    "alexnet": (224, 46_764_746),
    "vgg11": (224, 128_806_154),
    "vgg13": (224, 128_990_666),
    "vgg16": (224, 134_300_362),
    "vgg19": (224, 139_610_058),
    "nin": (224, 1_992_166),
    "googlenet": (96, 5_977_530),
    "inception_v3": (299, 21_805_482),
    "lenet_bn": (28, 44_878),
    "lenet_bn_scratch": (28, 44_878),
    "resnet18": (96, 11_178_378),
    "resnet34": (96, 21_290_250),
    # torchvision's resnet18/34(num_classes=10) with a 1-channel conv1, counted with torch 2.13 /
    # torchvision 0.28 (tests/fixtures/make_pretrained_references.py's venv), 2026-12-01
    "tv_resnet18": (96, 11_175_370),
    "tv_resnet34": (96, 21_283_530),
    "resnet50": (96, 23_522_250),
    "resnext50": (224, 22_994_122),
    "densenet": (96, 758_226),
    "regnetx32": (96, 179_290),
}
MIN_INPUT_SIZES = {
    "alexnet": 65, "vgg11": 32, "vgg13": 32, "vgg16": 32, "vgg19": 32, "nin": 67, "googlenet": 1,
    "inception_v3": 75, "lenet_bn": 16, "lenet_bn_scratch": 16, "resnet18": 1, "resnet34": 1, "tv_resnet18": 1, "tv_resnet34": 1, "resnet50": 1,
    "resnext50": 1, "densenet": 29, "regnetx32": 1,
}
# BatchNorm statistics (mean and variance values) of the networks with BatchNorm; d2l's ResNets have
# no BatchNorm on the 1x1 shortcut, torchvision's (resnet50, resnext50) have
BATCH_STATS = {"lenet_bn": 452, "lenet_bn_scratch": 452, "resnet18": 7_808, "resnet34": 15_232,
               "tv_resnet18": 9_600, "tv_resnet34": 17_024,  # running_mean + running_var, torch as above
               "resnet50": 53_120, "resnext50": 68_224, "densenet": 6_608, "regnetx32": 3_936,
               "inception_v3": 34_432}
WITH_DROPOUT = {"alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "nin", "inception_v3"}
WITH_BATCH_NORM = {name for name in models.names() if models.spec(name).has_batch_norm}
# The tests that compute run one model per architecture, at its smallest input (which shows that it
# runs there): vgg13/16/19 and resnet34 differ from vgg11 and resnet18 only in their arch tuples,
# resnext50 from resnet50 in grouped 3x3 convolutions, which regnetx32 computes; the shape-only
# tests cover them.
COMPUTED = ["alexnet", "vgg11", "nin", "googlenet", "inception_v3", "lenet_bn", "lenet_bn_scratch", "resnet18",
            "resnet50", "densenet", "regnetx32"]


def images(size, seed):
    """Two random one-channel size x size images."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal((2, size, size, 1), np.float32))


def abstract_init(model, shape):
    """Variables' shapes and dtypes, without computing them."""
    image = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(lambda x: model.init(KEY, x, train=False), image)


def xavier_bound(kernel_shape):
    """Half-width of d2l's Xavier-uniform for a (..., in, out) kernel: sqrt(6 / (fan_in + fan_out)),
    the fans counting the receptive field (all but the last two axes), as PyTorch and flax do."""
    receptive_field = int(np.prod(kernel_shape[:-2]))
    return np.sqrt(6 / (receptive_field * (kernel_shape[-2] + kernel_shape[-1])))


def bias_bound(kernel_shape):
    """Half-width of PyTorch's default bias: 1 / sqrt(fan_in), fan_in = in_channels * kh * kw or in_features."""
    return 1 / np.sqrt(np.prod(kernel_shape[:-1]))


@functools.cache
def initialized(name, size):
    """Variables distributed as the model initialises them (d2l's Xavier-uniform kernels, PyTorch's
    uniform biases, unit BatchNorm scale and variance) but drawn by numpy: on CPU, XLA takes about
    a second per parameter tensor to compile model.init's random numbers."""
    rng = np.random.default_rng(0)
    abstract = abstract_init(models.create(name), (2, size, size, 1))

    def draw(path, leaf):
        kind = path[-1].key
        layer = functools.reduce(lambda tree, key: tree[key.key], path[:-1], abstract)
        if "kernel" in layer:  # a convolution or dense layer, not a BatchNorm
            bound = (xavier_bound if kind == "kernel" else bias_bound)(layer["kernel"].shape)
            return jnp.asarray(rng.uniform(-bound, bound, leaf.shape).astype(np.float32))
        return jnp.full(leaf.shape, 1.0 if kind in ("scale", "var") else 0.0, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract)


@functools.cache
def forward(name, train, dtype=jnp.float32):
    """The model's jitted (variables, images, dropout key) -> (logits, mutated variables)."""
    model = models.create(name, dtype=dtype)

    def apply(variables, x, dropout_key):
        rngs = {"dropout": dropout_key} if train else {}  # evaluation must need no rng
        return model.apply(variables, x, train=train, rngs=rngs, mutable=["batch_stats"])

    # XLA's CPU optimizations take longer to compile than these tiny forward passes take to run
    return jax.jit(apply, compiler_options={"xla_backend_optimization_level": 0})


class EmptyLayerInput(Exception):
    """A layer was handed an empty array."""


def traced_ops(model, shape):
    """(primitive, output shape and dtype) of every operation of an evaluation-mode forward pass, in order.
    Raises EmptyLayerInput if any submodule receives an empty array."""

    def refuse_empty(next_fun, args, kwargs, context):
        if any(hasattr(arg, "shape") and np.prod(arg.shape) == 0 for arg in args):
            raise EmptyLayerInput("/".join(context.module.path))
        return next_fun(*args, **kwargs)

    image = jax.ShapeDtypeStruct(shape, jnp.float32)
    with nn.intercept_methods(refuse_empty):
        variables = abstract_init(model, shape)
        jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, image).jaxpr

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            yield eqn
            for param in eqn.params.values():
                inner = getattr(param, "jaxpr", param)
                if hasattr(inner, "eqns"):
                    yield from walk(inner)

    return [(eqn.primitive.name, var.aval) for eqn in walk(jaxpr) for var in eqn.outvars]


def has_empty_layer(model, shape):
    try:
        ops = traced_ops(model, shape)
    except EmptyLayerInput:
        return True
    return any(aval.size == 0 for _, aval in ops)


def module_calls(model, shape):
    """{module path: (input shape, output shape)} of every submodule call of an evaluation-mode forward pass."""
    calls = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.path:
            calls["/".join(context.module.path)] = (args[0].shape, out.shape)
        return out

    with nn.intercept_methods(record):
        abstract_init(model, shape)
    return calls


# --- registry --------------------------------------------------------------------------

def test_names_are_the_chapters_models():
    assert models.names() == list(PARAM_COUNTS)
    assert list(MIN_INPUT_SIZES) == models.names()
    assert WITH_DROPOUT <= set(models.names()) and set(COMPUTED) <= set(models.names())


def test_chapter_models_are_those_d2l_trains_in_chapter_order():
    assert models.chapter_models() == ["alexnet", "vgg11", "nin", "googlenet", "inception_v3", "lenet_bn",
                                       "resnet18", "resnext50", "densenet", "regnetx32"]
    for name in models.names():
        spec = models.spec(name)
        assert (spec.d2l_image_size is not None) == (name in models.chapter_models())
        assert spec.d2l_image_size is not None or spec.d2l_overrides == {}
        assert spec.module is type(models.create(name))
        assert all(getattr(models.create(name), field) == value for field, value in spec.fields.items())
    assert models.spec("vgg11").d2l_overrides == {"width_divisor": 4}
    assert models.spec("resnet18").d2l_image_size == 96


def test_the_registry_says_whose_layout_each_model_has_and_names_its_head():
    torchvision = {"vgg11", "vgg13", "vgg16", "vgg19", "inception_v3", "tv_resnet18", "tv_resnet34", "resnet50",
                   "resnext50"}
    assert {name for name in models.names() if models.spec(name).layout == "torchvision"} == torchvision
    assert {models.spec(name).layout for name in models.names()} == {"d2l", "torchvision"}
    for name in models.names():  # the head is the layer whose outputs are the classes
        size = PARAM_COUNTS[name][0]
        params = abstract_init(models.create(name, num_classes=7, **({"aux_logits": True} if name == "inception_v3"
                                                                     else {})), (1, size, size, 1))["params"]
        for path in models.head_paths(name):
            layer = params
            for key in path.split("/"):
                layer = layer[key]
            assert all(leaf.shape[-1] == 7 for leaf in jax.tree.leaves(layer) if leaf.ndim) or name == "nin"


def test_spec_is_a_copy_and_knows_only_registered_names():
    models.spec("vgg11").d2l_overrides["width_divisor"] = 1
    assert models.spec("vgg11").d2l_overrides == {"width_divisor": 4}
    with pytest.raises(ValueError, match="unknown model 'resnet99'"):
        models.spec("resnet99")


def test_every_chapter_config_is_found():
    assert CHAPTER_CONFIGS == ["alexnet", "batchnorm", "densenet", "googlenet", "nin", "regnet",
                               "resnet", "vgg"]


@pytest.mark.parametrize("config_name", CHAPTER_CONFIGS)
def test_config_follows_the_registrys_d2l_setup(config_name):
    pytest.importorskip("ml_collections")
    config = importlib.import_module(f"configs.{config_name}").get_config()
    assert config.model in models.names()
    spec = models.spec(config.model)
    assert spec.d2l_image_size is not None, f"{config.model} has no d2l setup in the registry"
    assert config.image_size == spec.d2l_image_size
    assert config.model_overrides.to_dict() == spec.d2l_overrides


def test_unknown_name_lists_the_known_names():
    with pytest.raises(ValueError, match="unknown model 'resnet99'") as error:
        models.create("resnet99")
    assert all(name in str(error.value) for name in models.names())


def test_unknown_override_names_the_field_and_lists_the_valid_ones():
    with pytest.raises(ValueError, match="no field 'widht_divisor'") as error:
        models.create("vgg11", widht_divisor=4)
    message = str(error.value)
    assert "\n" not in message
    assert "valid fields: conv_arch, width_divisor, num_classes" in message


def test_overrides_and_num_classes_reach_the_model():
    model = models.create("vgg16", num_classes=7, width_divisor=4, dtype=jnp.bfloat16)
    assert (model.num_classes, model.width_divisor, model.dtype) == (7, 4, jnp.bfloat16)
    assert model.conv_arch == ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


@pytest.mark.parametrize("name", PARAM_COUNTS)
def test_the_registry_knows_which_models_have_batch_norm(name):
    spec = models.spec(name)
    fields = {field.name for field in dataclasses.fields(models.create(name))}
    assert (models.BATCH_NORM_AXIS_FIELD in fields) == spec.has_batch_norm
    size = MIN_INPUT_SIZES[name]
    assert bool(abstract_init(models.create(name), (1, size, size, 1)).get("batch_stats")) == spec.has_batch_norm


@pytest.mark.parametrize("name", PARAM_COUNTS)
def test_batch_norm_axis_changes_only_networks_with_batch_norm(name):
    model = models.create(name, batch_norm_axis="replicas")
    if name in WITH_BATCH_NORM:
        assert model != models.create(name)
        assert getattr(model, models.BATCH_NORM_AXIS_FIELD) == "replicas"
    else:
        assert model == models.create(name)


def test_the_batch_norm_axis_is_not_an_override():
    with pytest.raises(ValueError, match="batch_norm_axis="):
        models.create("resnet18", bn_axis_name="replicas")


def test_models_import_without_tensorflow_or_training_libraries():
    blocked = ["tensorflow", "tensorflow_datasets", "ml_collections", "clu"]
    code = (f"import sys\nfor name in {blocked}: sys.modules[name] = None\n"
            "import flaxcnn.models, flaxcnn.summary\n"
            f"assert not any(name in sys.modules and sys.modules[name] for name in {blocked})")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- sizes -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", PARAM_COUNTS)
def test_parameter_count(name):
    size, expected = PARAM_COUNTS[name]
    variables = abstract_init(models.create(name), (1, size, size, 1))
    assert param_count(variables["params"]) == expected
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))


@pytest.mark.parametrize("name", sorted(BATCH_STATS))
def test_batch_norm_statistics_count(name):
    size = PARAM_COUNTS[name][0]
    assert param_count(abstract_init(models.create(name), (1, size, size, 1))["batch_stats"]) == BATCH_STATS[name]


def test_resnet18_batch_stats_and_thin_vgg11():
    resnet18 = abstract_init(models.create("resnet18"), (1, 96, 96, 1))
    assert param_count(resnet18["batch_stats"]) == 7_808
    thin_vgg11 = abstract_init(models.create("vgg11", width_divisor=4), (1, 224, 224, 1))
    assert param_count(thin_vgg11) == 43_093_322


def test_lenet_bn_from_scratch_has_the_same_variables_as_with_flax_batch_norm():
    with_flax = abstract_init(models.create("lenet_bn"), (1, 28, 28, 1))
    from_scratch = abstract_init(models.create("lenet_bn_scratch"), (1, 28, 28, 1))
    assert jax.tree_util.tree_structure(with_flax) == jax.tree_util.tree_structure(from_scratch)
    assert jax.tree_util.tree_map(lambda a: a.shape, with_flax) == jax.tree_util.tree_map(
        lambda a: a.shape, from_scratch)


@pytest.mark.parametrize("name", PARAM_COUNTS)
@pytest.mark.parametrize("num_classes, channels", [(10, 1), (7, 3)])
def test_logits_shape(name, num_classes, channels):
    size = MIN_INPUT_SIZES[name]
    model = models.create(name, num_classes=num_classes)
    image = jax.ShapeDtypeStruct((2, size + 3, size, channels), jnp.float32)
    logits, _ = jax.eval_shape(lambda x: model.init_with_output(KEY, x, train=False), image)
    assert logits.shape == (2, num_classes)


def test_alexnet_layer_shapes_match_d2l():
    layers = [(op, aval.shape) for op, aval in traced_ops(models.create("alexnet"), (1, 224, 224, 1))
              if op in ("conv_general_dilated", "reduce_window_max", "dot_general")]
    assert layers == [
        ("conv_general_dilated", (1, 54, 54, 96)),
        ("reduce_window_max", (1, 26, 26, 96)),
        ("conv_general_dilated", (1, 26, 26, 256)),
        ("reduce_window_max", (1, 12, 12, 256)),
        ("conv_general_dilated", (1, 12, 12, 384)),
        ("conv_general_dilated", (1, 12, 12, 384)),
        ("conv_general_dilated", (1, 12, 12, 256)),
        ("reduce_window_max", (1, 5, 5, 256)),
        ("dot_general", (1, 4096)),
        ("dot_general", (1, 4096)),
        ("dot_general", (1, 10)),
    ]
    assert module_calls(models.create("alexnet"), (1, 224, 224, 1))["Dense_0"][0] == (1, 6400)


def test_googlenet_block_shapes_match_d2l():
    calls = module_calls(models.create("googlenet"), (1, 96, 96, 1))
    after_b1 = calls["Conv_1"][0]
    after_b2 = calls["Inception_0"][0]
    after_b3 = calls["Inception_2"][0]
    after_b4 = calls["Inception_7"][0]
    after_b5 = calls["Dense_0"][0]
    assert [after_b1, after_b2, after_b3, after_b4, after_b5] == [
        (1, 24, 24, 64), (1, 12, 12, 192), (1, 6, 6, 480), (1, 3, 3, 832), (1, 1024)]


def test_resnet18_stage_shapes_match_d2l():
    calls = module_calls(models.create("resnet18"), (1, 96, 96, 1))
    after_stem = calls["Residual_0"][0]
    after_stages = [calls[f"Residual_{i}"][1] for i in (1, 3, 5, 7)]
    assert after_stem == (1, 24, 24, 64)
    assert after_stages == [(1, 24, 24, 64), (1, 12, 12, 128), (1, 6, 6, 256), (1, 3, 3, 512)]
    assert calls["Dense_0"][0] == (1, 512)


def test_densenet_block_shapes_match_d2l():
    calls = module_calls(models.create("densenet"), (1, 96, 96, 1))
    assert calls["DenseBlock_0"] == ((1, 24, 24, 64), (1, 24, 24, 192))
    assert calls["TransitionBlock_0"] == ((1, 24, 24, 192), (1, 12, 12, 96))
    assert calls["TransitionBlock_1"][1] == (1, 6, 6, 112)
    assert calls["TransitionBlock_2"][1] == (1, 3, 3, 120)
    assert calls["DenseBlock_3"][1] == (1, 3, 3, 248)
    assert calls["Dense_0"][0] == (1, 248)


def test_regnetx32_stage_shapes_match_d2l():
    calls = module_calls(models.create("regnetx32"), (1, 96, 96, 1))
    assert calls["ResNeXtBlock_0"] == ((1, 48, 48, 32), (1, 24, 24, 32))
    assert calls["ResNeXtBlock_3"][1] == (1, 24, 24, 32)
    assert calls["ResNeXtBlock_4"][1] == (1, 12, 12, 80)
    assert calls["ResNeXtBlock_9"][1] == (1, 12, 12, 80)
    assert "ResNeXtBlock_10" not in calls
    assert calls["Dense_0"][0] == (1, 80)


def test_resnext50_has_torchvisions_grouped_3x3_convolutions():
    params = abstract_init(models.create("resnext50"), (1, 64, 64, 1))["params"]
    # torchvision's resnext50_32x4d: width = planes * 4 / 64 * 32 = 2 * planes, 32 groups on the 3x3
    for block, planes in [("Bottleneck_0", 64), ("Bottleneck_3", 128), ("Bottleneck_7", 256), ("Bottleneck_13", 512)]:
        assert params[block]["Conv_1"]["kernel"].shape == (3, 3, 2 * planes // 32, 2 * planes)
        assert params[block]["Conv_2"]["kernel"].shape == (1, 1, 2 * planes, 4 * planes)
    assert "Bottleneck_16" not in params


def test_inception_v3_grid_sizes_match_torchvision():
    calls = module_calls(models.create("inception_v3"), (1, 299, 299, 1))
    assert calls["Mixed_5b"][0] == (1, 35, 35, 192)
    assert [calls[f"Mixed_{block}"][1] for block in ("5b", "5c", "5d", "6a", "6e", "7a", "7b", "7c")] == [
        (1, 35, 35, 256), (1, 35, 35, 288), (1, 35, 35, 288), (1, 17, 17, 768), (1, 17, 17, 768),
        (1, 8, 8, 1280), (1, 8, 8, 2048), (1, 8, 8, 2048)]
    assert calls["fc"][0] == (1, 2048)


def test_inception_v3_aux_logits_adds_torchvisions_auxiliary_classifier():
    model = models.create("inception_v3", aux_logits=True)
    variables = abstract_init(model, (1, 299, 299, 1))
    assert param_count(variables["params"]) == 24_370_868
    assert param_count(variables["batch_stats"]) == 36_224
    assert sorted(variables["params"]["AuxLogits"]) == ["conv0", "conv1", "fc"]
    assert set(variables) == {"params", "batch_stats"}  # initialization sows nothing


def test_inception_v3_aux_logits_keep_the_trainers_interface():
    """Training and evaluation both return just the logits; training sows the auxiliary logits
    into "intermediates" for whoever asks for that collection; evaluation does not run the head."""
    model = models.create("inception_v3", aux_logits=True, num_classes=7)
    x = jax.ShapeDtypeStruct((2, 299, 299, 1), jnp.float32)
    variables = abstract_init(model, (2, 299, 299, 1))
    rngs = {"dropout": KEY}

    def run(train, mutable):
        return jax.eval_shape(lambda v, x: model.apply(v, x, train=train, rngs=rngs, mutable=mutable), variables, x)

    logits, state = run(True, ["batch_stats"])
    assert logits.shape == (2, 7) and set(state) == {"batch_stats"}
    logits, state = run(True, ["batch_stats", "intermediates"])
    assert logits.shape == (2, 7)
    (aux,) = state["intermediates"]["aux_logits"]
    assert aux.shape == (2, 7)
    calls = []

    def record(next_fun, args, kwargs, context):
        calls.append("/".join(context.module.path))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        logits, state = run(False, ["batch_stats", "intermediates"])
    assert logits.shape == (2, 7) and not state.get("intermediates")
    assert "Mixed_7c" in calls and not any(call.startswith("AuxLogits") for call in calls)


def test_inception_v3_transform_input_takes_rgb_only():
    with pytest.raises(ValueError, match="transform_input needs RGB images"):
        abstract_init(models.create("inception_v3", transform_input=True), (1, 75, 75, 1))
    assert abstract_init(models.create("inception_v3", transform_input=True), (1, 75, 75, 3))


def test_inception_v3_with_aux_logits_needs_299_pixels(monkeypatch):
    model = models.create("inception_v3", aux_logits=True)
    assert model.min_input_size == 299
    with pytest.raises(ValueError, match="InceptionV3 needs inputs of at least 299x299 pixels, got 298x299"):
        abstract_init(model, (1, 298, 299, 1))
    without_input_check(monkeypatch, model)
    assert has_empty_layer(model, (1, 298, 298, 1))


# --- smallest inputs -------------------------------------------------------------------

def without_input_check(monkeypatch, model):
    monkeypatch.setattr(sys.modules[type(model).__module__], "check_input_size", lambda *args: None)


@pytest.mark.parametrize("name", PARAM_COUNTS)
def test_min_input_size_is_the_smallest_that_leaves_every_layer_non_empty(name, monkeypatch):
    model = models.create(name)
    size = model.min_input_size
    assert size == MIN_INPUT_SIZES[name]
    assert not has_empty_layer(model, (1, size, size, 1))
    without_input_check(monkeypatch, model)
    assert has_empty_layer(model, (1, size - 1, size - 1, 1))


@pytest.mark.parametrize("name", PARAM_COUNTS)
def test_too_small_input_raises_naming_the_minimum(name):
    model = models.create(name)
    size = model.min_input_size
    message = f"needs inputs of at least {size}x{size} pixels"
    for height, width in [(size - 1, size), (size, size - 1)]:
        with pytest.raises(ValueError, match=message + f", got {height}x{width}"):
            abstract_init(model, (1, height, width, 1))


def test_vgg_min_input_size_follows_conv_arch(monkeypatch):
    model = models.create("vgg11", conv_arch=((1, 8), (1, 8), (2, 8)))
    assert model.min_input_size == 8
    assert not has_empty_layer(model, (1, 8, 8, 1))
    with pytest.raises(ValueError, match="at least 8x8"):
        abstract_init(model, (1, 7, 8, 1))
    without_input_check(monkeypatch, model)
    assert has_empty_layer(model, (1, 7, 7, 1))


# --- initialisation ----------------------------------------------------------------------

def conv_and_dense_calls(model, shape):
    """(layer, input shape) of every nn.Conv and nn.Dense call of an abstract init, and the variables."""
    calls = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, (nn.Conv, nn.Dense)) and context.method_name == "__call__":
            calls.append((context.module, args[0].shape))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        variables = abstract_init(model, shape)
    return calls, variables


def assert_uniform(values, bound):
    """`values` lie in [-bound, bound] and spread like draws from U(-bound, bound): their mean
    square, which estimates bound^2 / 3 with a relative standard deviation of sqrt(0.8 / n) for
    n draws, is within six of those."""
    values = np.asarray(values, np.float64)
    assert np.abs(values).max() <= bound * (1 + 1e-6)
    assert np.abs(values).max() > 0.5 * bound  # not all zero, and not much narrower
    np.testing.assert_allclose(np.mean(values ** 2), bound ** 2 / 3, rtol=6 * np.sqrt(0.8 / values.size))


def assert_xavier_kernel_and_pytorch_bias(kernel, bias, fan_in, fan_out):
    """Kernel: Xavier-uniform, U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), of variance
    a^2 / 3 = 2 / (fan_in + fan_out); bias: PyTorch's U(-b, b) with b = 1 / sqrt(fan_in)."""
    assert_uniform(kernel, np.sqrt(6 / (fan_in + fan_out)))
    assert_uniform(bias, 1 / np.sqrt(fan_in))


@pytest.mark.parametrize("name", PARAM_COUNTS)
def test_every_conv_and_dense_layer_initialises_like_d2l_pytorch(name):
    size = MIN_INPUT_SIZES[name]
    # three input channels, so that a fan_in that ignored them would show
    calls, variables = conv_and_dense_calls(models.create(name), (1, size, size, 3))
    kernels = [path for path, _ in jax.tree_util.tree_leaves_with_path(variables) if path[-1].key == "kernel"]
    assert len(calls) == len(kernels)
    for layer, input_shape in calls:
        assert layer.kernel_init is xavier_uniform  # whose values the next two tests check
        if layer.use_bias:
            window = layer.kernel_size if isinstance(layer, nn.Conv) else ()
            # a grouped convolution's output sees in_channels / groups inputs (PyTorch's fan_in)
            groups = getattr(layer, "feature_group_count", 1)
            bound = 1 / np.sqrt(input_shape[-1] // groups * np.prod(window))
            draws = layer.bias_init(KEY, (20_000,))  # 20,000 draws of this layer's bias initialiser
            assert np.abs(draws).max() > 0.99 * bound, (layer.name, input_shape)
            assert_uniform(draws, bound)


def test_lenet_bn_draws_xavier_uniform_kernels_and_pytorch_biases():
    model = models.create("lenet_bn")
    x = jnp.zeros((1, 28, 28, 1))
    init = jax.jit(lambda key: model.init(key, x, train=False)).lower(KEY).compile(FAST_COMPILE)
    params = init(KEY)["params"]
    # (layer, fan_in, fan_out): the 5x5 convolution from 6 to 16 channels, the dense layer from 16*4*4 to 120
    for layer, fan_in, fan_out in [("Conv_1", 6 * 25, 16 * 25), ("Dense_0", 256, 120)]:
        assert_xavier_kernel_and_pytorch_bias(params[layer]["kernel"], params[layer]["bias"], fan_in, fan_out)
    # BatchNorm keeps PyTorch's (and flax's) defaults
    assert np.all(params["BatchNorm_0"]["scale"] == 1) and np.all(params["BatchNorm_0"]["bias"] == 0)


def test_vgg_block_draws_xavier_uniform_kernels_and_pytorch_biases():
    # a 3x3 convolution from 64 to 512 channels: 512 biases, enough to see that they spread like U(-b, b)
    block, x = vgg_block(1, 512), jnp.zeros((1, 2, 2, 64))
    params = jax.jit(block.init).lower(KEY, x).compile(FAST_COMPILE)(KEY, x)["params"]
    (layer,) = params.values()
    assert_xavier_kernel_and_pytorch_bias(layer["kernel"], layer["bias"], 64 * 9, 512 * 9)


def test_grouped_convolution_draws_xavier_uniform_kernels_and_pytorch_biases():
    """PyTorch's fans of a grouped convolution's (out, in / groups, kh, kw) weight: fan_in = in / groups * kh * kw,
    fan_out = out * kh * kw; flax's (kh, kw, in / groups, out) kernel gives Xavier the same."""
    # d2l's ResNeXt block with 256 channels and group width 16: a 3x3 convolution in 16 groups
    block = ResNeXtBlock(256, 16, 1, functools.partial(nn.BatchNorm, use_running_average=True))
    x = jnp.zeros((1, 2, 2, 256))
    params = jax.jit(block.init).lower(KEY, x).compile(FAST_COMPILE)(KEY, x)["params"]
    grouped = params["Conv_1"]
    assert grouped["kernel"].shape == (3, 3, 16, 256)
    assert_xavier_kernel_and_pytorch_bias(grouped["kernel"], grouped["bias"], 16 * 9, 256 * 9)


def test_nin_is_not_dead_at_initialisation():
    """NiN ends in a ReLU before global average pooling. With flax's default init (LeCun-normal
    kernels, zero biases) every output of this test was exactly 0 at seed 0, so no gradient flowed
    and training never left loss ln 10. With zero biases a ReLU network also maps a black image
    (Fashion-MNIST's background) to exactly 0 whatever its kernels; PyTorch's biases keep both alive."""
    model = models.create("nin")
    size = MIN_INPUT_SIZES["nin"]
    x = np.random.default_rng(0).uniform(0, 1, (8, size, size, 1)).astype(np.float32)
    x[-1] = 0
    init = jax.jit(lambda key: model.init(key, x, train=False)).lower(KEY).compile(FAST_COMPILE)
    logits = np.asarray(model.apply(init(KEY), x, train=False))
    assert np.mean(logits != 0) > 0.2
    assert np.any(logits[-1] != 0)


# --- train and eval --------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", COMPUTED)
def test_train_and_eval_differ_only_by_dropout_and_batch_norm(name):
    variables = initialized(name, MIN_INPUT_SIZES[name])
    x = images(MIN_INPUT_SIZES[name], seed=2)
    key1, key2 = jax.random.key(1), jax.random.key(2)
    # evaluation gets no dropout rng (see forward), so it cannot depend on one
    eval_logits, eval_state = forward(name, train=False)(variables, x, key1)
    train_logits, train_state = forward(name, train=True)(variables, x, key1)
    assert np.isfinite(train_logits).all() and np.isfinite(eval_logits).all()
    assert np.abs(eval_logits).max() > 0

    other_key_logits = forward(name, train=True)(variables, x, key2)[0]
    if name in WITH_DROPOUT:
        assert not np.allclose(train_logits, other_key_logits)
    else:
        np.testing.assert_array_equal(train_logits, other_key_logits)

    if name in WITH_BATCH_NORM:
        assert not np.allclose(train_logits, eval_logits)
        jax.tree_util.tree_map(np.testing.assert_array_equal, eval_state["batch_stats"],
                               variables["batch_stats"])
        changed = jax.tree_util.tree_map(lambda new, old: not np.allclose(new, old),
                                         train_state["batch_stats"], variables["batch_stats"])
        assert all(jax.tree_util.tree_leaves(changed))
    else:
        assert not eval_state and not train_state
    if name not in WITH_DROPOUT | WITH_BATCH_NORM:
        np.testing.assert_array_equal(train_logits, eval_logits)


# BatchNorm layers per network with BatchNorm
BATCH_NORM_LAYERS = {"lenet_bn": 4, "lenet_bn_scratch": 4, "resnet18": 17, "resnet34": 33, "resnet50": 53,
                     "tv_resnet18": 20, "tv_resnet34": 36,
                     "resnext50": 53, "densenet": 21, "regnetx32": 33, "inception_v3": 94}


def test_batch_norm_layers_lists_the_networks_with_batch_norm():
    assert set(BATCH_NORM_LAYERS) == set(BATCH_STATS) == WITH_BATCH_NORM


@pytest.mark.parametrize("name", sorted(WITH_BATCH_NORM))
def test_batch_norm_axis_reaches_every_batch_norm(name):
    axis_names = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, (nn.BatchNorm, ScratchBatchNorm)):
            axis_names.append(context.module.axis_name)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        size = max(32, MIN_INPUT_SIZES[name])
        variables = abstract_init(models.create(name, batch_norm_axis="replicas"), (1, size, size, 1))
    assert axis_names == ["replicas"] * BATCH_NORM_LAYERS[name]
    means = [path for path, _ in jax.tree_util.tree_leaves_with_path(variables["batch_stats"])
             if path[-1].key == "mean"]
    assert len(means) == BATCH_NORM_LAYERS[name]


@pytest.mark.parametrize("name", slow_for_larger_networks(PARAM_COUNTS))
def test_bfloat16_convolutions_and_dense_layers_with_float32_params(name):
    size = MIN_INPUT_SIZES[name]
    model = models.create(name, dtype=jnp.bfloat16)
    leaves = jax.tree_util.tree_leaves(abstract_init(model, (2, size, size, 1)))
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)
    layers = [aval.dtype for op, aval in traced_ops(model, (2, size, size, 1))
              if op in ("conv_general_dilated", "dot_general")]
    assert layers and all(dtype == jnp.bfloat16 for dtype in layers)


# a plain, a BatchNorm-from-scratch, a flax-BatchNorm and a global-average-pooling network
@pytest.mark.parametrize("name", ["alexnet", "lenet_bn_scratch", "resnet18", "nin"])
def test_bfloat16_logits_are_close_to_float32(name):
    size = MIN_INPUT_SIZES[name]
    variables = initialized(name, size)
    x = images(size, seed=3)
    logits = forward(name, train=False)(variables, x, KEY)[0]
    low = forward(name, train=False, dtype=jnp.bfloat16)(variables, x, KEY)[0]
    assert low.dtype == jnp.bfloat16
    low = np.asarray(low, np.float32)
    assert np.isfinite(low).all()
    scale = np.abs(logits).max()
    np.testing.assert_allclose(low, logits, atol=0.05 * scale)
