"""Data-parallel training: the optimizer, the run's state, and the jitted, `jax.pmap`-ped steps.

Everything here runs on whatever `jax.local_devices()` holds (one CPU is the case N=1) and imports no
TensorFlow, so `flaxcnn.bench` times exactly the code `train.py` trains with. Moving state between
the host and the devices is `flaxcnn.replicas`' job; the process's settings are `flaxcnn.runtime`'s.

Images reach the step as uint8 and are scaled to [0, 1] and resized inside it. For data held on the
devices, a "chunk" of steps gathers each step's batch on device and runs as one `lax.while_loop` inside
one pmapped call, so the host touches the devices about once a second, never once a step
(`flaxcnn.pipelines` drives both kinds of input).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct, traverse_util
from flax.training import train_state
from jax import lax

from flaxcnn import models
from flaxcnn.errors import UserError
from flaxcnn.replicas import AXIS
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adamw")
LR_SCHEDULES = ("constant", "cosine")
FREEZE = ("none", "backbone")  # fine-tuning: train everything, or only the final classifier


class TrainState(train_state.TrainState):
    batch_stats: Any = None  # a dict, empty for a model without BatchNorm


class RunState(struct.PyTreeNode):
    """Everything that fixes the rest of a run, and what a checkpoint holds: the train state, the
    keys of the data order and of dropout, and the running sums of the epoch in progress (so a run
    resumed mid-epoch reports the same epoch metrics). The position in the run is `train.step`."""
    train: TrainState
    data_key: Any
    dropout_key: Any
    totals: dict

    @classmethod
    def fresh(cls, train: TrainState, seed: int) -> "RunState":
        data_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
        return cls(train, data_key, dropout_key, zero_totals())

    def to_tree(self) -> dict:
        """The checkpoint's tree (host numpy arrays): step, params, batch_stats, opt_state, the two
        keys and the totals."""
        train = self.train
        return jax.tree.map(np.asarray, {
            "step": np.asarray(train.step, np.int32), "params": train.params,
            "batch_stats": train.batch_stats, "opt_state": train.opt_state,
            "data_key": self.data_key, "dropout_key": self.dropout_key, "totals": self.totals})

    def from_tree(self, tree: dict) -> "RunState":
        """This state with the values of a checkpoint's tree (see `to_tree`)."""
        train = self.train.replace(step=tree["step"], params=tree["params"],
                                   opt_state=tree["opt_state"], batch_stats=tree["batch_stats"])
        return self.replace(train=train, data_key=tree["data_key"],
                            dropout_key=tree["dropout_key"], totals=tree["totals"])


# ---------------------------------------------------------------------------------------------- optimizer


def create_optimizer(*, optimizer: str, learning_rate: float, momentum: float = 0.9,
                     weight_decay: float = 0.0, lr_schedule: str = "constant",
                     warmup_epochs: float = 0.0, num_epochs: int = 1, steps_per_epoch: int = 1,
                     head_lr_multiplier: float = 1.0, freeze: str = "none",
                     head_paths: Sequence[str] = ()):
    """Returns `(tx, schedule)`: an optax transformation and its step -> learning-rate function.

    Fine-tuning (d2l 14.2) splits the params in two groups, the final classifier at `head_paths`
    (the registry's `models.head_paths(name)`) and the backbone: the head trains with
    `head_lr_multiplier` times the schedule's learning rate, and `freeze="backbone"` leaves the
    backbone's params unchanged (`optax.set_to_zero`). Each group gets its own copy of the same
    optimizer (`optax.multi_transform`), so both options compose with every optimizer and schedule;
    `schedule` stays the backbone's. Check the options first with `check_finetune_options`.
    """
    if lr_schedule == "constant":
        schedule = optax.constant_schedule(learning_rate)
    elif lr_schedule == "cosine":
        total = max(1, int(num_epochs * steps_per_epoch))
        warmup = min(int(warmup_epochs * steps_per_epoch), total - 1)
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=learning_rate, warmup_steps=warmup, decay_steps=total)
    else:
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; use one of {', '.join(LR_SCHEDULES)}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    if freeze not in FREEZE:
        raise ValueError(f"unknown freeze {freeze!r}; use one of {', '.join(FREEZE)}")

    def make(rate):
        return _optimizer(optimizer, rate, momentum=momentum, weight_decay=weight_decay)

    if head_lr_multiplier == 1.0 and freeze == "none":
        return make(schedule), schedule
    groups = {"head": make(lambda step: schedule(step) * head_lr_multiplier),
              "backbone": optax.set_to_zero() if freeze == "backbone" else make(schedule)}
    return optax.multi_transform(groups, functools.partial(param_labels, head_paths=head_paths)), schedule


