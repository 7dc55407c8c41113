"""`train_and_evaluate(config, workdir)`: one training run, in stages.

config -> dataset -> pipeline -> the epoch loop <- model / optimizer / checkpoint -> metrics and
pictures. `start` reads top to bottom: the config is checked, the resume decision is made (before
any data is read, so refusals are instant), the dataset is resolved, the model and optimizer are
built, the newest good checkpoint (if any) is restored and the input pipeline is put on the devices.
The epoch loop then trains chunk by chunk, evaluates every test example once per epoch, writes the
outputs (`flaxcnn.outputs`) and saves checkpoints; a signal stops it with a checkpoint saved.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
import signal
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from flaxcnn import checkpoint, cluster, datasets, models, pipelines, training
from flaxcnn.errors import UserError, first_line, warn
from flaxcnn.outputs import EpochProgress, Outputs, mean_loss_and_accuracy
from flaxcnn.phases import phase
from flaxcnn.workdir_lock import WorkdirLock

DTYPES = ("float32", "bfloat16")
PIPELINES = ("auto", "device", "stream")
DEVICE_PIPELINE_MAX_BYTES = 2 << 30  # datasets up to 2 GiB of uint8 live on the accelerators


class Interrupted(Exception):
    """A signal stopped the run after it saved a checkpoint; `exit_code` is 128 + the signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


def train_and_evaluate(config, workdir) -> dict:
    """Trains `config` in `workdir`, resuming what is there, and returns the last epoch's metrics
    (with eval_only: evaluates the newest checkpoint and returns that record).

    Raises UserError (one line, nothing lost) for bad input, and Interrupted after a SIGTERM or
    Ctrl-C once the checkpoint is saved.
    """
    trainer = Trainer(config, Path(workdir))
    try:
        if config.eval_only:
            return trainer.evaluate_checkpoint()
        with Outputs(config, trainer.workdir, trainer.dataset.info) as outputs, \
                Signals() as signals:
            outputs.start(trainer.epoch)
            return trainer.train(outputs, signals)
    finally:  # a failure while closing (a checkpoint write) is raised unless one already is
        trainer.close(quiet=sys.exc_info()[0] is not None)


def check_config(config, device_count: int):
    """Refuses unknown choices, impossible sizes and out-of-range numbers (NaN and infinity
    included) with a one-line UserError, before any work starts."""
    if config.model not in models.names():
        raise UserError(f"unknown model {config.model!r}; use one of: {', '.join(models.names())}")
    for field, allowed in (("optimizer", training.OPTIMIZERS), ("lr_schedule", training.LR_SCHEDULES),
                           ("dtype", DTYPES), ("input_pipeline", PIPELINES)):
        if config[field] not in allowed:
            raise UserError(f"unknown {field} {config[field]!r}; use one of: {', '.join(allowed)}")
    for field, integer, ok, what in NUMERIC_RANGES:
        value = config[field]
        if value is None and field == "reference_accuracy":
            continue
        number = (isinstance(value, numbers.Integral if integer else numbers.Real)
                  and not isinstance(value, bool) and math.isfinite(value))
        if not (number and ok(value)):
            raise UserError(f"--config.{field} must be {what}, got {value!r}")
    for field in ("batch_size", "eval_batch_size"):
        if config[field] % device_count:
            raise UserError(
                f"--config.{field}={config[field]} is not divisible by the {device_count} devices; "
                f"use a multiple of {device_count}")


# (field, whole number?, the range, the rule in words): checked by check_config.
NUMERIC_RANGES = (
    ("batch_size", True, lambda v: v >= 1, "a whole number, at least 1"),
    ("eval_batch_size", True, lambda v: v >= 0, "a whole number, 0 (= batch_size) or more"),
    ("image_size", True, lambda v: v >= 1, "a whole number, at least 1"),
    ("num_epochs", True, lambda v: v >= 0, "a whole number, 0 or more"),
    ("checkpoint_every_epochs", True, lambda v: v >= 1, "a whole number, at least 1"),
    ("max_checkpoints", True, lambda v: v >= 1, "a whole number, at least 1"),
    ("seed", True, lambda v: v >= 0, "a whole number, 0 or more"),
    ("learning_rate", False, lambda v: v > 0, "a finite number above 0, e.g. 0.1"),
    ("momentum", False, lambda v: 0 <= v < 1, "a finite number in [0, 1), e.g. 0.9"),
    ("weight_decay", False, lambda v: v >= 0, "a finite number, 0 or more, e.g. 5e-4"),
    ("warmup_epochs", False, lambda v: v >= 0, "a finite number of epochs, 0 or more"),
    ("reference_accuracy", False, lambda v: 0 <= v <= 1, "an accuracy in [0, 1], or unset"),
)


