"""Trains one of the chapter's models on one CPU, one or many GPUs, or a TPU, without changes.

    python train.py --config configs/nin.py [--workdir DIR] [--config.<field>=<value> ...]

The program reads top to bottom: config -> workdir -> data -> model -> optimizer -> checkpoint ->
the epoch loop (pmapped chunks of train steps, evaluation, metrics, checkpoints).
Run it again with the same --workdir to resume. What it writes is listed in the README.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import jax_utils
from ml_collections import config_flags
from tqdm import tqdm

from flaxcnn import checkpoint, data, models, plots, summary, training
from flaxcnn.errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/nin.py.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where the run writes everything; default runs/<config>-<time>.")

# Changing one of these on resume would silently make it a different experiment.
FIXED_ON_RESUME = ("model", "model_overrides", "dataset", "idx_dir", "image_size", "batch_size",
                   "seed")
DTYPES = ("float32", "bfloat16")
PIPELINES = ("auto", "device", "stream")
DEVICE_PIPELINE_MAX_BYTES = 2 << 30  # datasets up to 2 GiB of uint8 live on the accelerators
PREVIEW_IMAGES = 18  # test images in predictions.png
TENSORBOARD_SCALARS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "learning_rate",
                       "examples_per_sec")


class Interrupted(Exception):
    """A signal asked the run to stop; it saves a checkpoint first."""


# ---------------------------------------------------------------------------------------------- config


def check_config(config, device_count: int):
    if config.model not in models.names():
        raise UserError(f"unknown model {config.model!r}; use one of: {', '.join(models.names())}")
    for field, allowed in (("optimizer", training.OPTIMIZERS), ("lr_schedule", training.LR_SCHEDULES),
                           ("dtype", DTYPES), ("input_pipeline", PIPELINES)):
        if config[field] not in allowed:
            raise UserError(f"unknown {field} {config[field]!r}; use one of: {', '.join(allowed)}")
    for field in ("batch_size", "image_size", "checkpoint_every_epochs", "max_checkpoints"):
        if config[field] < 1:
            raise UserError(f"--config.{field} must be at least 1, got {config[field]}")
    if config.num_epochs < 0:
        raise UserError(f"--config.num_epochs must be 0 or more, got {config.num_epochs}")
    for field in ("batch_size", "eval_batch_size"):
        if config[field] % device_count:
            raise UserError(
                f"--config.{field}={config[field]} is not divisible by the {device_count} devices; "
                f"use a multiple of {device_count}")


def compare_with_saved(config, saved: dict):
    """Refuses to resume a run whose saved config differs in a field that defines the experiment."""
    current = json.loads(config.to_json())
    differing = [f"{k} (saved {saved.get(k)!r}, now {current.get(k)!r})"
                 for k in FIXED_ON_RESUME if saved.get(k) != current.get(k)]
    if differing:
        raise UserError("this workdir holds a run with a different config: " + "; ".join(differing)
                        + ". Use a new --workdir, or the saved values")


# ------------------------------------------------------------------------------------------------ data


def load_data(config):
    """Dataset info, the pipeline to use, and for 'device' this process's uint8 train/test arrays."""
    kw = dict(data_dir=config.data_dir or None, idx_dir=config.idx_dir or None)
    info = data.info(config.dataset, **kw)
    pipeline = config.input_pipeline
    if pipeline == "auto":
        nbytes = data.nbytes_in_memory(info)
        pipeline = "device" if nbytes is not None and nbytes <= DEVICE_PIPELINE_MAX_BYTES else "stream"
    if pipeline == "stream":
        return info, pipeline, None, None
    shard = dict(process_index=jax.process_index(), process_count=jax.process_count(), **kw)
    return (info, pipeline, data.load_arrays(config.dataset, "train", **shard),
            data.load_arrays(config.dataset, "test", **shard))


