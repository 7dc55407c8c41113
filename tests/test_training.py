"""The pmapped train and eval functions on 4 fake CPU devices (see conftest.py)."""
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flaxcnn import optimizers, pipelines, replicas, runtime, training
from flaxcnn.errors import UserError
from tests import conftest
from tests.conftest import REPO, images_and_labels, lenet_state, max_abs_difference

IMAGE = (12, 12, 1)


@functools.lru_cache(maxsize=None)
def compiled_setup(num_devices, global_batch, sync_batch_stats, lr, dtype, device_loop, freeze):
    """The initial state and pmapped chunk function, shared by tests so each compiles once."""
    devices = jax.devices()[:num_devices]
    cfg = training.StepConfig(image_size=28, dtype=dtype,
                              batch_per_device=global_batch // num_devices,
                              eval_batch_per_device=8, sync_batch_stats=sync_batch_stats,
                              freeze=freeze, device_loop=device_loop)
    state = lenet_state(lr, dtype=dtype, sync_batch_stats=sync_batch_stats, freeze=freeze)
    return devices, state, training.make_train_chunk(cfg, devices)


def train_steps(num_devices, *, global_batch, chunks, sync_batch_stats=True, lr=0.1,
                dtype=jnp.float32, data=None, device_loop=False, freeze="none"):
    """Runs len(chunks) chunks of chunks[i] steps each; returns host train state and totals."""
    devices, state, chunk = compiled_setup(num_devices, global_batch, sync_batch_stats, lr, dtype,
                                           device_loop, freeze)
    device_data = pipelines.DeviceData(*(data or images_and_labels(global_batch * sum(chunks))),
                                      devices)
    run = replicas.replicate(training.RunState(state, jax.random.PRNGKey(1), jax.random.PRNGKey(2),
                                               training.zero_totals()), devices)
    perm = device_data.permutation(run.data_key, 0)
    start = 0
    for n in chunks:
        run = chunk(run, device_data.images, device_data.labels, perm, start, n)
        start += n
    return replicas.unreplicate(run.train), replicas.unreplicate(run.totals)


def test_pmapped_step_equals_one_device_step_on_the_global_batch():
    four = train_steps(4, global_batch=32, chunks=[1])
    one = train_steps(1, global_batch=32, chunks=[1])
    assert four[0].step == one[0].step == 1
    assert max_abs_difference(four[0].params, one[0].params) < 1e-5
    assert max_abs_difference(four[0].batch_stats, one[0].batch_stats) < 1e-5
    assert four[1]["count"] == one[1]["count"] == 32
    assert four[1]["correct"] == one[1]["correct"]
    np.testing.assert_allclose(four[1]["loss_sum"], one[1]["loss_sum"], rtol=1e-5)
    # ...and the update did something.
    assert max_abs_difference(four[0].params, lenet_state().params) > 1e-3


def test_per_device_batch_statistics_differ_from_global_ones():
    # Flat grey images of random brightness: the per-device batch means differ a lot.
    levels = np.random.default_rng(0).integers(0, 256, 32).astype(np.uint8)
    flat = (np.broadcast_to(levels[:, None, None, None], (32, *IMAGE)).copy(),
            np.zeros(32, np.int32))
    synced = train_steps(4, global_batch=32, chunks=[1], data=flat)
    per_device = train_steps(4, global_batch=32, chunks=[1], data=flat,
                             sync_batch_stats=False)
    # Per-device means average to the global mean. Per-device variances average to less than the
    # global variance (total variance = mean of the variances + variance of the means).
    bn = "BatchNorm_0"
    np.testing.assert_allclose(per_device[0].batch_stats[bn]["mean"],
                               synced[0].batch_stats[bn]["mean"], rtol=1e-4, atol=1e-6)
    batch_var = lambda s: (s.batch_stats[bn]["var"] - 0.9) / 0.1  # undo the momentum-0.9 update
    assert np.all(batch_var(per_device[0]) < 0.99 * batch_var(synced[0]))


