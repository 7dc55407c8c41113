"""Every registered model's gradient: one train-mode step, compiled as the trainer compiles it, in
float64, equals PyTorch's (d2l's code or torchvision's) on the same weights and images; and
flaxcnn's CPU-only paths (the routed max-pooling gradient, grouped convolutions group by group)
give what jax's plain ones give, the whole model under jit.

The references (fixtures/gradients/<model>.json, made by fixtures/make_gradient_references.py)
hold, for each parameter, the sum, the sum of squares and the dot product with a seeded vector of
its gradient, and the loss; the weights, images and labels are made here with numpy from their
names and seeds (fixtures/gradient_tensors.py), placed by flaxcnn's own name mapping
(flaxcnn.pretrained.mappings; tests/test_pretrained.py checks it against the manifests' names). Dropout is off on
both sides (its masks cannot be matched); BatchNorm normalizes with the batch's statistics. The
step is the trainer's loss (training.train_step's: model.apply in train mode with batch_stats
mutable, mean softmax cross-entropy) under jax.jit(jax.value_and_grad); the trainer's own
loss_fn casts the logits to float32, which float64 cannot pass through. Shapes are the
trainer's: each model at d2l's image size (the others at their layout's), batch 2, and batch 16
where a defect hid (issue 26: the BN -> ReLU -> padded max-pooling stems lost a fifth of the
gradient at 96 px, batch 2 and 16, but not at 64 px). This process computes convolutions with
XLA's own kernels (runtime.use_xla_cpu_convolutions, as train.py); that option's outputs against
XLA's default are tests/test_cpu_convolutions.py's.

A statistic of a parameter's gradient g (n values) is compared relative to the largest value it
can take, sqrt(n) * |g| for the sum and the dot product, |g|^2 for the sum of squares, with |g|
floored at 1e-4 of the whole gradient's norm: the gradients of biases that a BatchNorm follows
are zero but for round-off, which no two programs share.
"""
import dataclasses
import functools
import json
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from jax import lax

from flaxcnn import models
from flaxcnn.models import alexnet, googlenet, inception, init, nin, resnet, vgg
from flaxcnn.pretrained import mappings
from tests.conftest import LARGER_NETWORKS

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from gradient_tensors import images, labels, model_tensor, statistics  # noqa: E402

MODULES_WITH_MAX_POOLING = (alexnet, googlenet, inception, nin, resnet, vgg)


@functools.lru_cache(maxsize=None)
def reference(name):
    return json.loads((FIXTURES / "gradients" / f"{name}.json").read_text())


# Every model's float64 step takes tens of seconds on two cores, so the README's quick command
# leaves these tests out (pytest.ini) and CI runs them (.ci/run: -m "slow or heavy"): the chapter's
# models on both stacks, torchvision's larger networks (minutes each, which the chapter does not
# train) on the pinned one.


def model_of(name):
    fields = dict(models.spec(name).d2l_overrides)
    if "dropout_rate" in {field.name for field in dataclasses.fields(models.spec(name).module)}:
        fields["dropout_rate"] = 0.0
    return models.create(name, dtype=jnp.float64, **fields)


def variables_of(name, model):
    """The float64 variables of `model`, each from its torch name (the mapping's)."""
    manifest = reference(name)
    size = manifest["image_size"]
    image = jax.ShapeDtypeStruct((1, size, size, manifest["channels"]), jnp.float64)
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), image)
    placed = mappings.placements(name, abstract["params"])
    flat = traverse_util.flatten_dict(abstract)
    values = {}
    for p in placed:
        shape = mappings.torch_shape(p.kind, flat[(p.collection, *p.path)].shape)
        values[(p.collection, *p.path)] = mappings.to_flax(p.kind, model_tensor(p.torch_name, shape))
    return traverse_util.unflatten_dict(values), placed


