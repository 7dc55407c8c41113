"""A resolved dataset: its facts, and this process's shard of it as arrays or as a tf.data stream."""
from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from flaxcnn.datasets.builders import DataError
from flaxcnn.datasets.tf_setup import count, quiet, tensorflow

SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple | None  # (H, W, C) when static, None when images vary in size
    channels: int
    num_train: int  # examples in the whole train split, as tfds serves it (all processes)
    num_test: int  # examples in the whole evaluation split

    @property
    def nbytes_in_memory(self) -> int | None:
        """Host bytes of train + test as arrays (uint8 images + int32 labels); None when the image
        shape varies (such datasets must be streamed)."""
        if self.image_shape is None:
            return None
        per_example = int(np.prod(self.image_shape)) + np.dtype(np.int32).itemsize
        return (self.num_train + self.num_test) * per_example


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A prepared tfds image-classification dataset and this process's place among the processes.

    Made once by :func:`flaxcnn.datasets.resolve`. ``train_split`` / ``test_split`` are tfds split
    names ('test' is 'validation' for datasets without a test split). Shards are
    ``tfds.split_for_jax_process``'s: they partition each split across processes.
    """
    info: DatasetInfo
    builder: Any
    train_split: str
    test_split: str
    process_index: int = 0
    process_count: int = 1

    def train_batches_per_epoch(self, batch_size: int) -> int:
        """Batches of `batch_size` per epoch in each process: the same on every process (shards
        differ by up to one example), so none waits in a collective for one that ran out."""
        return (self.info.num_train // self.process_count) // batch_size

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
        """One epoch of this process's shard of 'train' as numpy batches.

        Yields ``{'image': uint8 (batch_size, image_size, image_size, C), 'label': int32}`` (the
        last partial batch is dropped). The order depends only on ``(seed, epoch)``: the files and
        a buffer of ``shuffle_buffer`` still-encoded examples are shuffled with a seed made from
        both. ``skip_batches=k`` yields the same batches minus the first k (resuming mid-epoch).
        Shards are equal-sized (``drop_remainder``), so every process yields the same number.
        """
        tf = tensorflow()
        order_seed = _order_seed(seed, epoch)
        read_config = tfds.ReadConfig(
            shuffle_seed=order_seed, shuffle_reshuffle_each_iteration=False, try_autocache=False,
            enable_ordering_guard=False,  # our IDX builders store examples in file order
        )
        with quiet():
            ds = self.builder.as_dataset(split=self._shard("train", drop_remainder=True),
                                         shuffle_files=True, read_config=read_config,
                                         decoders={"image": tfds.decode.SkipDecoding()})
        ds = ds.map(lambda ex: (ex["image"], ex["label"]))
        ds = ds.shuffle(shuffle_buffer, seed=order_seed, reshuffle_each_iteration=False)
        if skip_batches:
            ds = ds.skip(int(skip_batches) * batch_size)
        ds = ds.map(self._decode_and_resize(image_size), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True)
        ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        return ({"image": image, "label": label} for image, label in tfds.as_numpy(ds))

    def stream_eval(self, *, batch_size: int, image_size: int) -> Iterator[dict]:
        """Every test example of this process's shard exactly once, in batches of `batch_size`.

        Yields ``{'image', 'label', 'mask'}``; the last batch is zero-padded to ``batch_size`` and
        ``mask`` (bool) marks the real examples. Every process yields the same number of batches
        (processes with a smaller shard add fully-masked batches), so multi-host eval steps line up.
        """
        tf = tensorflow()
        with quiet():
            ds = self.builder.as_dataset(split=self._shard("test"),
                                         read_config=tfds.ReadConfig(try_autocache=False),
                                         decoders={"image": tfds.decode.SkipDecoding()})
        shard_size = count(ds)
        num_batches = max(math.ceil(shard_size / batch_size),
                          math.ceil(math.ceil(self.info.num_test / self.process_count) / batch_size))
        ds = ds.map(lambda ex: (ex["image"], ex["label"]))
        ds = ds.map(self._decode_and_resize(image_size), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
        empty = {"image": np.zeros((batch_size, image_size, image_size, self.info.channels),
                                   np.uint8),
                 "label": np.zeros((batch_size,), np.int32), "mask": np.zeros((batch_size,), bool)}

        def batches():
            produced = 0
            for image, label in tfds.as_numpy(ds):
                n = len(label)
                batch = {k: v.copy() for k, v in empty.items()}
                batch["image"][:n], batch["label"][:n], batch["mask"][:n] = image, label, True
                produced += 1
                yield batch
            for _ in range(num_batches - produced):
                yield empty

        return batches()

    def _shard(self, split: str, drop_remainder: bool = False) -> str:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        name = self.train_split if split == "train" else self.test_split
        return tfds.split_for_jax_process(name, process_index=self.process_index,
                                          process_count=self.process_count,
                                          drop_remainder=drop_remainder)

    def _decode_and_resize(self, image_size: int):
        """A tf function: encoded image -> uint8 (image_size, image_size, C), resized only if needed."""
        tf = tensorflow()
        feature = self.builder.info.features["image"]
        height, width, channels = feature.shape
        resize = (height, width) != (image_size, image_size)

        def fn(encoded, label):
            image = feature.decode_example(encoded)
            if resize:
                # Bilinear with antialiasing, like jax.image.resize(method='bilinear') which the
                # device pipeline uses; then rounded back to uint8.
                image = tf.image.resize(image, (image_size, image_size), method="bilinear",
                                        antialias=True)
                image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
            image = tf.ensure_shape(image, (image_size, image_size, channels))
            return image, tf.cast(label, tf.int32)

        return fn


def _order_seed(seed: int, epoch: int) -> int:
    digest = hashlib.sha256(f"flaxcnn:{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:7], "big")  # fits tf.int64