@pytest.mark.parametrize("num_devices, real", [(1, "11111000"), (4, "11111000"), (4, "11001110")])
def test_a_masked_step_equals_an_unpadded_step_on_its_real_examples(num_devices, real):
    """float64: a batch of 8 with 5 real examples (on 4 devices 2, 2, 1, 0 of them, as an epoch's
    last batch pads, or 2, 0, 2, 1) trains as a batch of those 5 alone: the same parameters,
    BatchNorm statistics, loss and counts (d2l's last partial batch)."""
    images, labels = images_and_labels(8, seed=3, shape=(28, 28, 1))
    mask = np.array([c == "1" for c in real])
    with jax.enable_x64(True):
        state = lenet_state(lr=0.5, dtype=jnp.float64)
        (unpadded,) = conftest.float64_steps(
            state, [(images[mask], labels[mask], np.ones(5, bool))], num_devices=1)
        (masked,) = conftest.float64_steps(state, [(images, labels, mask)], num_devices)
    assert masked[1]["count"] == unpadded[1]["count"] == 5
    assert masked[1]["correct"] == unpadded[1]["correct"]
    np.testing.assert_allclose(masked[1]["loss_sum"], unpadded[1]["loss_sum"], rtol=1e-13)
    for part in ("params", "batch_stats", "opt_state"):
        assert max_abs_difference(getattr(masked[0], part), getattr(unpadded[0], part)) < 1e-13
    assert max_abs_difference(masked[0].params, state.params) > 1e-3  # the step did something


@pytest.mark.slow
@pytest.mark.parametrize("device_loop", [False, True])
def test_chunking_does_not_change_a_single_bit(device_loop):
    a = train_steps(2, global_batch=8, chunks=[1, 5], device_loop=device_loop)
    b = train_steps(2, global_batch=8, chunks=[3, 2, 1], device_loop=device_loop)
    assert a[0].step == b[0].step == 6
    assert max_abs_difference(a[0].params, b[0].params) == 0
    assert max_abs_difference(a[0].opt_state, b[0].opt_state) == 0
    assert a[1] == b[1]


@pytest.mark.slow
@pytest.mark.parametrize("device_loop", [False, True])
def test_non_finite_loss_stops_and_keeps_the_last_good_state(device_loop):
    # after the first step's parameters of ~1e35, the next step's BatchNorm statistics overflow
    good = train_steps(2, global_batch=8, chunks=[1], lr=1e36, device_loop=device_loop)
    bad = train_steps(2, global_batch=8, chunks=[1, 4], lr=1e36, device_loop=device_loop)
    assert good[1]["bad_step"] == -1
    assert bad[1]["bad_step"] >= 1
    assert bad[0].step == bad[1]["bad_step"]  # the step that failed was not applied
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(bad[0].params))
    assert bad[1]["count"] == 8 * bad[1]["bad_step"]  # only the good steps were counted


@pytest.mark.slow
def test_steps_in_a_device_loop_match_steps_dispatched_one_by_one():
    looped = train_steps(2, global_batch=8, chunks=[3], device_loop=True)
    dispatched = train_steps(2, global_batch=8, chunks=[3], device_loop=False)
    assert max_abs_difference(looped[0].params, dispatched[0].params) < 1e-5
    assert looped[1]["count"] == dispatched[1]["count"] == 24


@pytest.mark.slow
def test_bfloat16_steps_keep_float32_parameters_and_statistics():
    state, totals = train_steps(2, global_batch=8, chunks=[2], dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}
    assert {x.dtype for x in jax.tree.leaves(state.batch_stats)} == {np.dtype("float32")}
    assert np.isfinite(totals["loss_sum"]) and totals["bad_step"] == -1


@pytest.mark.parametrize("optimizer", optimizers.OPTIMIZERS)
def test_every_optimizer_descends(optimizer):
    params = {"w": jnp.array([1.0, -2.0])}
    tx, schedule = optimizers.create_optimizer(optimizer=optimizer, learning_rate=0.1,
                                             weight_decay=0.01 if optimizer != "sgd" else 0.0)
    opt_state = tx.init(params)
    loss = lambda p: jnp.sum(p["w"] ** 2)
    losses = [float(loss(params))]
    for _ in range(3):
        updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
        params = jax.tree.map(jnp.add, params, updates)
        losses.append(float(loss(params)))
    assert losses[0] == 5.0
    assert all(after < before for before, after in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.8 * losses[0], losses  # three steps of lr 0.1 move w by at least 0.1 each
    assert float(schedule(0)) == pytest.approx(0.1)


def test_cosine_schedule_warms_up_then_decays():
    _, schedule = optimizers.create_optimizer(optimizer="sgd", learning_rate=0.4, lr_schedule="cosine",
                                            warmup_epochs=1, num_epochs=4, steps_per_epoch=10)
    assert float(schedule(0)) == 0.0
    assert float(schedule(10)) == pytest.approx(0.4)
    assert 0 < float(schedule(25)) < 0.4
    assert float(schedule(40)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("field,value", [("optimizer", "rmsprop"), ("lr_schedule", "step")])
def test_unknown_optimizer_or_schedule_is_refused(field, value):
    kwargs = {"optimizer": "sgd", "learning_rate": 0.1, field: value}
    with pytest.raises(ValueError, match=value):
        optimizers.create_optimizer(**kwargs)


# a toy params tree with a backbone and a head (the registry's head paths are "/"-separated)
TOY_PARAMS = {"Conv_0": {"kernel": jnp.ones((2,))}, "Dense_0": {"kernel": jnp.ones((2,)), "bias": jnp.ones(())},
              "AuxLogits": {"fc": {"kernel": jnp.ones((2,))}, "conv0": {"kernel": jnp.ones((2,))}}}
TOY_HEAD = ("Dense_0", "AuxLogits/fc")


def one_step(tx, params=TOY_PARAMS, steps=1):
    """params after `steps` updates with gradient 1 everywhere."""
    opt_state = tx.init(params)
    for _ in range(steps):
        updates, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), opt_state, params)
        params = jax.tree.map(jnp.add, params, updates)
    return params


