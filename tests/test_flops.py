"""FLOP counts: the same number on every backend, convolutions included (flaxcnn.flops)."""
import contextlib

import jax
import jax.numpy as jnp
import pytest

from flaxcnn import bench, flops, models, optimizers, summary, training

# multiply-adds of LeNet-BN's convolutions and dense layers on a 28x28 image
LENET_MULTIPLY_ADDS = (24 * 24 * 6 * 5 * 5 * 1 + 8 * 8 * 16 * 5 * 5 * 6 + 256 * 120 + 120 * 84 + 84 * 10)


def cpu_lowered_forward_flops(model, shape):
    """The count before flaxcnn.flops: the default backend's cost analysis (a CPU here)."""
    image = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), image)
    lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, image)
    return float(lowered.cost_analysis()["flops"])


def behave_like_an_accelerator(monkeypatch):
    """Cost analysis as on GPU/TPU (PJRT C-API backends): None for computations on the default
    device; only what runs inside `jax.default_device(<a CPU device>)` is analysed."""
    explicit = []  # the devices of the jax.default_device contexts now open
    real_default_device = jax.default_device

    @contextlib.contextmanager
    def default_device(device):
        explicit.append(device)
        try:
            with real_default_device(device):
                yield
        finally:
            explicit.pop()

    monkeypatch.setattr(jax, "default_device", default_device)
    for stage in (jax.stages.Lowered, jax.stages.Compiled):
        def cost_analysis(self, real=stage.cost_analysis):
            on_cpu = bool(explicit) and getattr(explicit[-1], "platform", None) == "cpu"
            return real(self) if on_cpu else None
        monkeypatch.setattr(stage, "cost_analysis", cost_analysis)


def small_train_state(image_size=16):
    tx, _ = optimizers.create_optimizer(optimizer="sgd", learning_rate=0.01)
    state = training.create_train_state("lenet_bn", tx, input_shape=(image_size, image_size, 1))
    cfg = training.StepConfig(image_size=image_size, dtype=jnp.float32, batch_per_device=4,
                              eval_batch_per_device=4)
    return state, cfg


def test_forward_flops_count_convolutions_and_match_xla_on_the_cpu():
    model = models.create("lenet_bn", num_classes=10)
    counted = flops.forward_flops(model, (28, 28, 1))
    assert counted == cpu_lowered_forward_flops(model, (28, 28, 1))
    # convolutions and matmuls counted as 2 FLOPs per multiply-add, plus the cheap elementwise ops
    assert 2 * LENET_MULTIPLY_ADDS <= counted < 1.2 * 2 * LENET_MULTIPLY_ADDS
    assert flops.forward_flops(model, (28, 28, 1), batch=3) == pytest.approx(3 * counted, rel=0.01)


def test_train_step_costs_about_three_forward_passes():
    state, cfg = small_train_state()
    step = flops.train_step_flops(state, cfg.step_kwargs, cfg.batch_per_device, (16, 16, 1))
    forward = flops.forward_flops(models.create("lenet_bn", num_classes=10), (16, 16, 1),
                                  batch=cfg.batch_per_device)
    assert 2 * forward < step < 5 * forward
    assert bench.step_flops(state, cfg, channels=1) == step * jax.device_count()


def test_accelerator_counts_equal_the_cpu_counts(monkeypatch):
    state, cfg = small_train_state()
    on_cpu = (summary.model_stats("lenet_bn", 28)["flops_per_image"],
              bench.step_flops(state, cfg, channels=1))
    behave_like_an_accelerator(monkeypatch)
    # The model holds: the count as it was taken before flaxcnn.flops is None, as on GPU/TPU.
    model = models.create("lenet_bn", num_classes=10)
    image = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), image)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    assert forward.lower(variables, image).cost_analysis() is None

    on_accelerator = (summary.model_stats("lenet_bn", 28)["flops_per_image"],
                      bench.step_flops(state, cfg, channels=1))
    assert on_accelerator == on_cpu


def test_without_a_cpu_backend_the_default_backend_counts_or_a_clear_error(monkeypatch):
    model = models.create("lenet_bn", num_classes=10)
    expected = flops.forward_flops(model, (28, 28, 1))
    monkeypatch.setattr(flops, "_cpu_device", lambda: None)
    assert flops.forward_flops(model, (28, 28, 1)) == expected
    for stage in (jax.stages.Lowered, jax.stages.Compiled):
        monkeypatch.setattr(stage, "cost_analysis", lambda self: None)
    with pytest.raises(RuntimeError, match="add 'cpu' to JAX_PLATFORMS"):
        flops.forward_flops(model, (28, 28, 1))


@pytest.mark.parametrize("kind, peak", [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H200", 989.0),
                                        ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L4", 121.0),
                                        ("TPU v5 lite", 197.0), ("TPU v5p", 459.0), ("TPU v5", 459.0),
                                        ("NVIDIA H100 PCIe", 756.0), ("Tesla V100-SXM2-16GB", None),
                                        ("TPU v6 lite", 918.0), ("TPU v4", 275.0), ("cpu", None)])
def test_bf16_peaks_are_dense_tensor_core_figures(kind, peak):
    assert bench.bf16_peak(kind) == peak