def _optimizer(optimizer: str, schedule, *, momentum: float, weight_decay: float):
    if optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=weight_decay)
    tx = optax.sgd(schedule, momentum=momentum if optimizer != "sgd" else None,
                   nesterov=optimizer == "nesterov")
    if weight_decay:
        tx = optax.chain(optax.add_decayed_weights(weight_decay), tx)  # L2 as in torch.optim.SGD
    return tx


def param_labels(params, head_paths: Sequence[str]):
    """The params tree with "head" at every leaf under one of `head_paths` ("/"-separated, e.g.
    "AuxLogits/fc"), "backbone" elsewhere: optax.multi_transform's labels."""
    heads = [tuple(path.split("/")) for path in head_paths]
    return traverse_util.path_aware_map(
        lambda path, _: "head" if any(tuple(path[:len(h)]) == h for h in heads) else "backbone", params)


def check_finetune_options(*, init_from: str, head_lr_multiplier: float, freeze: str) -> None:
    """Raises UserError, one line, for fine-tuning options that make no sense together."""
    if freeze not in FREEZE:
        raise UserError(f"--config.freeze={freeze!r} is not one of: {', '.join(FREEZE)}")
    if not head_lr_multiplier > 0:
        raise UserError(f"--config.head_lr_multiplier={head_lr_multiplier} must be positive (d2l 14.2 uses 10)")
    if not init_from and head_lr_multiplier != 1.0:
        raise UserError("--config.head_lr_multiplier needs --config.init_from: from scratch there is no "
                        "pretrained backbone for the head to outpace")
    if not init_from and freeze != "none":
        raise UserError("--config.freeze=backbone needs --config.init_from: a frozen random backbone "
                        "learns nothing")


def frozen_batch_stats(batch_stats, freeze: str):
    """A tree like `batch_stats` of bools: True where the statistics stay as loaded. With
    freeze="backbone" that is all of them (no model's head has BatchNorm)."""
    return jax.tree.map(lambda _: freeze == "backbone", batch_stats)


def keep_frozen_batch_stats(old_stats, new_stats, frozen):
    """The batch statistics after a train step: `old_stats` where `frozen` (from `frozen_batch_stats`,
    a Python-bool tree, static under jit) says so, the step's `new_stats` elsewhere."""
    return jax.tree.map(lambda keep, old, new: old if keep else new, frozen, old_stats, new_stats)


def create_train_state(model_name: str, tx, *, input_shape: Sequence[int], seed: int = 0,
                       num_classes: int = 10, dtype=jnp.float32, sync_batch_stats: bool = True,
                       model_overrides: dict | None = None) -> TrainState:
    """The model called `model_name`, initialised from `seed` on one example of `input_shape`
    (H, W, C), with float32 parameters and the optimizer `tx`.

    The model computes in `dtype`; with `sync_batch_stats` its BatchNorm statistics are those of
    the global batch (all devices along the pmap axis). Raises ValueError for an unknown model, a
    bad override or an input below the model's smallest size.
    """
    model = models.create(model_name, num_classes=num_classes, dtype=dtype,
                          batch_norm_axis=AXIS if sync_batch_stats else None,
                          **(model_overrides or {}))
    init = jax.jit(lambda k: model.init(k, jnp.zeros((1, *input_shape), jnp.float32), train=False))
    key = jax.random.PRNGKey(seed)
    if jax.default_backend() == "cpu":
        # The initialisers' random numbers take XLA:CPU long to optimise (20 s for GoogLeNet) and
        # run once: compile them without optimisation.
        init = init.lower(key).compile({"xla_backend_optimization_level": 0,
                                        "xla_llvm_disable_expensive_passes": True})
    variables = init(key)
    state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                              batch_stats=variables.get("batch_stats", {}))
    return state.replace(step=np.int32(0))


# ----------------------------------------------------------------------------------------------- the step


def preprocess(images, image_size: int, dtype) -> jax.Array:
    """uint8 NHWC -> pixels / 255, bilinearly resized to image_size x image_size, in the compute dtype."""
    x = images.astype(jnp.float32) / 255.0
    n, h, w, c = x.shape
    if (h, w) != (image_size, image_size):
        x = jax.image.resize(x, (n, image_size, image_size, c), "bilinear")
    return x.astype(dtype)


