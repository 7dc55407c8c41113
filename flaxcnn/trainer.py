"""`train_and_evaluate(config, workdir)`: one training run, in stages, each a function called in order.

1. `check_config` (flaxcnn.config_check): unknown choices and out-of-range numbers are refused,
   and every process must have the same config, before any work starts.
2. `claim_workdir`: the workdir is made writable and locked (one run per workdir), and the resume
   decision is made (`checkpoint.decide_resume`): its refusals come before any data is read.
3. `resolve_dataset`: the dataset, resolved once (process 0 first: it prepares a shared data_dir).
4. `build_run`: model, optimizer and a fresh `training.RunState` (train state, keys, running sums).
5. `checkpoint.restore_newest`: the newest good checkpoint restored into it, when resuming. A run
   that has already trained its epochs stops here with one line (`already_trained`); the others
   print their header (`announce_run`: where, what, on what, how; a warning when an epoch has too
   few steps to learn in) and, resuming, the checkpoint and the settings changed since.
6. `build_pipeline`: the data on the devices while it fits their budget, else the host stream
   (tf.data only for tfds datasets only it reads); one line says which, and why.
7. `EpochLoop.train`: chunks of steps, an evaluation of every test example each epoch, the epoch's
   outputs (`flaxcnn.outputs`) and checkpoint; a signal stops it with a checkpoint saved; then the
   last pictures and where the time went (`runtime.Chrono`); last, the workdir and what is in it.

Where the run is comes from the step alone: epoch = step // steps_per_epoch (the batch size and the
dataset, hence steps_per_epoch, cannot change on resume).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from flaxcnn import (augment, checkpoint, cluster, datasets, models, optimizers, pipelines,
                     pretrained, replicas, runtime, summary, training)
from flaxcnn.checkpoint import Checkpoints
from flaxcnn.config_check import check_config
from flaxcnn.errors import UserError, first_line, warn
from flaxcnn.outputs import EpochProgress, Outputs, mean_loss_and_accuracy
from flaxcnn.workdir_lock import WorkdirLock


class Interrupted(Exception):
    """A signal stopped the run after it saved a checkpoint; `exit_code` is 128 + the signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


def train_and_evaluate(config, workdir, on_epoch: Callable[[list[dict]], None] | None = None) -> dict:
    """Trains `config` in `workdir`, resuming what is there, and returns the last epoch's metrics
    (with eval_only: evaluates the newest checkpoint and returns that record). `on_epoch`, if
    given, is called on process 0 after each epoch with every epoch's record so far (metrics.jsonl's
    rows; the notebooks redraw their plot with it).

    Raises UserError (one line, nothing lost) for bad input, and Interrupted after a SIGTERM or
    Ctrl-C once the checkpoint is saved.
    """
    workdir, chrono = Path(workdir), runtime.Chrono()
    cluster.check_same_config(config, workdir)
    check_config(config, jax.device_count())
    with contextlib.ExitStack() as stack:
        checkpoints = stack.enter_context(claim_workdir(config, workdir))
        resuming = checkpoint.decide_resume(config, workdir, checkpoints)
        dataset = resolve_dataset(config)
        run = build_run(config, dataset, resuming)
        state = checkpoint.restore_newest(checkpoints, run.fresh) if resuming else run.fresh
        finished = position(state.train.step, run.steps_per_epoch)[0]
        if resuming and finished >= config.num_epochs and not config.eval_only:
            return already_trained(workdir, finished)
        announce_run(config, workdir, dataset.info, run)
        if resuming:
            announce_resume(checkpoints, int(state.train.step), run.steps_per_epoch,
                            checkpoint.changed_settings(config, workdir))
        cluster.sync("restored")  # everyone read the workdir before process 0 rewrites it
        pipeline = build_pipeline(config, dataset, run.steps_per_epoch)
        saved_step = int(state.train.step) if resuming else None
        state = replicas.replicate(state)
        if config.eval_only:
            record = evaluate_checkpoint(workdir, pipeline, state, run.steps_per_epoch)
        else:
            outputs = stack.enter_context(Outputs(config, workdir, dataset.info))
            signals = stack.enter_context(runtime.Signals())
            loop = EpochLoop(config, run, pipeline, checkpoints, outputs, signals, chrono,
                             saved_step, on_epoch)
            record = loop.train(state)
    announce_contents(workdir)
    return record


