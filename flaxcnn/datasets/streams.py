"""What the tf.data stream of a tfds dataset (:mod:`flaxcnn.datasets.tf_dataset`) is made of:
TensorFlow imported only when it is needed, the order seed, the resize, the padded test batches.
Only tfds datasets that tfds reads with TensorFlow alone (tfrecord files, images of varying size)
take this route; arrays and ArrayRecord files are streamed without TensorFlow
(:class:`flaxcnn.pipelines.HostStreamPipeline`).
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
        raise DataError("this dataset's tf.data stream needs TensorFlow, which is not installed: "
                        f"{INSTALL_TENSORFLOW}")
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
