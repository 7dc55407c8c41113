"""The tf.data stream of in-memory arrays: ``--config.input_pipeline=stream`` for the sample, IDX
files or image folders. The only dataset code besides the tfds route that imports TensorFlow.

Batches are numpy; the train order depends only on (seed, epoch), as in the tfds route.
"""
from __future__ import annotations

import hashlib
import math
from typing import Iterable, Iterator

import numpy as np

from flaxcnn.datasets.catalog import INSTALL_TENSORFLOW, DataError, tensorflow_installed


def tensorflow():
    """TensorFlow (configured by :mod:`flaxcnn.datasets.tf_setup`), or a one-line DataError."""
    if not tensorflow_installed():
        raise DataError("the tf.data stream (--config.input_pipeline=stream) needs TensorFlow, "
                        f"which is not installed: {INSTALL_TENSORFLOW}, or use "
                        "--config.input_pipeline=device")
    from flaxcnn.datasets import tf_setup

    return tf_setup.tensorflow()


def order_seed(seed: int, epoch: int) -> int:
    digest = hashlib.sha256(f"flaxcnn:{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:7], "big")  # fits tf.int64


def resize_fn(image_size: int, shape):
    """A tf function: (uint8 image of `shape` (H, W, C), label) -> uint8 (image_size, image_size,
    C), int32, resized only if needed."""
    tf = tensorflow()
    height, width, channels = shape
    resize = (height, width) != (image_size, image_size)

    def fn(image, label):
        if resize:
            # Bilinear with antialiasing, like jax.image.resize(method='bilinear') which the
            # device pipeline uses; then rounded back to uint8.
            image = tf.image.resize(image, (image_size, image_size), method="bilinear",
                                    antialias=True)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
        image = tf.ensure_shape(image, (image_size, image_size, channels))
        return image, tf.cast(label, tf.int32)

    return fn


def train_batches(images: np.ndarray, labels: np.ndarray, *, batch_size: int, image_size: int,
                  seed: int, epoch: int, num_batches: int, skip_batches: int = 0
                  ) -> Iterator[dict]:
    """One epoch of (images, labels) shuffled by (seed, epoch), as `num_batches` numpy batches.

    Yields ``{'image': uint8 (batch_size, image_size, image_size, C), 'label': int32, 'mask':
    bool}``, the last partial batch padded and fully-masked ones after it up to `num_batches` (see
    :func:`padded`); ``skip_batches=k`` yields the same batches minus the first k.
    """
    tf = tensorflow()
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    ds = ds.shuffle(max(len(labels), 1), seed=order_seed(seed, epoch),
                    reshuffle_each_iteration=False)
    if skip_batches:
        ds = ds.skip(int(skip_batches) * batch_size)
    ds = ds.map(resize_fn(image_size, images.shape[1:]), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return padded(ds.as_numpy_iterator(), batch_size=batch_size, image_size=image_size,
                  channels=images.shape[-1], num_batches=num_batches - skip_batches)


def eval_batches(images: np.ndarray, labels: np.ndarray, *, batch_size: int, image_size: int,
                 num_test: int, process_count: int) -> Iterator[dict]:
    """This process's test shard once, in order, padded and masked (see :func:`padded`)."""
    tf = tensorflow()
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    ds = ds.map(resize_fn(image_size, images.shape[1:]), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return padded(ds.as_numpy_iterator(), batch_size=batch_size, image_size=image_size,
                  channels=images.shape[-1],
                  num_batches=eval_batch_count(len(labels), num_test, process_count, batch_size))


def eval_batch_count(shard_size: int, num_test: int, process_count: int, batch_size: int) -> int:
    """Batches every process yields: enough for the largest shard, so multi-host eval lines up."""
    return max(math.ceil(shard_size / batch_size),
               math.ceil(math.ceil(num_test / process_count) / batch_size))


def padded(batches: Iterable, *, batch_size: int, image_size: int, channels: int,
           num_batches: int) -> Iterator[dict]:
    """``(image, label)`` batches -> ``{'image', 'label', 'mask'}`` of exactly `batch_size`, the
    last zero-padded (``mask`` marks the real examples), then fully-masked batches up to
    `num_batches`."""
    empty = {"image": np.zeros((batch_size, image_size, image_size, channels), np.uint8),
             "label": np.zeros((batch_size,), np.int32), "mask": np.zeros((batch_size,), bool)}
    produced = 0
    for image, label in batches:
        n = len(label)
        batch = {k: v.copy() for k, v in empty.items()}
        batch["image"][:n], batch["label"][:n], batch["mask"][:n] = image, label, True
        produced += 1
        yield batch
    for _ in range(num_batches - produced):
        yield empty