def stream_kwargs(config) -> dict:
    return dict(image_size=config.image_size, data_dir=config.data_dir or None,
                idx_dir=config.idx_dir or None, process_index=jax.process_index(),
                process_count=jax.process_count())


# ----------------------------------------------------------------------------------------------- model


def create_model(config, num_classes: int):
    """(model to initialise, model to train): the second uses cross-replica BatchNorm if asked."""
    try:
        model = models.create(config.model, num_classes=num_classes,
                              dtype=getattr(jnp, config.dtype), **config.model_overrides.to_dict())
    except (ValueError, TypeError) as e:
        raise UserError(str(e)) from None
    return model, training.cross_replica(model) if config.sync_batch_stats else model


def init_state(config, init_model, model, tx, input_shape) -> training.TrainState:
    try:
        state = training.create_train_state(init_model, tx, jax.random.PRNGKey(config.seed),
                                            input_shape)
    except ValueError as e:  # the model's input-size check, raised while tracing init
        raise UserError(str(e).splitlines()[0]) from None
    return state.replace(apply_fn=model.apply)


# -------------------------------------------------------------------------------------------- the run


class Run:
    """One training run: the state the epoch loop reads and advances."""

    def __init__(self, config, workdir: Path):
        self.config, self.workdir = config, workdir
        self.is_writer = jax.process_index() == 0
        check_config(config, jax.device_count())

        # Workdir: writable, and either fresh or a compatible run to resume.
        checkpoint.require_writable(workdir)
        self.checkpoints = checkpoint.Checkpoints(workdir, max_to_keep=config.max_checkpoints)
        resuming = self.checkpoints.exists()
        if resuming and not config.restore:
            raise UserError(f"{workdir} already holds checkpoints and --config.restore=false; "
                            "use a new --workdir, or drop restore=false to resume")
        if config.eval_only and not resuming:
            raise UserError(f"--config.eval_only=true needs a workdir with checkpoints; {workdir} "
                            "has none")
        saved_config = workdir / "config.json"
        if resuming and saved_config.exists():
            compare_with_saved(config, json.loads(saved_config.read_text()))

        # Data.
        self.info, self.pipeline, train, test = load_data(config)
        self.local_batch = config.batch_size // jax.process_count()
        # The same count on every process (shards differ by up to one example): none may wait
        # in a collective for another that has run out of batches.
        self.steps_per_epoch = data.train_batches_per_epoch(self.info, self.local_batch,
                                                            jax.process_count())
        if self.steps_per_epoch == 0 and not config.eval_only:
            raise UserError(f"the training split has fewer examples per process than one batch "
                            f"of {self.local_batch}; lower --config.batch_size")

        # Model, optimizer, train state.
        init_model, model = create_model(config, self.info.num_classes)
        tx, self.schedule = training.create_optimizer(
            optimizer=config.optimizer, learning_rate=config.learning_rate, momentum=config.momentum,
            weight_decay=config.weight_decay, lr_schedule=config.lr_schedule,
            warmup_epochs=config.warmup_epochs, num_epochs=config.num_epochs,
            steps_per_epoch=max(self.steps_per_epoch, 1))
        state = init_state(config, init_model, model, tx,
                           (config.image_size, config.image_size, self.info.channels))
        eval_batch = config.eval_batch_size or config.batch_size
        self.step_cfg = training.StepConfig(
            image_size=config.image_size, dtype=getattr(jnp, config.dtype),
            batch_per_device=config.batch_size // jax.device_count(),
            eval_batch_per_device=eval_batch // jax.device_count(),
            sync_batch_stats=config.sync_batch_stats)

        # Checkpoint: restore the latest good one, or start from `fresh`.
        data_key, dropout_key = jax.random.split(jax.random.PRNGKey(config.seed))
        self.has_batch_stats = state.batch_stats is not None
        fresh = self._checkpoint_tree(state, data_key, dropout_key, training.zero_totals())
        restored = self.checkpoints.restore_latest(fresh) if resuming else None
        if resuming and restored is None:
            raise UserError(f"no usable checkpoint in {self.checkpoints.directory} (see the "
                            "warnings above); use a new --workdir to start afresh")
        tree, meta = restored or (fresh, {"epoch": 0, "step_in_epoch": 0})
        self.epoch, self.step_in_epoch = int(meta["epoch"]), int(meta["step_in_epoch"])
        self.saved_step = int(tree["step"]) if restored else None
        if restored:
            print(f"resuming from checkpoint {self.checkpoints.directory / str(self.saved_step)}: "
                  f"step {self.saved_step}, epoch {self.epoch}"
                  + (f" + {self.step_in_epoch} steps" if self.step_in_epoch else ""), flush=True)
        self.state = training.replicate(state.replace(
            step=tree["step"], params=tree["params"], opt_state=tree["opt_state"],
            batch_stats=tree["batch_stats"] if self.has_batch_stats else None))
        self.totals = training.replicate(tree["totals"])
        self.data_key, self.dropout_key = tree["data_key"], tree["dropout_key"]

        # Compiled functions, and the data on the devices.
        if self.pipeline == "device":
            self.train_data = training.DeviceData(*train)
            self.test_data = training.DeviceData(*test)
            self.test_host = test
            self.train_chunk = training.make_train_chunk(self.step_cfg)
            self.evaluate_on_device = training.make_evaluate(self.step_cfg)
            self.eval_steps = training.eval_steps(
                math.ceil(self.info.num_test / jax.process_count()),
                self.step_cfg.eval_batch_per_device, jax.local_device_count())
        else:
            self.train_batch = training.make_train_batch(self.step_cfg)
            self.evaluate_batch = training.make_evaluate_batch(self.step_cfg)
        self.timer = training.ChunkTimer()

    @property
    def step(self) -> int:
        return int(training.unreplicate(self.state.step))

    # -- evaluation

    def evaluate(self) -> tuple[dict, np.ndarray]:
        """Global test sums, and this process's predictions in example order."""
        if self.pipeline == "device":
            sums, preds = self.evaluate_on_device(
                self.state, self.test_data.images, self.test_data.labels,
                self.test_data.local_index, self.eval_steps)
            return host_sums(sums), training.gather_predictions(preds, self.test_data.num_examples)
        d = jax.local_device_count()
        totals, preds = None, []
        for batch in self._streamed_test_batches():
            shaped = {k: v.reshape(d, -1, *v.shape[1:]) for k, v in batch.items()}
            sums, p = self.evaluate_batch(self.state, shaped["image"], shaped["label"],
                                          shaped["mask"])
            sums = host_sums(sums)
            totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
            preds.append(np.asarray(p).reshape(-1)[batch["mask"]])
        return totals, np.concatenate(preds)

    def _streamed_test_batches(self):
        """This process's test split from tf.data, padded and masked, one eval batch at a time."""
        return data.stream_eval(self.config.dataset, **stream_kwargs(self.config),
                                batch_size=self.step_cfg.eval_batch_per_device
                                * jax.local_device_count())

    def test_examples(self) -> tuple[np.ndarray, np.ndarray]:
        """The first PREVIEW_IMAGES test images and all test labels, in `evaluate`'s order."""
        if self.pipeline == "device":
            images, labels = self.test_host
            return images[:PREVIEW_IMAGES], labels
        images, labels = [], []
        for batch in self._streamed_test_batches():
            labels.append(batch["label"][batch["mask"]])
            if sum(len(i) for i in images) < PREVIEW_IMAGES:
                images.append(batch["image"][batch["mask"]])
        return np.concatenate(images)[:PREVIEW_IMAGES], np.concatenate(labels)

    # -- training

    def train_epoch(self, signals: Signals, progress: Progress):
        """Trains from step_in_epoch to the end of the epoch; raises Interrupted on a signal."""
        if self.pipeline == "device":
            chunks = training.train_epoch_on_device(
                self.train_chunk, self.state, self.totals, self.train_data,
                data_key=self.data_key, dropout_key=self.dropout_key, epoch=self.epoch,
                start_step=self.step_in_epoch, steps_per_epoch=self.steps_per_epoch,
                timer=self.timer)
        else:
            chunks = self._streamed_steps()
        for self.state, self.totals, self.step_in_epoch in chunks:
            sums = host_sums(self.totals)
            if sums["bad_step"] >= 0:
                raise UserError(
                    f"the loss became NaN or infinite at step {sums['bad_step']} (epoch "
                    f"{self.epoch + 1}); training stopped and the last checkpoint was kept. Try a "
                    f"lower --config.learning_rate (now {self.config.learning_rate})")
            progress.update(self.step_in_epoch, sums)
            if signals.received is not None and self.step_in_epoch < self.steps_per_epoch:
                raise Interrupted()

    def _streamed_steps(self):
        """Like training.train_epoch_on_device, for batches streamed from tf.data."""
        d = jax.local_device_count()
        batches = data.stream_train(self.config.dataset, **stream_kwargs(self.config),
                                    batch_size=self.local_batch, seed=self.config.seed,
                                    epoch=self.epoch, skip_batches=self.step_in_epoch)
        shaped = ({k: v.reshape(d, -1, *v.shape[1:]) for k, v in b.items()} for b in batches)
        on_device = jax_utils.prefetch_to_device(shaped, 2)
        state, totals, step = self.state, self.totals, self.step_in_epoch
        while step < self.steps_per_epoch:
            n = self.timer.next_size(self.steps_per_epoch - step)
            t0 = time.perf_counter()
            for batch in itertools.islice(on_device, n):
                state, totals = self.train_batch(state, totals, batch["image"], batch["label"],
                                                 self.dropout_key)
            jax.block_until_ready(totals)
            self.timer.record(n, time.perf_counter() - t0)
            step += n
            yield state, totals, step

    # -- checkpoints

    def _checkpoint_tree(self, state, data_key, dropout_key, totals) -> dict:
        """Everything that fixes the rest of the run, as host numpy arrays."""
        return jax.tree.map(np.asarray, {
            "step": np.asarray(state.step, np.int32), "params": state.params,
            "batch_stats": state.batch_stats if self.has_batch_stats else {},
            "opt_state": state.opt_state, "data_key": data_key, "dropout_key": dropout_key,
            "totals": totals})

    def save(self) -> Path:
        """Starts an asynchronous checkpoint of the current state, unless it is already saved."""
        step = self.step
        if step != self.saved_step:
            tree = self._checkpoint_tree(training.unreplicate(self.state), self.data_key,
                                         self.dropout_key, training.unreplicate(self.totals))
            self.checkpoints.save(step, tree, {"epoch": self.epoch,
                                               "step_in_epoch": self.step_in_epoch,
                                               "devices": jax.device_count()})
            self.saved_step = step
        return self.checkpoints.directory / str(step)