def train_step(state: TrainState, images, labels, dropout_key, *, image_size: int, dtype,
               sync_batch_stats: bool, enabled=True):
    """One optimizer step (any optax transformation) on this device's slice of the global batch,
    inside pmap.

    Returns `(state, metrics, applied)`: gradients, loss and (without cross-replica BatchNorm) the
    batch statistics are averaged over all devices; `metrics` are this step's global sums. The
    update is applied only if the global loss and gradient are finite and `enabled` is true;
    otherwise `state` comes back unchanged and `applied` is False.
    """
    x = preprocess(images, image_size, dtype)

    def loss_fn(params):
        logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x,
                                         train=True, rngs={"dropout": dropout_key},
                                         mutable=["batch_stats"])
        new_stats = updates.get("batch_stats", {})
        logits = logits.astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, (logits, new_stats)

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = lax.pmean(grads, AXIS)
    if not sync_batch_stats:
        new_stats = lax.pmean(new_stats, AXIS)  # per-device statistics, kept identical on all replicas
    metrics = lax.psum({
        "loss_sum": loss * labels.shape[0],
        "correct": jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.int32),
        "count": jnp.int32(labels.shape[0]),
    }, AXIS)
    applied = (jnp.isfinite(metrics["loss_sum"]) & jnp.isfinite(optax.tree.norm(grads))
               & enabled)
    state = lax.cond(applied,
                     lambda: state.apply_gradients(grads=grads, batch_stats=new_stats),
                     lambda: state)
    return state, metrics, applied


def zero_totals() -> dict:
    """Running sums of an epoch (identical on every device). bad_step: first non-finite step, or -1."""
    return {"loss_sum": np.float32(0), "correct": np.int32(0), "count": np.int32(0),
            "bad_step": np.int32(-1)}


def counted_train_step(state: RunState, images, labels, step_kwargs) -> RunState:
    """A train step that adds to the epoch's totals; after a non-finite step, nothing changes.
    Dropout's key is the run's, folded with the step and the device's position."""
    train, totals = state.train, state.totals
    key = jax.random.fold_in(jax.random.fold_in(state.dropout_key, train.step),
                             lax.axis_index(AXIS))
    healthy = totals["bad_step"] < 0
    new_train, metrics, applied = train_step(train, images, labels, key, enabled=healthy,
                                             **step_kwargs)
    totals = {
        "loss_sum": totals["loss_sum"] + jnp.where(applied, metrics["loss_sum"], 0.0),
        "correct": totals["correct"] + jnp.where(applied, metrics["correct"], 0),
        "count": totals["count"] + jnp.where(applied, metrics["count"], 0),
        "bad_step": jnp.where(healthy & ~applied, train.step.astype(jnp.int32),
                              totals["bad_step"]),
    }
    return state.replace(train=new_train, totals=totals)


