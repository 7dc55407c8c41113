"""Input pipelines: where a run's batches come from, behind one interface.

* :class:`DevicePipeline` holds the whole training set (on every process) and this process's test
  shard on every device as uint8; each epoch's order is drawn on device from the run's data key and
  the epoch, and
  every step gathers each device's part of the global batch inside the compiled chunk, so the run
  does not depend on the number of processes. Imports no TensorFlow: `flaxcnn.bench` runs it where TF is not installed.
* :class:`HostStreamPipeline` reads each step's examples on the host from a random-access source
  (arrays in memory, an image folder's memory-mapped cache, a tfds ArrayRecord data source) with
  grain, ahead of the step, and puts them on the devices ahead of it: the same examples for each
  step and device as the device pipeline, in the same order (from the run's data key), so a run
  gives the same numbers on either route. Each process reads only its devices' part of each global
  batch. No TensorFlow.
* :class:`StreamPipeline` streams batches from tf.data, for the tfds datasets that only tf.data
  reads (tfrecord files, images of varying size).

Both offer the same three methods: ``train_chunks`` (the rest of an epoch for a replicated
`training.RunState`, one chunk of steps at a time, each chunk sized to about a second by one
:class:`ChunkTimer`, process 0's size on every process), ``evaluate`` (every test example of this
process once) and ``preview`` (test images and labels for the pictures). The pipelines hold data,
never state: keys, parameters and running sums travel in the RunState.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import os
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flaxcnn import cluster, plots, replicas, training
from flaxcnn.replicas import AXIS


@dataclasses.dataclass
class ChunkTimer:
    """Sizes chunks of steps so that each pmapped call takes about `target_seconds`.

    The first call compiles, so it runs one step and is not timed; the second runs one step and
    is timed; later calls run as many steps as fit the target.
    """
    target_seconds: float = 1.0
    seconds_per_step: float | None = None
    compiled: bool = False

    def next_size(self, remaining: int) -> int:
        if self.seconds_per_step is None:
            return min(1, remaining)
        return int(max(1, min(remaining, self.target_seconds / self.seconds_per_step)))

    def record(self, steps: int, seconds: float):
        if not self.compiled:
            self.compiled = True
            return
        per_step = max(seconds / steps, 1e-6)
        self.seconds_per_step = per_step if self.seconds_per_step is None else (
            0.5 * self.seconds_per_step + 0.5 * per_step)


def timed_chunks(run_steps: Callable, state, *, start_step: int, steps_per_epoch: int,
                 timer: ChunkTimer) -> Iterator[tuple[Any, int]]:
    """Runs steps start_step .. steps_per_epoch-1 as `run_steps(state, first, count)` calls,
    yielding `(state, steps_done)` after each; the caller may stop at any yield."""
    step = start_step
    while step < steps_per_epoch:
        # Timings differ between processes; their chunks must not (collectives would hang).
        n = cluster.same_as_process_0(timer.next_size(steps_per_epoch - step))
        t0 = time.perf_counter()
        state = run_steps(state, step, n)
        jax.block_until_ready(state.totals)
        timer.record(n, time.perf_counter() - t0)
        step += n
        yield state, step


# ------------------------------------------------------------------------------- data on the devices


def make_permutation(devices=None):
    """pmapped `(data_key, epoch, n)` -> the epoch's order of the n examples, drawn on each device
    from its copy of the run's (replicated) data key and the epoch alone, so identical everywhere."""

    def permutation(data_key, epoch, n):
        return jax.random.permutation(jax.random.fold_in(data_key, epoch), n).astype(jnp.int32)

    return jax.pmap(permutation, AXIS, in_axes=(0, None, None), static_broadcasted_argnums=(2,),
                    devices=devices)