class Trainer:
    """The state of one run between epochs: train state, position, checkpoints, input pipeline."""

    def __init__(self, config, workdir: Path):
        self.config, self.workdir = config, workdir
        training.compilations()  # counting starts here
        self.seconds = {"train": 0.0, "evaluate": 0.0, "outputs_and_checkpoints": 0.0}
        self.first_step_at = None  # seconds since the process started
        cluster.check_same_config(config, workdir)
        check_config(config, jax.device_count())
        self.lock = None
        if jax.process_index() == 0:  # one lock per run: the other hosts share process 0's workdir
            checkpoint.require_writable(workdir)
            self.lock = WorkdirLock.acquire(workdir)
        try:
            self._start(checkpoint.restore_or_start(config, workdir, self._fresh_tree))
            cluster.sync("restored")  # everyone read the workdir before process 0 rewrites it
        except BaseException:
            self.close(quiet=True)
            raise

    def _start(self, start: checkpoint.Start):
        self.checkpoints, self.saved_step = start.checkpoints, start.restored_step
        self.epoch, self.step_in_epoch = start.epoch, start.step_in_epoch
        tree = start.tree
        self.state = training.replicate(self.state.replace(
            step=tree["step"], params=tree["params"], opt_state=tree["opt_state"],
            batch_stats=tree["batch_stats"]))
        self.totals = training.replicate(tree["totals"])
        self.data_key, self.dropout_key = tree["data_key"], tree["dropout_key"]
        self.pipeline = self._pipeline()

    def _fresh_tree(self) -> dict:
        """Dataset, model and optimizer; the tree of a run that starts now."""
        config = self.config
        for turn in ("first", "then"):  # process 0 prepares a shared data_dir alone, first
            if (turn == "first") == (jax.process_index() == 0):
                self.dataset = datasets.resolve(
                    config.dataset, data_dir=config.data_dir or None,
                    idx_dir=config.idx_dir or None, process_index=jax.process_index(),
                    process_count=jax.process_count())
            cluster.sync(f"dataset {turn}")
        info = self.dataset.info
        local_batch = config.batch_size // jax.process_count()
        self.steps_per_epoch = self.dataset.train_batches_per_epoch(local_batch)
        if self.steps_per_epoch == 0 and not config.eval_only:
            raise UserError(f"the training split has fewer examples per process than one batch "
                            f"of {local_batch}; lower --config.batch_size")
        tx, self.schedule = training.create_optimizer(
            optimizer=config.optimizer, learning_rate=config.learning_rate, momentum=config.momentum,
            weight_decay=config.weight_decay, lr_schedule=config.lr_schedule,
            warmup_epochs=config.warmup_epochs, num_epochs=config.num_epochs,
            steps_per_epoch=max(self.steps_per_epoch, 1))
        try:
            self.state = training.create_train_state(
                config.model, tx, input_shape=(config.image_size, config.image_size, info.channels),
                seed=config.seed, num_classes=info.num_classes, dtype=getattr(jnp, config.dtype),
                sync_batch_stats=config.sync_batch_stats,
                model_overrides=config.model_overrides.to_dict())
        except (ValueError, TypeError) as e:  # a bad override, or the model's input-size check
            raise UserError(first_line(e)) from None
        data_key, dropout_key = jax.random.split(jax.random.PRNGKey(config.seed))
        return checkpoint_tree(self.state, data_key, dropout_key, training.zero_totals())

    def _pipeline(self):
        """The device pipeline for datasets that fit on the devices, else the tf.data stream."""
        config, info = self.config, self.dataset.info
        kind = config.input_pipeline
        if kind == "auto":
            nbytes = info.nbytes_in_memory
            kind = "device" if nbytes is not None and nbytes <= DEVICE_PIPELINE_MAX_BYTES else "stream"
        eval_batch = config.eval_batch_size or config.batch_size
        cfg = training.StepConfig(
            image_size=config.image_size, dtype=getattr(jnp, config.dtype),
            batch_per_device=config.batch_size // jax.device_count(),
            eval_batch_per_device=eval_batch // jax.device_count(),
            sync_batch_stats=config.sync_batch_stats)
        if kind == "stream":
            return pipelines.StreamPipeline(self.dataset, cfg, steps_per_epoch=self.steps_per_epoch,
                                            seed=config.seed, dropout_key=self.dropout_key)
        # Every process holds the whole training set and takes its devices' part of each global
        # batch: the order of examples is that of one process, whatever the process count.
        whole = dataclasses.replace(self.dataset, process_index=0, process_count=1)
        return pipelines.DevicePipeline(
            whole.load_arrays("train"), self.dataset.load_arrays("test"), cfg,
            steps_per_epoch=self.steps_per_epoch, num_test=info.num_test, data_key=self.data_key,
            dropout_key=self.dropout_key)

    def close(self, quiet: bool = False):
        """Waits for the checkpoint being written and lets go of the workdir. A failed write is
        raised, or with `quiet` (another error is already on its way) printed as a warning."""
        try:
            if getattr(self, "checkpoints", None) is not None:
                self.checkpoints.close()
        except UserError as e:
            if not quiet:
                raise
            warn(str(e))
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    @property
    def step(self) -> int:
        return int(training.unreplicate(self.state.step))

    def train(self, outputs: Outputs, signals: Signals) -> dict:
        """The epoch loop: returns the last epoch's record; raises Interrupted on a signal."""
        config, record = self.config, None
        try:
            while self.epoch < config.num_epochs:
                record, predictions = self.train_epoch(signals)
                t0 = time.perf_counter()
                outputs.record_epoch(record)
                if self.epoch % config.checkpoint_every_epochs == 0:
                    self.save()
                self.seconds["outputs_and_checkpoints"] += time.perf_counter() - t0
                if cluster.any_process(signals.received is not None):
                    raise _Stop()
            t0 = time.perf_counter()
            self.save()
            if record is None:  # nothing left to train: the pictures show the restored model
                evaluated, predictions = self.evaluation_record()
                record = (outputs.records() or [evaluated])[-1]
            images, labels = self.pipeline.preview(outputs.preview_count)
            outputs.finish(images, labels, predictions)
            outputs.wait_for_pictures()
            self.seconds["outputs_and_checkpoints"] += time.perf_counter() - t0
            outputs.record_timing(self.timing())
            return record
        except _Stop:
            path = self.save()
            self.checkpoints.wait()
            raise Interrupted(signals.received or signal.SIGTERM,  # or another process's
                              f"saved a checkpoint at step {self.step} (epoch {self.epoch} + "
                              f"{self.step_in_epoch} steps) in {path}") from None

    def train_epoch(self, signals: Signals) -> tuple[dict, np.ndarray]:
        """Trains the rest of the current epoch and evaluates: (the epoch's record, predictions)."""
        config, t0, start_step = self.config, time.perf_counter(), self.step_in_epoch
        progress = EpochProgress(config.progress and sys.stdout.isatty()
                                 and jax.process_index() == 0,
                                 total=self.steps_per_epoch, start=start_step,
                                 desc=f"epoch {self.epoch + 1}/{config.num_epochs}",
                                 batch_size=config.batch_size)
        if self.first_step_at is None:
            self.first_step_at = training.process_seconds()
        with progress, phase("train"):
            for state, totals, step in self.pipeline.train_chunks(
                    self.state, self.totals, epoch=self.epoch, start_step=start_step):
                self.state, self.totals, self.step_in_epoch = state, totals, step
                sums = training.host_sums(totals)
                if sums["bad_step"] >= 0:
                    raise UserError(
                        f"the loss became NaN or infinite at step {sums['bad_step']} (epoch "
                        f"{self.epoch + 1}); training stopped and the last checkpoint was kept. "
                        f"Try a lower --config.learning_rate (now {config.learning_rate})")
                progress.update(step, sums)
                # A signal may reach one process only: all stop after the same chunk.
                if cluster.any_process(signals.received is not None) \
                        and step < self.steps_per_epoch:
                    raise _Stop()
        train_seconds = time.perf_counter() - t0
        train_loss, train_accuracy = mean_loss_and_accuracy(training.host_sums(self.totals))
        with phase("eval"):
            test, predictions = self.evaluation_record()
        self.seconds["train"] += train_seconds
        self.seconds["evaluate"] += time.perf_counter() - t0 - train_seconds
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.totals = training.replicate(training.zero_totals())
        record = {"epoch": self.epoch, "step": test["step"],
                  "train_loss": train_loss, "train_accuracy": train_accuracy,
                  "test_loss": test["test_loss"], "test_accuracy": test["test_accuracy"],
                  "test_examples": test["test_examples"],
                  "examples_per_sec": (self.steps_per_epoch - start_step) * config.batch_size
                  / train_seconds,
                  "epoch_seconds": time.perf_counter() - t0,
                  "learning_rate": float(self.schedule(test["step"]))}
        return record, predictions

    def timing(self) -> dict:
        """Where this process's time went: before the first step (start-up, data, model,
        checkpoint), the epochs' steps and evaluations, outputs and checkpoint writes, and XLA
        compilations (counted inside the others)."""
        return {"seconds_since_start": training.process_seconds(),
                "seconds_before_first_step": self.first_step_at,
                **{f"{name}_seconds": seconds for name, seconds in self.seconds.items()},
                "compilations": training.compilations()}

    def evaluation_record(self) -> tuple[dict, np.ndarray]:
        """Test loss, accuracy and example count of the current state, and its predictions."""
        sums, predictions = self.pipeline.evaluate(self.state)
        loss, accuracy = mean_loss_and_accuracy(sums)
        return {"epoch": self.epoch, "step": self.step, "test_loss": loss,
                "test_accuracy": accuracy, "test_examples": sums["count"]}, predictions

    def evaluate_checkpoint(self) -> dict:
        """eval_only: evaluates the restored checkpoint and appends the result to eval.jsonl."""
        t0 = time.perf_counter()
        record, _ = self.evaluation_record()
        record["eval_seconds"] = time.perf_counter() - t0
        if jax.process_index() != 0:
            return record
        print(f"evaluated the checkpoint of epoch {record['epoch']} (step {record['step']}): "
              f"test loss {record['test_loss']:.4f}  test acc {record['test_accuracy']:.4f}  "
              f"over {record['test_examples']} test examples", flush=True)
        Outputs.append_line(self.workdir / "eval.jsonl", record)
        return record

    def save(self) -> Path:
        """Starts an asynchronous checkpoint of the current state, unless it is already saved."""
        step = self.step
        if step != self.saved_step:
            tree = checkpoint_tree(training.unreplicate(self.state), self.data_key,
                                   self.dropout_key, training.unreplicate(self.totals))
            with phase("checkpoint"):
                self.checkpoints.save(step, tree, {"epoch": self.epoch,
                                                   "step_in_epoch": self.step_in_epoch,
                                                   "devices": jax.device_count()})
            self.saved_step = step
        return self.checkpoints.directory / str(step)


def checkpoint_tree(state, data_key, dropout_key, totals) -> dict:
    """Everything that fixes the rest of the run, as host numpy arrays."""
    return jax.tree.map(np.asarray, {
        "step": np.asarray(state.step, np.int32), "params": state.params,
        "batch_stats": state.batch_stats, "opt_state": state.opt_state, "data_key": data_key,
        "dropout_key": dropout_key, "totals": totals})


class _Stop(Exception):
    """Internal: a signal arrived; unwinds the epoch loop to the save."""


class Signals:
    """While active: SIGTERM or a first Ctrl-C asks for a clean stop; a second Ctrl-C exits at once."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            print("\nsecond Ctrl-C: exiting now (complete checkpoints are untouched)",
                  file=sys.stderr, flush=True)
            os._exit(130)
        self.received = signum
        print(f"\n{signal.Signals(signum).name}: finishing the current steps, then saving a "
              "checkpoint (Ctrl-C again to exit at once)", file=sys.stderr, flush=True)