# ----------------------------------------------------------------------------------- compiled functions


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What the compiled functions close over (changing any of it means a new compilation).

    device_loop: run a chunk of steps as one `lax.while_loop` on the device (one dispatch per
    chunk; best on GPU/TPU), or dispatch one compiled step per step without waiting for it (XLA:CPU
    runs convolutions inside loop bodies several times slower, so this is the CPU default).
    """
    image_size: int
    dtype: Any
    batch_per_device: int
    eval_batch_per_device: int
    sync_batch_stats: bool = True
    device_loop: bool = dataclasses.field(default_factory=lambda: jax.default_backend() != "cpu")

    @property
    def step_kwargs(self):
        return dict(image_size=self.image_size, dtype=self.dtype,
                    sync_batch_stats=self.sync_batch_stats)


def make_train_chunk(cfg: StepConfig, devices=None):
    """`chunk(state, images, labels, perm, start, num_steps) -> state` for a replicated RunState.

    Runs steps start .. start+num_steps-1 of the epoch (all of them pmapped, none waited for).
    `images`/`labels` are the whole training set on every device (of every process), `perm` the
    epoch's order; step `i` trains on the global batch `perm[i*B : (i+1)*B]` and the device at
    position `d` of the pmap (all processes' devices) takes `perm[i*B + d*b : ... + b]`, so a step's
    global batch depends neither on the device count nor on the process count.
    """
    b = cfg.batch_per_device
    positions = example_positions(b, len(devices) if devices else jax.device_count())

    def batch_at(images, labels, perm, i):  # the position comes from the pmap axis
        idx = perm[positions(i)]
        return images[idx], labels[idx]

    if cfg.device_loop:
        def loop(state, images, labels, perm, start, num_steps):
            def body(carry):
                i, state = carry
                batch = batch_at(images, labels, perm, i)
                return i + 1, counted_train_step(state, *batch, cfg.step_kwargs)

            def cond(carry):
                i, state = carry
                return (i < start + num_steps) & (state.totals["bad_step"] < 0)

            return lax.while_loop(cond, body, (jnp.int32(start), state))[1]

        return jax.pmap(loop, AXIS, in_axes=(0, 0, 0, 0, None, None), devices=devices,
                        donate_argnums=(0,))

    def one_step(state, images, labels, perm, i):
        return counted_train_step(state, *batch_at(images, labels, perm, i), cfg.step_kwargs)

    step = jax.pmap(one_step, AXIS, in_axes=(0, 0, 0, 0, None), devices=devices,
                    donate_argnums=(0,))

    def dispatch(state, images, labels, perm, start, num_steps):
        for i in range(start, start + num_steps):
            state = step(state, images, labels, perm, np.int32(i))
        return state

    return dispatch


def example_positions(batch_per_device: int, num_devices: int):
    """Inside pmap: `positions(i)`, where in the epoch's order this device's examples of step `i`
    are (its part of the global batch)."""

    def positions(i):
        first = (i * num_devices + lax.axis_index(AXIS)) * batch_per_device
        return first + jnp.arange(batch_per_device)

    return positions


def make_train_batch(cfg: StepConfig, devices=None):
    """pmapped `(state, images, labels) -> state`: one step on a streamed batch (b, H, W, C) on
    each device."""

    def one_step(state, images, labels):
        return counted_train_step(state, images, labels, cfg.step_kwargs)

    return jax.pmap(one_step, AXIS, devices=devices, donate_argnums=(0,))


def _eval_logits(state, images, image_size, dtype):
    x = preprocess(images, image_size, dtype)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return state.apply_fn(variables, x, train=False).astype(jnp.float32)


def _eval_sums(logits, labels, mask):
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    preds = jnp.argmax(logits, -1).astype(jnp.int32)
    return {"loss_sum": jnp.sum(jnp.where(mask, losses, 0.0)),
            "correct": jnp.sum((preds == labels) & mask).astype(jnp.int32),
            "count": jnp.sum(mask).astype(jnp.int32)}, preds


def make_evaluate(cfg: StepConfig, devices=None):
    """pmapped `(state, images, labels, local_index, num_steps)` -> (global sums, predictions).

    Covers each of the N on-device test examples exactly once: step s of device d takes examples
    (s*local_devices + d)*e .. +e, clipped and masked past N. `num_steps` must be the same on every
    process. Predictions come back per device as (num_steps, e), in that order.
    """
    e = cfg.eval_batch_per_device
    local_devices = len(devices) if devices else jax.local_device_count()

    def evaluate(state, images, labels, local_index, num_steps):
        n = images.shape[0]

        def body(s, carry):
            sums, preds = carry
            idx = (s * local_devices + local_index) * e + jnp.arange(e)
            mask = idx < n
            idx = jnp.minimum(idx, n - 1)
            logits = _eval_logits(state, images[idx], cfg.image_size, cfg.dtype)
            step_sums, step_preds = _eval_sums(logits, labels[idx], mask)
            sums = jax.tree.map(jnp.add, sums, step_sums)
            return sums, preds.at[s].set(step_preds)

        zeros = {"loss_sum": jnp.float32(0), "correct": jnp.int32(0), "count": jnp.int32(0)}
        sums, preds = lax.fori_loop(0, num_steps, body,
                                    (zeros, jnp.zeros((num_steps, e), jnp.int32)))
        return lax.psum(sums, AXIS), preds

    return jax.pmap(evaluate, AXIS, in_axes=(0, 0, 0, 0, None), static_broadcasted_argnums=(4,),
                    devices=devices)


def make_evaluate_batch(cfg: StepConfig, devices=None):
    """pmapped `(state, images, labels, mask)` for streamed test batches -> (global sums, predictions)."""

    def evaluate(state, images, labels, mask):
        sums, preds = _eval_sums(_eval_logits(state, images, cfg.image_size, cfg.dtype), labels, mask)
        return lax.psum(sums, AXIS), preds

    return jax.pmap(evaluate, AXIS, devices=devices)