class DeviceData:
    """A uint8 dataset held on every device, with its per-epoch permutations."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, devices=None):
        self.num_examples = len(images)
        self.images = replicas.replicate(np.asarray(images, np.uint8), devices)
        self.labels = replicas.replicate(np.asarray(labels, np.int32), devices)
        local_devices = len(devices) if devices else jax.local_device_count()
        self.local_index = replicas.per_device(np.arange(local_devices, dtype=np.int32), devices)
        self._permutation = make_permutation(devices)

    def permutation(self, data_key, epoch: int):
        """The epoch's order, from the run's data key as replicated in its RunState."""
        return self._permutation(data_key, epoch, self.num_examples)


def eval_steps(num_examples: int, eval_batch_per_device: int, num_devices: int) -> int:
    return max(1, math.ceil(num_examples / (eval_batch_per_device * num_devices)))


def padded(array: np.ndarray, length: int) -> np.ndarray:
    """`array` with zeros appended along its first axis up to `length` (itself if that long)."""
    if len(array) == length:
        return array
    padding = np.zeros((length - len(array), *array.shape[1:]), array.dtype)
    return np.concatenate([array, padding])


def gather_predictions(preds, num_examples: int) -> np.ndarray:
    """Per-device predictions (devices, steps, e) from `make_evaluate` -> example order, length N."""
    preds = replicas.local_array(preds)
    return preds.transpose(1, 0, 2).reshape(-1)[:num_examples]


class DevicePipeline:
    """The uint8 train set and this process's test shard on every local device.

    `num_test` is the whole test split (all processes): every process holds its shard padded to
    the largest shard's length and runs the same number of evaluation steps over it, so that all
    processes run one program (make_evaluate).
    """

    def __init__(self, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                 cfg: training.StepConfig, *, steps_per_epoch: int, num_test: int):
        self.steps_per_epoch = steps_per_epoch
        self.test_images, self.test_labels = test
        largest_shard = math.ceil(num_test / jax.process_count())
        self.train_data = DeviceData(*train)
        self.test_data = DeviceData(*(padded(array, largest_shard) for array in test))
        self.train_chunk = training.make_train_chunk(cfg)
        self.evaluate_on_device = training.make_evaluate(cfg)
        self.eval_steps = eval_steps(largest_shard, cfg.eval_batch_per_device,
                                     jax.local_device_count())
        self.timer = ChunkTimer()

    def train_chunks(self, state, *, epoch: int, start_step: int):
        data = self.train_data
        perm = data.permutation(state.data_key, epoch)

        def run_steps(state, first, count):
            return self.train_chunk(state, data.images, data.labels, perm, first, count)

        return timed_chunks(run_steps, state, start_step=start_step,
                            steps_per_epoch=self.steps_per_epoch, timer=self.timer)

    def evaluate(self, state) -> tuple[dict, np.ndarray]:
        """Global test sums of a replicated RunState, and this process's predictions in example
        order."""
        sums, preds = self.evaluate_on_device(state.train, self.test_data.images,
                                              self.test_data.labels, self.test_data.local_index,
                                              np.int32(len(self.test_labels)), self.eval_steps)
        return replicas.host_sums(sums), gather_predictions(preds, len(self.test_labels))

    def preview(self, count: int, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(`count` test images spread over the classes (plots.spread_over_classes), their
        indices, all test labels), in `evaluate`'s order."""
        indices = plots.spread_over_classes(self.test_labels, count, num_classes)
        return self.test_images[indices], indices, self.test_labels


# ------------------------------------------------------------------------------- the host stream


def local_positions(devices=None) -> np.ndarray:
    """Where this process's devices are along the pmap axis (all processes' devices)."""
    local = len(devices) if devices else jax.local_device_count()
    where = jax.pmap(lambda x: lax.axis_index(AXIS), AXIS, devices=devices)(np.zeros(local))
    return replicas.local_array(where).astype(np.int64)


AHEAD_ON_DEVICES = 2  # batches copied to the devices before the step that takes them


def ahead_on_devices(batches: Iterator[dict], size: int = AHEAD_ON_DEVICES,
                     devices=None) -> Iterator[dict]:
    """Host batches (leading axis: the local devices) -> the same on the devices, `size` batches
    sent ahead of the one the caller takes (the copies run while the steps run)."""
    queue = collections.deque()
    for batch in batches:
        queue.append({k: replicas.per_device(v, devices) for k, v in batch.items()})
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def streamed_chunks(train_batch, batches: Iterator[dict], state, *, start_step: int,
                    steps_per_epoch: int, timer: ChunkTimer):
    """`timed_chunks` of steps that each take the next host batch (leading axis: the local
    devices; 'image', 'label', 'mask'), sent to the devices ahead of the steps."""
    on_devices = ahead_on_devices(batches)

    def run_steps(state, first, count):
        del first  # the stream is already there
        for batch in itertools.islice(on_devices, count):
            state = train_batch(state, batch["image"], batch["label"], batch["mask"])
        return state

    return timed_chunks(run_steps, state, start_step=start_step, steps_per_epoch=steps_per_epoch,
                        timer=timer)