def test_param_labels_name_the_head_and_the_backbone():
    labels = optimizers.param_labels(TOY_PARAMS, TOY_HEAD)
    assert labels == {"Conv_0": {"kernel": "backbone"}, "Dense_0": {"kernel": "head", "bias": "head"},
                      "AuxLogits": {"fc": {"kernel": "head"}, "conv0": {"kernel": "backbone"}}}


def test_the_head_learns_with_the_multiplier_times_the_learning_rate():
    tx, schedule = optimizers.create_optimizer(optimizer="sgd", learning_rate=0.01, head_lr_multiplier=10,
                                             head_paths=TOY_HEAD)
    params = one_step(tx)
    np.testing.assert_allclose(params["Conv_0"]["kernel"], 1 - 0.01)
    np.testing.assert_allclose(params["AuxLogits"]["conv0"]["kernel"], 1 - 0.01)
    np.testing.assert_allclose(params["Dense_0"]["kernel"], 1 - 0.1)
    np.testing.assert_allclose(params["AuxLogits"]["fc"]["kernel"], 1 - 0.1)
    assert float(schedule(0)) == pytest.approx(0.01)  # the reported rate is the backbone's


@pytest.mark.parametrize("optimizer", optimizers.OPTIMIZERS)
def test_a_frozen_backbone_does_not_change_while_the_head_trains(optimizer):
    tx, _ = optimizers.create_optimizer(optimizer=optimizer, learning_rate=0.1, weight_decay=0.1,
                                      freeze="backbone", head_lr_multiplier=2, head_paths=TOY_HEAD)
    params = one_step(tx, steps=2)
    np.testing.assert_array_equal(params["Conv_0"]["kernel"], TOY_PARAMS["Conv_0"]["kernel"])
    np.testing.assert_array_equal(params["AuxLogits"]["conv0"]["kernel"], TOY_PARAMS["AuxLogits"]["conv0"]["kernel"])
    assert np.all(np.asarray(params["Dense_0"]["kernel"]) < 1)


def test_parameter_groups_follow_the_schedule():
    tx, _ = optimizers.create_optimizer(optimizer="sgd", learning_rate=0.4, lr_schedule="cosine", warmup_epochs=1,
                                      num_epochs=4, steps_per_epoch=2, head_lr_multiplier=10, head_paths=TOY_HEAD)
    after_warmup_start = one_step(tx)  # step 0 of the warmup has learning rate 0
    jax.tree.map(np.testing.assert_array_equal, after_warmup_start, TOY_PARAMS)
    two_steps = one_step(tx, steps=2)  # step 1: half the peak rate, 0.2 (head: 2.0)
    np.testing.assert_allclose(two_steps["Conv_0"]["kernel"], 1 - 0.2, rtol=1e-6)
    np.testing.assert_allclose(two_steps["Dense_0"]["kernel"], 1 - 2.0, rtol=1e-6)


def test_without_fine_tuning_options_the_optimizer_state_is_as_before():
    # so checkpoints of runs without the options keep resuming
    plain, _ = optimizers.create_optimizer(optimizer="momentum", learning_rate=0.1, head_paths=TOY_HEAD)
    before = optax.sgd(optax.constant_schedule(0.1), momentum=0.9, nesterov=False)
    assert jax.tree.structure(plain.init(TOY_PARAMS)) == jax.tree.structure(before.init(TOY_PARAMS))