# ---------------------------------------------------------------------------- 2. claim the workdir


@contextlib.contextmanager
def claim_workdir(config, workdir: Path):
    """The run's checkpoints in `workdir`, which process 0 makes writable and locks for the whole
    run (the other processes share its workdir); on leaving, the last checkpoint write is waited for
    and the lock released. A run that fails before it has anything to resume from (a mistake in
    the command, Ctrl-C while loading) takes back what it made, while it still holds the lock: the
    workdir if it created it, lock file and all, else the files it added there."""
    with contextlib.ExitStack() as stack:
        if jax.process_index() == 0:
            created = not workdir.exists()
            checkpoint.require_writable(workdir)
            before = set(os.listdir(workdir))
            stack.enter_context(WorkdirLock.acquire(workdir))

            def on_leaving(error_type, *_):  # returns None: an error goes on up
                if error_type is not None:
                    take_back(workdir, None if created else before)
            stack.push(on_leaving)
        yield stack.enter_context(Checkpoints(workdir, max_to_keep=config.max_checkpoints))


def take_back(workdir: Path, before: set[str] | None):
    """After a failed run: unless `workdir` holds a checkpoint or a finished epoch's line in
    metrics.jsonl, removes it (`before` None: the run created it) or the entries of it that are not
    in `before`."""
    metrics = workdir / "metrics.jsonl"
    if Checkpoints(workdir).exists() or (metrics.exists() and metrics.stat().st_size > 0):
        return
    added = [workdir] if before is None else [workdir / name for name in
                                               set(os.listdir(workdir)) - before]
    for path in added:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- 3. resolve the data


def resolve_dataset(config):
    """The dataset, resolved by process 0 first (it prepares a shared data_dir alone), then by the
    other processes."""
    dataset = None
    for turn in ("first", "then"):
        if (turn == "first") == (jax.process_index() == 0):
            dataset = datasets.resolve(
                config.dataset, data_dir=config.data_dir or None, idx_dir=config.idx_dir or None,
                process_index=jax.process_index(), process_count=jax.process_count(),
                folder_store_size=config.folder_store_size, folder_skip_bad=config.folder_skip_bad,
                progress=config.progress and jax.process_index() == 0)
        cluster.sync(f"dataset {turn}")
    return dataset


# ------------------------------------------------------------- 4. model, optimizer, fresh RunState


@dataclasses.dataclass(frozen=True)
class Run:
    """What the run trains: its steps per epoch, its learning-rate schedule and the RunState a fresh
    start begins from (its train state holds the model's apply function and the optimizer)."""
    steps_per_epoch: int
    schedule: Callable[[int], float]
    fresh: training.RunState