def host_sums(sums) -> dict:
    """Replicated on-device sums -> plain Python numbers."""
    return {k: v.item() for k, v in training.unreplicate(sums).items()}


def mean_loss_and_accuracy(sums: dict) -> tuple[float, float]:
    count = max(sums["count"], 1)
    return sums["loss_sum"] / count, sums["correct"] / count


# ----------------------------------------------------------------------------- signals, progress, files


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

    @property
    def exit_code(self) -> int:
        return 128 + int(self.received)


class Progress:
    """The epoch's progress bar with the running loss and images/s (tqdm), on a terminal only."""

    def __init__(self, enabled: bool, *, total: int, start: int, desc: str, batch_size: int):
        self.bar = tqdm(total=total, initial=start, desc=desc, leave=False, unit="step",
                        dynamic_ncols=True) if enabled else None
        self.start, self.batch_size, self.t0 = start, batch_size, time.perf_counter()

    def update(self, step: int, sums: dict):
        if self.bar is None:
            return
        self.bar.update(step - self.bar.n)
        images_per_sec = (step - self.start) * self.batch_size / (time.perf_counter() - self.t0)
        loss, _ = mean_loss_and_accuracy(sums)
        self.bar.set_postfix_str(f"loss {loss:.3f}, {images_per_sec:,.0f} img/s")

    def close(self):
        if self.bar is not None:
            self.bar.close()


