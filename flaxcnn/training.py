"""Data-parallel training: the optimizer, the run's state, and the jitted, `jax.pmap`-ped steps.

Everything here runs on whatever `jax.local_devices()` holds (one CPU is the case N=1) and imports no
TensorFlow, so `flaxcnn.bench` times exactly the code `train.py` trains with. Moving state between
the host and the devices is `flaxcnn.replicas`' job; the process's settings are `flaxcnn.runtime`'s.

Images reach the step as uint8 and become its inputs inside it (scaled to [0, 1], resized,
augmented and normalized: `flaxcnn.augment`). For data held on the
devices, a "chunk" of steps gathers each step's batch on device and runs as one `lax.while_loop` inside
one pmapped call, so the host touches the devices about once a second, never once a step
(`flaxcnn.pipelines` drives both kinds of input).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state
from jax import lax

from flaxcnn import augment, models
from flaxcnn.replicas import AXIS


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


# -------------------------------------------------------------------------------------------- the state


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
    return TrainState(step=np.int32(0), apply_fn=model.apply, params=variables["params"], tx=tx,
                      opt_state=fresh_opt_state(tx, variables["params"]),
                      batch_stats=variables.get("batch_stats", {}))


def fresh_opt_state(tx, params):
    """`tx.init(params)` as one compiled program, not one per parameter shape run eagerly (Adam's
    zeros: some 60 programs for GoogLeNet)."""
    return jax.jit(tx.init)(params)


# ----------------------------------------------------------------------------------------------- the step


def train_step(state: TrainState, x, labels, mask, dropout_key, *, sync_batch_stats: bool,
               freeze: str = "none", enabled=True):
    """One optimizer step (any optax transformation) on this device's slice of the global batch
    (`x`: its inputs, as `flaxcnn.augment.train_images` makes them; `mask`: which of them are
    real examples, the rest padding an epoch's last batch to the compiled shape), inside pmap.

    Only real examples count, as if the batch held them alone (d2l's last partial batch): the
    loss is the mean over the global batch's real examples, the gradient its gradient, and
    BatchNorm's statistics are theirs (the network's `mask`). Returns `(state, metrics,
    applied)`: `metrics` are this step's global sums over the real examples; without
    cross-replica BatchNorm, the running statistics are averaged over the devices that hold real
    examples. With freeze="backbone" (fine-tuning) the BatchNorm statistics stay as loaded (the
    layers still normalize with the batch's, as torch's do in train mode). The update is applied
    only if the global loss and gradient are finite and `enabled` is true; otherwise `state`
    comes back unchanged and `applied` is False.
    """
    count = lax.psum(jnp.sum(mask, dtype=jnp.int32), AXIS)
    network_mask = {"mask": mask} if state.batch_stats else {}

    def loss_fn(params):
        logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x,
                                         train=True, rngs={"dropout": dropout_key},
                                         mutable=["batch_stats"], **network_mask)
        new_stats = updates.get("batch_stats", {})
        logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        loss_sum = jnp.sum(jnp.where(mask, losses, 0.0))
        return loss_sum / count.astype(loss_sum.dtype), (loss_sum, logits, new_stats)

    (_, (loss_sum, logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    grads = lax.psum(grads, AXIS)  # each device's part of the global mean's gradient
    if not sync_batch_stats:  # per-device statistics, kept identical on all replicas
        holds_examples = jnp.any(mask)
        new_stats = jax.tree.map(
            lambda s: lax.psum(jnp.where(holds_examples, s, 0), AXIS)
            / lax.psum(holds_examples.astype(s.dtype), AXIS), new_stats)
    if freeze == "backbone":
        new_stats = state.batch_stats
    metrics = lax.psum({
        "loss_sum": loss_sum,
        "correct": jnp.sum((jnp.argmax(logits, -1) == labels) & mask).astype(jnp.int32),
    }, AXIS) | {"count": count}
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


def counted_train_step(state: RunState, images, labels, mask, step_kwargs) -> RunState:
    """A train step on uint8 `images` (`mask`: the real ones) that adds to the epoch's totals;
    after a non-finite step, nothing changes. Dropout's key is the run's, folded with the step and
    the device's position; augmentation's comes from the data key and the step, and each
    example's from its position in the global batch, so neither depends on the device count."""
    train, totals = state.train, state.totals
    key = jax.random.fold_in(jax.random.fold_in(state.dropout_key, train.step),
                             lax.axis_index(AXIS))
    x = augment.train_images(images, augment.augment_key(state.data_key, train.step),
                             first_index=lax.axis_index(AXIS) * images.shape[0],
                             **step_kwargs["inputs"])
    healthy = totals["bad_step"] < 0
    new_train, metrics, applied = train_step(train, x, labels, mask, key, enabled=healthy,
                                             **step_kwargs["step"])
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
    augment: str = "none"  # flaxcnn.augment's choices
    normalize: str = "none"
    freeze: str = "none"  # flaxcnn.optimizers.FREEZE
    device_loop: bool = dataclasses.field(default_factory=lambda: jax.default_backend() != "cpu")

    @property
    def input_kwargs(self) -> dict:
        """How uint8 images become inputs (flaxcnn.augment.train_images and eval_images)."""
        return dict(image_size=self.image_size, augment=self.augment, normalize=self.normalize,
                    dtype=self.dtype)

    @property
    def step_kwargs(self) -> dict:
        """`counted_train_step`'s: the inputs' and train_step's settings."""
        return {"inputs": self.input_kwargs,
                "step": dict(sync_batch_stats=self.sync_batch_stats, freeze=self.freeze)}


def make_train_chunk(cfg: StepConfig, devices=None):
    """`chunk(state, images, labels, perm, start, num_steps) -> state` for a replicated RunState.

    Runs steps start .. start+num_steps-1 of the epoch (all of them pmapped, none waited for).
    `images`/`labels` are the whole training set on every device (of every process), `perm` the
    epoch's order; step `i` trains on the global batch `perm[i*B : (i+1)*B]` and the device at
    position `d` of the pmap (all processes' devices) takes `perm[i*B + d*b : ... + b]`, so a step's
    global batch depends neither on the device count nor on the process count. The epoch's last
    batch is cut short by the end of `perm` (d2l's last partial batch): positions past it are
    padding, masked out.
    """
    b = cfg.batch_per_device
    positions = example_positions(b, len(devices) if devices else jax.device_count())

    def batch_at(images, labels, perm, i):  # the position comes from the pmap axis
        idx, mask = examples_at(perm, positions(i))
        return images[idx], labels[idx], mask

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


def examples_at(perm, positions):
    """`(indices, mask)`: the examples at `positions` of the epoch's order `perm`; positions past
    its end (padding of the epoch's last batch) are masked out (their index is a valid one)."""
    return perm[jnp.minimum(positions, len(perm) - 1)], positions < len(perm)


def make_train_batch(cfg: StepConfig, devices=None):
    """pmapped `(state, images, labels, mask) -> state`: one step on a streamed batch (b, H, W, C)
    on each device, `mask` (b,) marking its real examples."""

    def one_step(state, images, labels, mask):
        return counted_train_step(state, images, labels, mask, cfg.step_kwargs)

    return jax.pmap(one_step, AXIS, devices=devices, donate_argnums=(0,))


def _eval_logits(state, images, input_kwargs):
    x = augment.eval_images(images, **input_kwargs)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return state.apply_fn(variables, x, train=False).astype(jnp.float32)


def _eval_sums(logits, labels, mask):
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    preds = jnp.argmax(logits, -1).astype(jnp.int32)
    return {"loss_sum": jnp.sum(jnp.where(mask, losses, 0.0)),
            "correct": jnp.sum((preds == labels) & mask).astype(jnp.int32),
            "count": jnp.sum(mask).astype(jnp.int32)}, preds


def make_evaluate(cfg: StepConfig, devices=None):
    """pmapped `(state, images, labels, local_index, num_real, num_steps)` -> (global sums,
    predictions).

    Covers each of the first `num_real` on-device test examples exactly once: step s of device d
    takes examples (s*local_devices + d)*e .. +e, clipped and masked from `num_real` on.
    `num_steps` and the arrays' shapes must be the same on every process (a program compiled for
    other shapes runs other collectives, and since jax 0.12.1 the processes wait for each other
    forever), so a process's smaller test shard comes padded and `num_real` (an int32, broadcast)
    says how much of it is real. Predictions come back per device as (num_steps, e), in that order.
    """
    e = cfg.eval_batch_per_device
    local_devices = len(devices) if devices else jax.local_device_count()

    def evaluate(state, images, labels, local_index, num_real, num_steps):
        def body(s, carry):
            sums, preds = carry
            idx = (s * local_devices + local_index) * e + jnp.arange(e)
            mask = idx < num_real
            idx = jnp.minimum(idx, images.shape[0] - 1)
            logits = _eval_logits(state, images[idx], cfg.input_kwargs)
            step_sums, step_preds = _eval_sums(logits, labels[idx], mask)
            sums = jax.tree.map(jnp.add, sums, step_sums)
            return sums, preds.at[s].set(step_preds)

        zeros = {"loss_sum": jnp.float32(0), "correct": jnp.int32(0), "count": jnp.int32(0)}
        sums, preds = lax.fori_loop(0, num_steps, body,
                                    (zeros, jnp.zeros((num_steps, e), jnp.int32)))
        return lax.psum(sums, AXIS), preds

    return jax.pmap(evaluate, AXIS, in_axes=(0, 0, 0, 0, None, None),
                    static_broadcasted_argnums=(5,), devices=devices)


def make_evaluate_batch(cfg: StepConfig, devices=None):
    """pmapped `(state, images, labels, mask)` for streamed test batches -> (global sums, predictions)."""

    def evaluate(state, images, labels, mask):
        sums, preds = _eval_sums(_eval_logits(state, images, cfg.input_kwargs), labels, mask)
        return lax.psum(sums, AXIS), preds

    return jax.pmap(evaluate, AXIS, devices=devices)