@pytest.mark.parametrize("options, message", [
    (dict(init_from="", head_lr_multiplier=10, freeze="none"), "head_lr_multiplier needs --config.init_from"),
    (dict(init_from="", head_lr_multiplier=1, freeze="backbone"), "freeze=backbone needs --config.init_from"),
    (dict(init_from="torchvision:resnet18", head_lr_multiplier=1, freeze="head"), "freeze='head' is not one of"),
    (dict(init_from="torchvision:resnet18", head_lr_multiplier=0, freeze="none"), "must be positive"),
])
def test_fine_tuning_options_that_make_no_sense_are_one_line(options, message):
    with pytest.raises(UserError, match=message) as error:
        optimizers.check_finetune_options(**options)
    assert "\n" not in str(error.value)
    optimizers.check_finetune_options(init_from="torchvision:resnet18", head_lr_multiplier=10, freeze="backbone")


@pytest.mark.slow
def test_a_frozen_backbone_keeps_its_batch_statistics_and_parameters():
    frozen = train_steps(2, global_batch=8, chunks=[2], freeze="backbone")
    trained = train_steps(2, global_batch=8, chunks=[2])
    start = lenet_state()
    assert max_abs_difference(frozen[0].batch_stats, start.batch_stats) == 0
    assert max_abs_difference(trained[0].batch_stats, start.batch_stats) > 1e-3
    head = lambda params: params["Dense_2"]  # noqa: E731  # LeNet-BN's classifier
    backbone = lambda params: {k: v for k, v in params.items() if k != "Dense_2"}  # noqa: E731
    assert max_abs_difference(backbone(frozen[0].params), backbone(start.params)) == 0
    assert max_abs_difference(head(frozen[0].params), head(start.params)) > 1e-4
    assert frozen[1]["count"] == 16


@pytest.mark.parametrize("xla_flags, cores, environ_nproc, want", [
    ("--xla_force_host_platform_device_count=4", 2, None, "8"),    # CI: 4 fake devices, 2 cores
    ("--xla_force_host_platform_device_count=4", 4, None, "8"),    # as many cores as devices
    ("--xla_force_host_platform_device_count=4", 16, None, None),  # spare cores already
    ("", 2, None, None),                                           # one device: no collective
    ("--xla_force_host_platform_device_count=4 --xla_force_host_platform_device_count=1", 2, None,
     None),                                                        # XLA takes the last
    ("--xla_force_host_platform_device_count=4", 2, "3", "3"),     # the user's setting stays
])
def test_cpu_threads_for_collectives(monkeypatch, xla_flags, cores, environ_nproc, want):
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(cores)),
                        raising=False)
    environ = {"XLA_FLAGS": xla_flags, **({"PJRT_NPROC": environ_nproc} if environ_nproc else {})}
    set_now = runtime.reserve_cpu_threads_for_collectives(environ)
    assert environ.get("PJRT_NPROC") == want
    assert set_now == (int(want) if want and not environ_nproc else None)


def test_psums_between_convolutions_on_4_devices_of_a_2_core_host_complete():
    """What the reserved threads are for: every device computes a convolution between psums, so
    a device that a blocked collective starves of threads would stall the others (XLA aborts such
    a rendezvous after 40 s). A (pretended) 2-core host with 4 fake devices runs 50 such steps."""
    code = ("import os\n"
            "os.sched_getaffinity = lambda pid: {0, 1}\n"
            "from flaxcnn import runtime\n"
            "print(runtime.reserve_cpu_threads_for_collectives())\n"
            "import jax, jax.numpy as jnp\n"
            "def step(x, k):\n"
            "    y = jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME')\n"
            "    return x + 1e-3 * jax.lax.pmean(y, 'i'), jax.lax.psum(y.sum(), 'i')\n"
            "f = jax.pmap(step, 'i')\n"
            "x, k = jnp.ones((4, 2, 3, 64, 64)), jnp.ones((4, 3, 3, 3, 3)) / 27\n"
            "for _ in range(50):\n"
            "    x, total = f(x, k)\n"
            "print(float(total[0]))\n")
    env = {k: v for k, v in os.environ.items() if k != "PJRT_NPROC"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    threads, total = result.stdout.split()
    assert threads == "8" and float(total) > 4 * 2 * 3 * 64 * 64  # the sums grew each step