class Outputs:
    """Everything a run writes besides checkpoints (the README lists it). Only process 0 writes."""

    def __init__(self, run: Run):
        self.run, self.config = run, run.config
        self.metrics_path = run.workdir / "metrics.jsonl"
        self.writer = None
        if run.is_writer and self.config.tensorboard:
            from clu import metric_writers  # imports TensorFlow: after flaxcnn.data has quietened it

            self.writer = metric_writers.SummaryWriter(str(run.workdir))

    def start(self):
        """config.json and run_info.json; metrics.jsonl cut back to the restored epoch."""
        if not self.run.is_writer:
            return
        (self.run.workdir / "config.json").write_text(self.config.to_json(indent=2) + "\n")
        info = self.run.info
        stats = summary.model_stats(self.config.model, self.config.image_size, info.channels,
                                    info.num_classes, **self.config.model_overrides.to_dict())
        (self.run.workdir / "run_info.json").write_text(json.dumps({
            "model": self.config.model, "params": stats["params"],
            "batch_stats": stats["batch_stats"], "flops_per_image": stats["flops_per_image"],
            "image_size": self.config.image_size, "channels": info.channels,
            "num_classes": info.num_classes, "class_names": list(info.class_names),
            "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
        }, indent=2) + "\n")
        # Epochs after the restored checkpoint are trained again: drop their stale lines.
        kept = [record for record in self.records() if record["epoch"] <= self.run.epoch]
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def records(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def epoch(self, record: dict):
        """The epoch's line on stdout, in metrics.jsonl and TensorBoard, and curves.png redrawn."""
        print(f"epoch {record['epoch']}/{self.config.num_epochs}  "
              f"train loss {record['train_loss']:.4f}  train acc {record['train_accuracy']:.4f}  "
              f"test loss {record['test_loss']:.4f}  test acc {record['test_accuracy']:.4f}  "
              f"{record['examples_per_sec']:,.0f} img/s  {record['epoch_seconds']:.1f} s", flush=True)
        if not self.run.is_writer:
            return
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            self.writer.write_scalars(record["epoch"], {k: record[k] for k in TENSORBOARD_SCALARS})
            self.writer.flush()
        if self.config.plots:
            reference = (self.config.reference_accuracy
                         if self.config.dataset == "fashion_mnist" else None)
            plots.curves(self.records(), self.run.workdir / "curves.png",
                         reference_accuracy=reference,
                         title=f"{self.config.model} on {self.config.dataset}")

    def finish(self, predictions: np.ndarray):
        """predictions.png and confusion.png from the final model's test predictions."""
        if not (self.run.is_writer and self.config.plots):
            return
        images, labels = self.run.test_examples()
        names = self.run.info.class_names
        plots.predictions(images, labels, predictions, names, self.run.workdir / "predictions.png")
        plots.confusion(labels, predictions, names, self.run.workdir / "confusion.png")

    def close(self):
        if self.writer is not None:
            self.writer.close()


# ----------------------------------------------------------------------------------------- the loop


def run_epoch(run: Run, signals: Signals) -> tuple[dict, np.ndarray]:
    """Trains the rest of the current epoch, evaluates, and returns the epoch's metrics record
    and test predictions."""
    config = run.config
    t0 = time.perf_counter()
    start_step = run.step_in_epoch
    progress = Progress(config.progress and sys.stdout.isatty(), total=run.steps_per_epoch,
                        start=start_step, desc=f"epoch {run.epoch + 1}/{config.num_epochs}",
                        batch_size=config.batch_size)
    try:
        run.train_epoch(signals, progress)
    finally:
        progress.close()
    train_seconds = time.perf_counter() - t0
    train_loss, train_accuracy = mean_loss_and_accuracy(host_sums(run.totals))
    test_sums, predictions = run.evaluate()
    test_loss, test_accuracy = mean_loss_and_accuracy(test_sums)
    run.epoch, run.step_in_epoch = run.epoch + 1, 0
    run.totals = training.replicate(training.zero_totals())
    step = run.step
    record = {"epoch": run.epoch, "step": step,
              "train_loss": train_loss, "train_accuracy": train_accuracy,
              "test_loss": test_loss, "test_accuracy": test_accuracy,
              "test_examples": test_sums["count"],
              "examples_per_sec": (run.steps_per_epoch - start_step) * config.batch_size
              / train_seconds,
              "epoch_seconds": time.perf_counter() - t0,
              "learning_rate": float(run.schedule(step))}
    return record, predictions


def evaluate_only(run: Run) -> int:
    t0 = time.perf_counter()
    sums, _ = run.evaluate()
    loss, accuracy = mean_loss_and_accuracy(sums)
    record = {"epoch": run.epoch, "step": run.step, "test_loss": loss, "test_accuracy": accuracy,
              "test_examples": sums["count"], "eval_seconds": time.perf_counter() - t0}
    print(f"evaluated the checkpoint of epoch {run.epoch} (step {run.step}): test loss {loss:.4f}  "
          f"test acc {accuracy:.4f}  over {sums['count']} test examples", flush=True)
    if run.is_writer:
        with (run.workdir / "eval.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
    return 0


def train(config, workdir: Path, config_file: str = "configs/<name>.py") -> int:
    """Trains (or with eval_only, evaluates) and returns the exit code."""
    run = Run(config, workdir)
    try:
        if config.eval_only:
            return evaluate_only(run)
        outputs = Outputs(run)
        try:
            outputs.start()
            with Signals() as signals:
                return train_epochs(run, outputs, signals, config_file)
        finally:
            outputs.close()
    finally:
        run.checkpoints.close()


def train_epochs(run: Run, outputs: Outputs, signals: Signals, config_file: str) -> int:
    config = run.config
    predictions = None
    try:
        while run.epoch < config.num_epochs:
            record, predictions = run_epoch(run, signals)
            outputs.epoch(record)
            if run.epoch % config.checkpoint_every_epochs == 0:
                run.save()
            if signals.received is not None:
                raise Interrupted()
        run.save()
        outputs.finish(predictions if predictions is not None else run.evaluate()[1])
    except Interrupted:
        path = run.save()
        run.checkpoints.wait()
        print(f"saved a checkpoint at step {run.step} (epoch {run.epoch} + {run.step_in_epoch} "
              f"steps) in {path}\nresume with: python train.py --config {config_file} "
              f"--workdir {run.workdir}", flush=True)
        return signals.exit_code
    return 0


# ------------------------------------------------------------------------------------------------ main


def main(argv):
    logging.set_verbosity(logging.WARNING)  # Orbax and tfds log every step of a save at INFO
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = FLAGS.config
        if config is None:
            raise UserError("pass --config configs/<name>.py (see the configs/ folder)")
        config_file = config_flags.get_config_filename(FLAGS["config"])
        workdir = Path(FLAGS.workdir or
                       f"runs/{Path(config_file).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
        return train(config, workdir, config_file)
    except UserError as e:
        sys.exit(f"error: {e}")


def parse_flags(argv):
    """absl flag parsing, with config mistakes as one-line errors instead of tracebacks."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}")
    except (AttributeError, KeyError) as e:
        bad = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        sys.exit(f"error: unknown config field {e} (in {', '.join(bad)}); the fields are in "
                 "configs/default.py")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