def build_run(config, dataset, resuming: bool) -> Run:
    """Steps per epoch, the optimizer and the fresh RunState: from the model's own initialisation,
    or, for a fresh start with init_from, from those weights fitted to the run's task (a resumed
    run ignores init_from: its checkpoint holds where it got to)."""
    info = dataset.info
    augment.check_settings(config.augment, input_normalization(config), info.channels)
    local_batch = config.batch_size // jax.process_count()
    steps_per_epoch = dataset.train_batches_per_epoch(local_batch)
    if info.num_train < config.batch_size and not config.eval_only:
        per_process = info.num_train // jax.process_count()
        where = f" ({per_process} per process)" if jax.process_count() > 1 else ""
        raise UserError(f"{info.name} has {info.num_train} training examples{where}, fewer than "
                        f"one batch of {config.batch_size}: set --config.batch_size to at most "
                        f"{per_process * jax.process_count()}, or add examples")
    tx, schedule = optimizers.create_optimizer(
        optimizer=config.optimizer, learning_rate=config.learning_rate, momentum=config.momentum,
        weight_decay=config.weight_decay, lr_schedule=config.lr_schedule,
        warmup_epochs=config.warmup_epochs, num_epochs=config.num_epochs,
        steps_per_epoch=max(steps_per_epoch, 1), head_lr_multiplier=config.head_lr_multiplier,
        freeze=config.freeze, head_paths=models.head_paths(config.model))
    overrides = config.model_overrides.to_dict()
    if config.init_from:  # e.g. Inception-v3's transform_input, which its ImageNet weights need
        overrides = {**pretrained.model_fields(config.model, info.channels), **overrides}
    try:
        train_state = training.create_train_state(
            config.model, tx, input_shape=(config.image_size, config.image_size, info.channels),
            seed=config.seed, num_classes=info.num_classes, dtype=getattr(jnp, config.dtype),
            sync_batch_stats=config.sync_batch_stats, model_overrides=overrides)
    except ValueError as e:  # an unknown field, or the model's input-size check
        raise UserError(first_line(e)) from None
    except TypeError as e:  # a field's value of the wrong kind
        raise UserError(f"model {config.model!r} cannot be built with model_overrides "
                        f"{config.model_overrides.to_dict()} ({first_line(e)}); see its fields' "
                        "types in flaxcnn/models/") from None
    if config.init_from and not resuming:
        train_state = start_from_weights(config, train_state)
    return Run(steps_per_epoch, schedule, training.RunState.fresh(train_state, config.seed))


def start_from_weights(config, train_state: training.TrainState) -> training.TrainState:
    """`train_state` with the variables of config.init_from, fitted to the run's classes and
    channels (flaxcnn.pretrained), and a fresh optimizer state for them."""
    loaded = pretrained.load(config.model, config.init_from, **config.model_overrides.to_dict())
    start = pretrained.fit_to_task(config.model, loaded, {"params": train_state.params,
                                                          "batch_stats": train_state.batch_stats})
    if jax.process_index() == 0:
        print(f"starting from the weights of {config.init_from}; inputs normalized: "
              f"{input_normalization(config)} (--config.normalize)", flush=True)
    return train_state.replace(params=start["params"], batch_stats=start.get("batch_stats", {}),
                               opt_state=training.fresh_opt_state(train_state.tx,
                                                                  start["params"]))


def input_normalization(config) -> str:
    return augment.resolve_normalize(config.normalize, config.init_from)


def position(step: int, steps_per_epoch: int) -> tuple[int, int]:
    """(finished epochs, steps into the next one) at `step`."""
    return divmod(int(step), max(steps_per_epoch, 1))


def announce_run(config, workdir: Path, info, run: Run):
    """The run's header: where it writes, what it trains on what, and how; and a warning when an
    epoch has so few steps that the model can hardly learn (a small dataset at a large batch)."""
    if jax.process_index() != 0:
        return
    train = run.fresh.train
    statistics = summary.param_count(train.batch_stats)
    devices = jax.devices()
    processes = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
    print(f"workdir   {workdir}\n"
          f"model     {config.model}: {summary.param_count(train.params):,} parameters"
          + (f" (+ {statistics:,} BatchNorm statistics)" if statistics else "")
          + f", {config.image_size}x{config.image_size}x{info.channels} inputs\n"
          f"data      {info.name}: {info.num_train:,} training and {info.num_test:,} test "
          f"images, {info.num_classes} classes\n"
          f"training  batch {config.batch_size} (global), {run.steps_per_epoch} steps an epoch, "
          f"{config.num_epochs} epochs, {config.optimizer} at lr {config.learning_rate}\n"
          f"devices   {len(devices)} x {devices[0].device_kind}{processes}", flush=True)
    if run.steps_per_epoch < FEW_STEPS and not config.eval_only:
        warn(f"only {run.steps_per_epoch} steps an epoch ({info.num_train:,} training images at "
             f"batch {config.batch_size}): too few for a model to learn much; "
             f"--config.batch_size={batch_for_steps(info.num_train, FEW_STEPS)} or smaller gives "
             f"{FEW_STEPS} or more")