def train_step(model, variables, x, y):
    """(loss, gradient) of one train-mode step, as training.train_step computes them."""
    def loss_fn(params):
        logits, _ = model.apply({"params": params, "batch_stats": variables.get("batch_stats", {})}, x,
                                train=True, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return jax.jit(jax.value_and_grad(loss_fn))(variables["params"])


@functools.lru_cache(maxsize=None)
def step_statistics(name, batch, plain_jax_paths):
    """(loss, {torch name: statistics of its gradient}) of one step of `name` at `batch`; with
    `plain_jax_paths`, nn.max_pool's gradient and lax's grouped convolutions instead of flaxcnn's
    CPU paths."""
    with jax.enable_x64(True), pytest.MonkeyPatch.context() as patch:
        if plain_jax_paths:
            for module in MODULES_WITH_MAX_POOLING:
                patch.setattr(module, "max_pool", lambda x, window, strides, padding="VALID": nn.max_pool(
                    x, tuple(window), tuple(strides), padding))
            patch.setattr(init, "conv_general_dilated", lax.conv_general_dilated)
        model = model_of(name)
        variables, placed = variables_of(name, model)
        manifest = reference(name)
        x = jnp.asarray(images(batch, manifest["image_size"]).transpose(0, 2, 3, 1))
        loss, gradient = train_step(model, variables, x, jnp.asarray(labels(batch)))
        flat = traverse_util.flatten_dict(jax.device_get(gradient))
        return float(loss), {p.torch_name: statistics(p.torch_name, mappings.to_torch(p.kind, flat[p.path]))
                             for p in placed if p.collection == "params"}


def largest_relative_difference(name, got, want):
    """The largest difference of a statistic, relative to the largest value it can take (see above)."""
    sizes = {key: int(np.prod(shape)) for key, shape, _ in reference(name)["tensors"]}
    norm = np.sqrt(sum(stats[1] for stats in want.values()))
    worst = 0.0
    for key, (total, squares, dot) in want.items():
        size = np.sqrt(max(squares, (1e-4 * norm) ** 2))
        bound = np.sqrt(sizes[key]) * size
        worst = max(worst, abs(got[key][0] - total) / bound, abs(got[key][2] - dot) / bound,
                    abs(got[key][1] - squares) / size**2)
    return worst


def gives_pytorchs_loss_and_gradient(name, batch):
    want = reference(name)["cases"][str(batch)]
    loss, got = step_statistics(name, batch, False)
    assert set(got) == set(want["gradients"])
    difference = largest_relative_difference(name, got, want["gradients"])
    print(f"{name} batch {batch}: loss {abs(loss / want['loss'] - 1):.1e}, gradient {difference:.1e} from PyTorch's")
    assert loss == pytest.approx(want["loss"], rel=1e-9)
    assert difference < 1e-9


def cpu_paths_give_jaxs_plain_gradient(name, batch):
    loss, got = step_statistics(name, batch, False)
    plain_loss, plain = step_statistics(name, batch, True)
    difference = largest_relative_difference(name, got, plain)
    print(f"{name} batch {batch}: gradient {difference:.1e} from jax's plain paths")
    assert loss == pytest.approx(plain_loss, rel=1e-12)
    # DenseNet's 16-image step, the deepest chain of float64 sums here, differs by 1.0e-12 with
    # jax 0.12.1 (2026-12-07); 2e-12 keeps the check at float64 round-off for every model.
    assert difference < 2e-12


def model_tests(name):
    """The tests of one model, as a class: pytest.ini's --dist loadscope keeps a module's functions
    on one xdist worker but spreads its classes, and a model's two tests share its step (cached)."""
    batches = [int(batch) for batch in reference(name)["cases"]]

    class ModelTests:
        pytestmark = [pytest.mark.heavy] if name in LARGER_NETWORKS else [pytest.mark.slow]

        @pytest.mark.parametrize("batch", batches)
        def test_one_train_step_gives_pytorchs_loss_and_gradient(self, batch):
            gives_pytorchs_loss_and_gradient(name, batch)

        @pytest.mark.parametrize("batch", batches)
        def test_the_cpu_paths_give_jaxs_plain_gradient(self, batch):
            cpu_paths_give_jaxs_plain_gradient(name, batch)

    ModelTests.__name__ = ModelTests.__qualname__ = "TestGradientOf" + name.title().replace("_", "")
    return ModelTests


for _name in models.names():
    _tests = model_tests(_name)
    globals()[_tests.__name__] = _tests
