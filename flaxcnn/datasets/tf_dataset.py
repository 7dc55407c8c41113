"""A tfds dataset read through tf.data: this process's shard as arrays or as a stream.

For tfrecord datasets and those too large for memory; needs TensorFlow (see
:mod:`flaxcnn.datasets.tfds_route`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from flaxcnn.datasets import streams
from flaxcnn.datasets.catalog import DataError
from flaxcnn.datasets.dataset import SPLITS, DatasetInfo, train_batches_per_epoch
from flaxcnn.datasets.tf_setup import count, quiet, tensorflow


@dataclasses.dataclass(frozen=True)
class TfdsDataset:
    """A prepared tfds image-classification dataset and this process's place among the processes.

    ``train_split`` / ``test_split`` are tfds split names ('test' is 'validation' for datasets
    without a test split). Shards are ``tfds.split_for_jax_process``'s.
    """
    info: DatasetInfo
    builder: Any
    train_split: str
    test_split: str
    process_index: int = 0
    process_count: int = 1

    def train_batches_per_epoch(self, batch_size: int) -> int:
        """Batches of `batch_size` per epoch in each process, the same on every process (the
        last one partial)."""
        return train_batches_per_epoch(self.info.num_train, self.process_count, batch_size)

    def load_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """This process's shard of 'train' or 'test' as uint8 (N, H, W, C) images and int32 labels."""
        shape = self.info.image_shape
        if shape is None:
            raise DataError(f"dataset {self.info.name!r} has images of varying size; it must be "
                            "streamed (--config.input_pipeline=stream), not loaded into memory")
        tf = tensorflow()
        with quiet():
            ds = self.builder.as_dataset(split=self._shard(split),
                                         read_config=tfds.ReadConfig(try_autocache=False))
        ds = ds.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)))
        n = int(ds.cardinality())
        if n == 0:
            return np.zeros((0, *shape), np.uint8), np.zeros((0,), np.int32)
        # One batch of the whole shard (what tfds' batch_size=-1 does, but sized from the actual
        # cardinality: under mock_data batch_size=-1 asks for a batch of sys.maxsize and aborts).
        chunks = list(tfds.as_numpy(ds.batch(n if n > 0 else 65536)))
        return (np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks]))

    def stream_train(self, *, batch_size: int, image_size: int, seed: int, epoch: int,
                     skip_batches: int = 0, shuffle_buffer: int = 10_000) -> Iterator[dict]:
        """One epoch of this process's train shard as numpy batches, as
        :func:`flaxcnn.datasets.streams.train_batches` yields them; the files and a buffer of
        `shuffle_buffer` still-encoded examples are shuffled by (seed, epoch)."""
        tf = tensorflow()
        order_seed = streams.order_seed(seed, epoch)
        read_config = tfds.ReadConfig(
            shuffle_seed=order_seed, shuffle_reshuffle_each_iteration=False, try_autocache=False,
            enable_ordering_guard=False)
        with quiet():
            ds = self.builder.as_dataset(split=self._shard("train"),
                                         shuffle_files=True, read_config=read_config,
                                         decoders={"image": tfds.decode.SkipDecoding()})
        ds = ds.map(lambda ex: (ex["image"], ex["label"]))
        ds = ds.shuffle(shuffle_buffer, seed=order_seed, reshuffle_each_iteration=False)
        if skip_batches:
            ds = ds.skip(int(skip_batches) * batch_size)
        ds = ds.map(self._decode_and_resize(image_size), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True)
        ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
        return streams.padded(tfds.as_numpy(ds), batch_size=batch_size, image_size=image_size,
                              channels=self.info.channels,
                              num_batches=self.train_batches_per_epoch(batch_size) - skip_batches)

    def stream_eval(self, *, batch_size: int, image_size: int) -> Iterator[dict]:
        """Every test example of this process's shard once; see :func:`streams.padded`."""
        tf = tensorflow()
        with quiet():
            ds = self.builder.as_dataset(split=self._shard("test"),
                                         read_config=tfds.ReadConfig(try_autocache=False),
                                         decoders={"image": tfds.decode.SkipDecoding()})
        num_batches = streams.eval_batch_count(count(ds), self.info.num_test, self.process_count,
                                               batch_size)
        ds = ds.map(lambda ex: (ex["image"], ex["label"]))
        ds = ds.map(self._decode_and_resize(image_size), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
        return streams.padded(tfds.as_numpy(ds), batch_size=batch_size, image_size=image_size,
                              channels=self.info.channels, num_batches=num_batches)

    def _shard(self, split: str) -> str:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        name = self.train_split if split == "train" else self.test_split
        return tfds.split_for_jax_process(name, process_index=self.process_index,
                                          process_count=self.process_count)

    def _decode_and_resize(self, image_size: int):
        """A tf function: encoded image -> uint8 (image_size, image_size, C), resized if needed."""
        feature = self.builder.info.features["image"]
        resize = streams.resize_fn(image_size, feature.shape)
        return lambda encoded, label: resize(feature.decode_example(encoded), label)