FEW_STEPS = 10  # fewer steps an epoch than this, and the header warns


def batch_for_steps(num_train: int, steps: int) -> int:
    """The largest global batch (a multiple of the device count) that gives `steps` steps an
    epoch of `num_train` examples, or the device count if none does."""
    count = jax.device_count()
    return max(num_train // steps // count, 1) * count


def already_trained(workdir: Path, epochs: int) -> dict:
    """A finished workdir run again: one line, nothing changed; its last epoch's record."""
    if jax.process_index() == 0:
        print(f"{workdir} already trained {epochs} epochs; raise --config.num_epochs to go on, "
              "or use another --workdir", flush=True)
    lines = (workdir / "metrics.jsonl").read_text().splitlines() \
        if (workdir / "metrics.jsonl").exists() else []
    return json.loads(lines[-1]) if lines else {"epoch": epochs}


def announce_contents(workdir: Path):
    """The run's last line: where it is and what is in it."""
    if jax.process_index() != 0 or not workdir.is_dir():
        return
    entries = sorted(p for p in workdir.iterdir() if not p.name.startswith("."))
    names = [p.name + ("/" if p.is_dir() else "") for p in entries
             if not p.name.startswith("events.out.tfevents.")]
    if len(names) < len(entries):
        names.append("events.out.tfevents.* (TensorBoard: tensorboard --logdir "
                     f"{workdir})")
    print(f"the run is in {workdir}: {', '.join(names)}", flush=True)


def announce_resume(checkpoints: Checkpoints, step: int, steps_per_epoch: int, changed: list[str]):
    if jax.process_index() == 0:
        epoch, step_in_epoch = position(step, steps_per_epoch)
        print(f"resuming from checkpoint {checkpoints.directory / str(step)}: step {step}, epoch "
              f"{epoch}" + (f" + {step_in_epoch} steps" if step_in_epoch else "")
              + ("; changed from the checkpointed run: " + ", ".join(changed) if changed else ""),
              flush=True)


# ------------------------------------------------------------------------------- 6. the pipeline


def build_pipeline(config, dataset, steps_per_epoch: int):
    """The device pipeline while the data fits --config.device_data_budget_mb, else (or with
    input_pipeline=stream) the host stream; tf.data only for the tfds datasets that only it reads
    (no random access). Process 0 prints the route, why, and the memory and disk it uses."""
    info, kind = dataset.info, config.input_pipeline
    nbytes, budget = info.nbytes_in_memory, config.device_data_budget_mb << 20
    if kind == "auto":
        fits = nbytes is not None and nbytes <= budget
        kind = "device" if fits else "stream"
        why = (f"{_size(nbytes)} of uint8 {'fits' if fits else 'is over'} the device budget of "
               f"{_size(budget)}, --config.device_data_budget_mb" if nbytes is not None
               else "images of varying size")
    else:
        why = f"--config.input_pipeline={kind}"
    eval_batch = config.eval_batch_size or config.batch_size
    cfg = training.StepConfig(
        image_size=config.image_size, dtype=getattr(jnp, config.dtype),
        batch_per_device=config.batch_size // jax.device_count(),
        eval_batch_per_device=eval_batch // jax.device_count(),
        sync_batch_stats=config.sync_batch_stats, augment=config.augment,
        normalize=input_normalization(config), freeze=config.freeze)
    storage = getattr(dataset, "storage", "read by tf.data")
    if kind == "stream" and hasattr(dataset, "examples"):
        pipeline = pipelines.HostStreamPipeline(
            dataset.examples("train", whole=True), dataset.examples("test"), cfg,
            steps_per_epoch=steps_per_epoch, num_test=info.num_test)
        ahead = pipeline.read_ahead_bytes(info.image_shape)
        route = (f"host stream (grain; {why}): data {storage}; host memory for batches read "
                 f"ahead: {ahead / 2**20:.0f} MiB")
    elif kind == "stream":
        pipeline = pipelines.StreamPipeline(dataset, cfg, steps_per_epoch=steps_per_epoch,
                                            seed=config.seed)
        route = f"tf.data stream ({why}; a tfds dataset that only tf.data reads): data {storage}"
    else:
        # Every process holds the whole training set and takes its devices' part of each global
        # batch: the order of examples is that of one process, whatever the process count.
        whole = dataclasses.replace(dataset, process_index=0, process_count=1)
        pipeline = pipelines.DevicePipeline(whole.load_arrays("train"),
                                            dataset.load_arrays("test"), cfg,
                                            steps_per_epoch=steps_per_epoch, num_test=info.num_test)
        route = f"device pipeline ({why}): the train set on every device; data {storage}"
    if jax.process_index() == 0:
        print(f"input: {route}", flush=True)
    return pipeline


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


# ------------------------------------------------------------------------------ 7. the epoch loop


def evaluation_record(pipeline, state, steps_per_epoch: int) -> tuple[dict, np.ndarray]:
    """Test loss, accuracy and example count of a replicated RunState, and its predictions."""
    sums, predictions = pipeline.evaluate(state)
    loss, accuracy = mean_loss_and_accuracy(sums)
    step = int(replicas.unreplicate(state.train.step))
    return {"epoch": position(step, steps_per_epoch)[0], "step": step, "test_loss": loss,
            "test_accuracy": accuracy, "test_examples": sums["count"]}, predictions


def evaluate_checkpoint(workdir: Path, pipeline, state, steps_per_epoch: int) -> dict:
    """eval_only: evaluates the restored checkpoint and appends the result to eval.jsonl."""
    t0 = time.perf_counter()
    record, _ = evaluation_record(pipeline, state, steps_per_epoch)
    record["eval_seconds"] = time.perf_counter() - t0
    if jax.process_index() != 0:
        return record
    print(f"evaluated the checkpoint of epoch {record['epoch']} (step {record['step']}): "
          f"test loss {record['test_loss']:.4f}  test acc {record['test_accuracy']:.4f}  "
          f"over {record['test_examples']} test examples", flush=True)
    Outputs.append_line(workdir / "eval.jsonl", record)
    return record


@dataclasses.dataclass
class EpochLoop:
    """Trains the run's remaining epochs. After each: an evaluation of every test example, the
    epoch's outputs and (every checkpoint_every_epochs) a checkpoint. A signal stops it after the
    current chunk of steps with a checkpoint saved (Interrupted)."""
    config: object
    run: Run
    pipeline: object
    checkpoints: Checkpoints
    outputs: Outputs
    signals: runtime.Signals
    chrono: runtime.Chrono
    saved_step: int | None  # the newest step already in a checkpoint
    on_epoch: Callable[[list[dict]], None] | None = None

    def train(self, state) -> dict:
        """Trains from the replicated RunState `state` to the last epoch; returns its record."""
        config, record, predictions = self.config, None, None
        self.outputs.start(self.position(state)[0], resumed=self.saved_step is not None)
        while self.position(state)[0] < config.num_epochs:
            t0, start_step = time.perf_counter(), self.position(state)[1]
            state, stopped = self.train_steps(state)
            if stopped:
                self.stop(state)
            state, record, predictions = self.end_epoch(state, t0, start_step)
            if cluster.any_process(self.signals.received is not None):
                self.stop(state)
        with self.chrono.measure("outputs_and_checkpoints"):
            self.save(state)
            if record is None:  # nothing left to train: the pictures show the restored model
                evaluated, predictions = evaluation_record(self.pipeline, state,
                                                           self.run.steps_per_epoch)
                record = (self.outputs.records() or [evaluated])[-1]
            images, indices, labels = self.pipeline.preview(self.outputs.preview_count,
                                                            self.outputs.info.num_classes)
            self.outputs.finish(images, indices, labels, predictions)
            self.outputs.wait_for_pictures()
        self.outputs.print_verdict(record)
        self.outputs.record_timing(self.chrono.report())
        return record

    def position(self, state) -> tuple[int, int]:
        return position(replicas.unreplicate(state.train.step), self.run.steps_per_epoch)

    def train_steps(self, state):
        """The rest of the current epoch's steps: (state, whether a signal stopped them early)."""
        config = self.config
        epoch, start = self.position(state)
        progress = EpochProgress(config.progress and sys.stdout.isatty()
                                 and jax.process_index() == 0,
                                 total=self.run.steps_per_epoch, start=start,
                                 desc=f"epoch {epoch + 1}/{config.num_epochs}",
                                 batch_size=config.batch_size)
        self.chrono.first_step()
        with progress, self.chrono.measure("train"):
            for state, step in self.pipeline.train_chunks(state, epoch=epoch, start_step=start):
                sums = replicas.host_sums(state.totals)
                if sums["bad_step"] >= 0:
                    raise UserError(
                        f"the loss became NaN or infinite at step {sums['bad_step']} (epoch "
                        f"{epoch + 1}); training stopped and the last checkpoint was kept. Try a "
                        f"lower --config.learning_rate (now {config.learning_rate})")
                progress.update(step, sums)
                # A signal may reach one process only: all stop after the same chunk.
                if cluster.any_process(self.signals.received is not None) \
                        and step < self.run.steps_per_epoch:
                    return state, True
        return state, False

    def end_epoch(self, state, t0: float, start_step: int):
        """Evaluates the epoch whose steps (from `start_step` on) began at `t0`, records it and
        saves it when due: (state with the epoch's totals reset, the epoch's record, the test
        predictions)."""
        config, steps_per_epoch = self.config, self.run.steps_per_epoch
        train_seconds = time.perf_counter() - t0
        train_sums = replicas.host_sums(state.totals)
        train_loss, train_accuracy = mean_loss_and_accuracy(train_sums)
        # the examples trained since `start_step` (every step before the last has a full batch)
        examples = train_sums["count"] - start_step * config.batch_size
        with self.chrono.measure("evaluate"):
            test, predictions = evaluation_record(self.pipeline, state, steps_per_epoch)
        state = state.replace(totals=replicas.replicate(training.zero_totals()))
        record = {"epoch": test["epoch"], "step": test["step"],
                  "train_loss": train_loss, "train_accuracy": train_accuracy,
                  "test_loss": test["test_loss"], "test_accuracy": test["test_accuracy"],
                  "test_examples": test["test_examples"],
                  "examples_per_sec": examples / train_seconds,
                  "epoch_seconds": time.perf_counter() - t0,
                  "learning_rate": float(self.run.schedule(test["step"]))}
        with self.chrono.measure("outputs_and_checkpoints"):
            self.outputs.record_epoch(record)
            if test["epoch"] % config.checkpoint_every_epochs == 0:
                self.save(state)
        if self.on_epoch is not None and jax.process_index() == 0:
            self.on_epoch(self.outputs.records())
        return state, record, predictions

    def save(self, state) -> Path:
        """Starts an asynchronous checkpoint of `state`, unless its step is already saved."""
        step = int(replicas.unreplicate(state.train.step))
        if step != self.saved_step:
            self.checkpoints.save(step, replicas.unreplicate(state).to_tree())
            self.saved_step = step
        return self.checkpoints.directory / str(step)

    def stop(self, state):
        """After a signal (here or on another process): saves `state`, waits for the write and
        raises Interrupted."""
        path = self.save(state)
        self.checkpoints.wait()
        step = int(replicas.unreplicate(state.train.step))
        epoch, step_in_epoch = position(step, self.run.steps_per_epoch)
        raise Interrupted(self.signals.received or signal.SIGTERM,  # or another process's
                          f"saved a checkpoint at step {step} (epoch {epoch} + {step_in_epoch} "
                          f"steps) in {path}")
