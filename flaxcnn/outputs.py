"""What a run writes besides checkpoints (the book lists it: docs/training.md), and its progress bar.

Only process 0 writes files and prints the epoch lines. The pictures are drawn in one background
thread, so drawing them never holds up the steps (on an accelerator the host is idle meanwhile);
curves.png always ends up showing every epoch.
"""
from __future__ import annotations

import contextlib
import json
from concurrent.futures import Future, ThreadPoolExecutor
import os
import time
from pathlib import Path

import jax
from tqdm import tqdm

from flaxcnn import augment, plots, reference, summary
from flaxcnn.errors import UserError, first_line, warn

TENSORBOARD_SCALARS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "learning_rate",
                       "examples_per_sec")


def mean_loss_and_accuracy(sums: dict) -> tuple[float, float]:
    count = max(sums["count"], 1)
    return sums["loss_sum"] / count, sums["correct"] / count


class Outputs:
    """config.json, run_info.json, metrics.jsonl, TensorBoard scalars and the pictures of one run."""

    preview_count = plots.PREDICTION_IMAGES

    def __init__(self, config, workdir: Path, info):
        self.config, self.workdir, self.info = config, workdir, info
        self.metrics_path = workdir / "metrics.jsonl"
        self.is_writer = jax.process_index() == 0
        self.writer = None
        if self.is_writer and config.tensorboard:
            from flaxcnn.events import ScalarWriter  # TensorBoard's files, without TensorFlow

            self.writer = ScalarWriter(str(workdir))
        self.painter = (ThreadPoolExecutor(1, thread_name_prefix="flaxcnn-pictures")
                        if self.is_writer and config.plots else None)
        self.curves_job: Future | None = None
        self.curves_records, self.drawn_records = None, None
        self.earlier_seconds = 0.0  # train.py's time in the sessions before a resume

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.painter is not None:
            self.wait_for_pictures()
            self.painter.shutdown()
        if self.writer is not None:
            with best_effort("close the TensorBoard file in", self.workdir):
                self.writer.close()

    def start(self, epoch: int, resumed: bool):
        """config.json and run_info.json; metrics.jsonl cut back to the restored `epoch`. A resumed
        run keeps the weights it started from on record (it ignores init_from)."""
        if not self.is_writer:
            return
        config, info = self.config, self.info
        init_from = config.init_from or None
        if resumed and (self.workdir / "run_info.json").exists():
            saved = json.loads((self.workdir / "run_info.json").read_text())
            init_from = saved.get("init_from")
            self.earlier_seconds = (saved.get("timing") or {}).get("seconds_all_sessions", 0.0)
        write_atomically(self.workdir / "config.json", config.to_json(indent=2) + "\n")
        stats = summary.model_stats(config.model, config.image_size, info.channels,
                                    info.num_classes, **config.model_overrides.to_dict())
        write_atomically(self.workdir / "run_info.json", json.dumps({
            "model": config.model, "params": stats["params"],
            "batch_stats": stats["batch_stats"], "flops_per_image": stats["flops_per_image"],
            "image_size": config.image_size, "channels": info.channels,
            "num_classes": info.num_classes, "class_names": list(info.class_names),
            "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
            # What flaxcnn.runs.load_run needs to feed new images like the run's test images:
            # their shape before the eval transform (None: any size, resized to image_size).
            "input": {"stored_shape": list(info.image_shape) if info.image_shape else None,
                      "augment": config.augment,
                      "normalize": augment.resolve_normalize(config.normalize, config.init_from)},
            "init_from": init_from,
        }, indent=2) + "\n")
        # Epochs after the restored checkpoint are trained again: drop their stale lines.
        kept = [record for record in self.records() if record["epoch"] <= epoch]
        write_atomically(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def record_timing(self, timing: dict):
        """The run's time, on stdout and in run_info.json under "timing" (runtime.Chrono.report)."""
        if not self.is_writer:
            return
        compiled = timing["compilations"]
        first_step = timing["seconds_before_first_step"]
        print(f"{timing['seconds_since_start']:.1f} s in all: "
              + (f"{first_step:.1f} s before the first step, " if first_step is not None else "")
              + f"{timing['train_seconds']:.1f} s of training steps, "
              f"{timing['evaluate_seconds']:.1f} s of evaluation, "
              f"{timing['outputs_and_checkpoints_seconds']:.1f} s of outputs and checkpoints; "
              f"{compiled['programs']} programs compiled in {compiled['seconds']:.1f} s "
              f"({compiled['from_cache']} from the compilation cache)", flush=True)
        path = self.workdir / "run_info.json"
        timing = {**timing, "seconds_all_sessions": self.earlier_seconds
                  + timing["seconds_since_start"]}
        with best_effort("record the timing in", path):
            info = json.loads(path.read_text())
            write_atomically(path, json.dumps({**info, "timing": timing}, indent=2) + "\n")

    def records(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def record_epoch(self, record: dict):
        """The epoch's line on stdout, in metrics.jsonl and TensorBoard, and curves.png redrawn."""
        if not self.is_writer:
            return
        print(f"epoch {record['epoch']}/{self.config.num_epochs}  "
              f"train loss {record['train_loss']:.4f}  train acc {record['train_accuracy']:.4f}  "
              f"test loss {record['test_loss']:.4f}  test acc {record['test_accuracy']:.4f}  "
              f"{record['examples_per_sec']:,.0f} img/s  {record['epoch_seconds']:.1f} s", flush=True)
        self.append_line(self.metrics_path, record)
        if self.writer is not None:
            with best_effort("write the TensorBoard scalars into", self.workdir):
                self.writer.add_scalars(record["epoch"],
                                        {k: record[k] for k in TENSORBOARD_SCALARS})
                self.writer.flush()
        if self.painter is not None:
            self.curves_records = self.records()
            if self.curves_job is None or self.curves_job.done():  # else it is drawn after that
                self.curves_job = self.painter.submit(self._draw_curves)

    def wait_for_pictures(self):
        """Returns once every picture asked for is drawn, curves.png with every epoch."""
        if self.painter is None:
            return
        if self.curves_records is not self.drawn_records:  # the last epochs came meanwhile
            self.painter.submit(self._draw_curves)
        self.painter.submit(lambda: None).result()  # one thread: everything before it is done

    def _draw_curves(self):
        """curves.png from the newest records (in the picture thread)."""
        records = self.curves_records
        band = reference.for_run(self.config)
        with best_effort("draw", self.workdir / "curves.png"):
            plots.curves(records, self.workdir / "curves.png", reference=band,
                         title=f"{self.config.model} on {self.config.dataset}")
        self.drawn_records = records

    def print_verdict(self, record: dict):
        """One line on where the final test accuracy landed relative to d2l's printed band (runs on
        the full fashion_mnist with a reference_accuracy only)."""
        line = reference.verdict(record["test_accuracy"], reference.for_run(self.config))
        if self.is_writer and line is not None:
            print(line, flush=True)

    def finish(self, images, indices, labels, predictions):
        """predictions.png (of `images`, the test images at `indices`) and confusion.png from the
        final model's test predictions and all test labels."""
        if self.painter is None:
            return
        names = self.info.class_names

        def draw():
            with best_effort("draw", self.workdir / "predictions.png"):
                plots.predictions(images, labels[indices], predictions[indices], names,
                                  self.workdir / "predictions.png")
            with best_effort("draw", self.workdir / "confusion.png"):
                plots.confusion(labels, predictions, names, self.workdir / "confusion.png")

        self.painter.submit(draw)

    @staticmethod
    def append_line(path: Path, record: dict):
        """Appends one JSON line, whole or not at all: a failed write (a full disk) is cut back
        to where the file ended and raised as a UserError."""
        data = (json.dumps(record) + "\n").encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
            except OSError as e:
                os.ftruncate(fd, size)  # no torn line; shrinking a file needs no space
                raise UserError(f"could not write {path} ({e.strerror or e}); it keeps its "
                                "complete lines and the newest checkpoint is kept: free some "
                                "space (or fix the cause) and rerun the same command") from None
        finally:
            os.close(fd)


def write_atomically(path: Path, text: str):
    """Replaces `path` with `text` through a temporary file: on failure the old file stays whole."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    except OSError as e:
        temporary.unlink(missing_ok=True)
        raise UserError(f"could not write {path} ({e.strerror or e}); free some space (or fix the "
                        "cause) and rerun the same command") from None


@contextlib.contextmanager
def best_effort(what: str, path):
    """Pictures and TensorBoard scalars are extras: failing to write them warns, training goes on."""
    try:
        yield
    except Exception as e:  # pylint: disable=broad-except  # a full disk, a plotting bug
        warn(f"could not {what} {path} ({first_line(e, with_type=True)}); training goes on")


class EpochProgress:
    """The epoch's progress bar with the running loss and images/s (tqdm), on a terminal only."""

    def __init__(self, enabled: bool, *, total: int, start: int, desc: str, batch_size: int):
        self.bar = tqdm(total=total, initial=start, desc=desc, leave=False, unit="step",
                        dynamic_ncols=True) if enabled else None
        self.start, self.batch_size, self.t0 = start, batch_size, time.perf_counter()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

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