class HostStreamPipeline:
    """Steps fed from host memory or disk: the whole train split as random-access `train` (every
    process reads only its devices' examples of each step) and this process's test shard as
    `test`, both :class:`flaxcnn.datasets.dataset.Examples`-like (``len``, ``read(indices)``,
    ``all_labels()``).

    grain reads the steps ahead (`read_threads` threads, `read_ahead` steps): a
    ``grain.MapDataset`` of the epoch's remaining steps, each mapped to its batch. A step's
    position in the epoch is all there is to its batch, so a resumed run starts the map at its
    step (the RunState's step is the checkpointed position; grain's iterator state is not needed).
    """

    def __init__(self, train, test, cfg: training.StepConfig, *, steps_per_epoch: int,
                 num_test: int, read_threads: int | None = None, read_ahead: int = 4):
        import grain  # half a second of imports that the device pipeline does not need

        self.grain = grain
        self.train, self.test, self.steps_per_epoch = train, test, steps_per_epoch
        self.batch_per_device, self.eval_per_device = cfg.batch_per_device, cfg.eval_batch_per_device
        self.read_options = grain.ReadOptions(
            num_threads=read_threads or min(4, os.cpu_count() or 1), prefetch_buffer_size=read_ahead)
        self.positions = local_positions()
        self.num_devices = jax.device_count()
        self._permutation = make_permutation()
        self.train_batch = training.make_train_batch(cfg)
        self.evaluate_batch = training.make_evaluate_batch(cfg)
        self.eval_steps = eval_steps(math.ceil(num_test / jax.process_count()),
                                     cfg.eval_batch_per_device, jax.local_device_count())
        self.timer = ChunkTimer()

    def read_ahead_bytes(self, image_shape) -> int:
        """Host memory of the train batches in flight: read ahead, being read, sent ahead."""
        in_flight = (self.read_options.prefetch_buffer_size + self.read_options.num_threads
                     + AHEAD_ON_DEVICES)
        per_step = len(self.positions) * self.batch_per_device * int(np.prod(image_shape))
        return in_flight * per_step

    def epoch_order(self, data_key, epoch: int) -> np.ndarray:
        """The epoch's order of the train split, the device pipeline's (from the replicated data
        key and the epoch)."""
        return replicas.unreplicate(self._permutation(data_key, epoch, len(self.train)))

    def train_batches(self, order: np.ndarray, start_step: int) -> Iterator[dict]:
        """This process's part of steps start_step.. of the epoch in `order`, read ahead on the
        host: {'image': (local devices, b, H, W, C) uint8, 'label': (local devices, b) int32,
        'mask': (local devices, b) bool}, as `training.make_train_chunk` gathers them on the
        devices: positions past the end of `order` (the last batch's padding) are masked out."""
        b, n = self.batch_per_device, len(order)

        def read(step):
            positions = (step * self.num_devices + self.positions[:, None]) * b + np.arange(b)
            images, labels = self.train.read(order[np.minimum(positions, n - 1).reshape(-1)])
            return {"image": images.reshape(len(self.positions), b, *images.shape[1:]),
                    "label": labels.reshape(len(self.positions), b), "mask": positions < n}

        steps = self.grain.MapDataset.range(start_step, self.steps_per_epoch).map(read)
        return iter(steps.to_iter_dataset(self.read_options))

    def train_chunks(self, state, *, epoch: int, start_step: int):
        order = self.epoch_order(state.data_key, epoch)
        return streamed_chunks(self.train_batch, self.train_batches(order, start_step), state,
                               start_step=start_step, steps_per_epoch=self.steps_per_epoch,
                               timer=self.timer)

    def test_batches(self) -> Iterator[dict]:
        """Every test example of this process once, in the device pipeline's layout: step s of
        local device d holds examples (s * local devices + d) * e ..., masked past the shard."""
        e, local, n = self.eval_per_device, len(self.positions), len(self.test)

        def read(step):
            rows = (step * local + np.arange(local)[:, None]) * e + np.arange(e)
            images, labels = self.test.read(np.minimum(rows, max(n - 1, 0)).reshape(-1))
            return {"image": images.reshape(local, e, *images.shape[1:]),
                    "label": labels.reshape(local, e), "mask": rows < n}

        steps = self.grain.MapDataset.range(self.eval_steps).map(read)
        return iter(steps.to_iter_dataset(self.read_options))

    def evaluate(self, state) -> tuple[dict, np.ndarray]:
        """Global test sums of a replicated RunState, and this process's predictions in example
        order."""
        totals, preds = None, []
        for batch in ahead_on_devices(self.test_batches()):
            sums, p = self.evaluate_batch(state.train, batch["image"], batch["label"],
                                          batch["mask"])
            sums = replicas.host_sums(sums)
            totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
            preds.append(replicas.local_array(p).reshape(-1))
        return totals, np.concatenate(preds)[:len(self.test)]

    def preview(self, count: int, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As DevicePipeline.preview: only the chosen images are read from the source."""
        labels = self.test.all_labels()
        indices = plots.spread_over_classes(labels, count, num_classes)
        images, _ = self.test.read(indices)
        return images, indices, labels


# ---------------------------------------------------------------------------------- tf.data stream


class StreamPipeline:
    """Batches of this process's shard streamed from tf.data (a TfdsDataset's stream_train,
    stream_eval): tfrecord files and images of varying size, which only tf.data reads."""

    def __init__(self, dataset, cfg: training.StepConfig, *, steps_per_epoch: int, seed: int):
        self.dataset, self.cfg, self.seed = dataset, cfg, seed
        self.steps_per_epoch = steps_per_epoch
        local_devices = jax.local_device_count()
        self.local_batch = cfg.batch_per_device * local_devices
        self.local_eval_batch = cfg.eval_batch_per_device * local_devices
        self.train_batch = training.make_train_batch(cfg)
        self.evaluate_batch = training.make_evaluate_batch(cfg)
        self.timer = ChunkTimer()

    def train_chunks(self, state, *, epoch: int, start_step: int):
        batches = self.dataset.stream_train(batch_size=self.local_batch,
                                            image_size=self.cfg.image_size, seed=self.seed,
                                            epoch=epoch, skip_batches=start_step)
        return streamed_chunks(self.train_batch, map(_per_device, batches), state,
                               start_step=start_step, steps_per_epoch=self.steps_per_epoch,
                               timer=self.timer)

    def evaluate(self, state) -> tuple[dict, np.ndarray]:
        """Global test sums of a replicated RunState, and this process's predictions in example
        order."""
        totals, preds = None, []
        for batch in self._test_batches():
            shaped = _per_device(batch)
            sums, p = self.evaluate_batch(state.train, shaped["image"], shaped["label"],
                                          shaped["mask"])
            sums = replicas.host_sums(sums)
            totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
            preds.append(replicas.local_array(p).reshape(-1)[batch["mask"]])
        return totals, np.concatenate(preds)

    def preview(self, count: int, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As DevicePipeline.preview, in one pass over the test stream: only each class's first
        images, the candidates, are kept."""
        per_class = math.ceil(count / max(num_classes, 1))
        kept, labels, seen = {}, [], collections.Counter()
        for batch in self._test_batches():
            for image, label in zip(batch["image"][batch["mask"]], batch["label"][batch["mask"]]):
                if seen[int(label)] < per_class:
                    kept[len(labels)] = image
                seen[int(label)] += 1
                labels.append(label)
        labels = np.asarray(labels)
        indices = plots.spread_over_classes(labels, count, num_classes)
        return np.stack([kept[i] for i in indices]), indices, labels

    def _test_batches(self):
        return self.dataset.stream_eval(batch_size=self.local_eval_batch,
                                        image_size=self.cfg.image_size)


def _per_device(batch: dict) -> dict:
    """A host batch -> arrays with a leading local-device axis, as pmap takes them."""
    d = jax.local_device_count()
    return {k: v.reshape(d, -1, *v.shape[1:]) for k, v in batch.items()}
