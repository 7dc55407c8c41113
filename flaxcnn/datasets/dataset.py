"""A resolved dataset held as arrays: the bundled sample, IDX files, image folders, tfds data sources.

Everything that fits in memory ends up here as uint8 (N, H, W, C) images and int32 labels, so the
device pipeline needs nothing but numpy to get its data. Only streaming these arrays through tf.data
(``--config.input_pipeline=stream``) imports TensorFlow, and only then.

Any reader that yields arrays plugs in with :meth:`ArrayDataset.from_arrays`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import numpy as np

from flaxcnn.datasets.catalog import DataError

SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple | None  # (H, W, C) when static, None when images vary in size
    channels: int
    num_train: int  # examples in the whole train split (all processes)
    num_test: int  # examples in the whole evaluation split

    @property
    def nbytes_in_memory(self) -> int | None:
        """Host bytes of train + test as arrays (uint8 images + int32 labels); None when the image
        shape varies (such datasets must be streamed)."""
        if self.image_shape is None:
            return None
        per_example = int(np.prod(self.image_shape)) + np.dtype(np.int32).itemsize
        return (self.num_train + self.num_test) * per_example


def train_batches_per_epoch(num_train: int, process_count: int, batch_size: int) -> int:
    """Each process's batches of `batch_size` per epoch: enough for the largest of the
    `process_count` shards of `num_train` examples, the last one partial."""
    return math.ceil(math.ceil(num_train / process_count) / batch_size)


def shard_bounds(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[start, stop) of one process's contiguous shard, as ``tfds.split_for_jax_process`` cuts
    it: the first ``num_examples % process_count`` shards hold one example more."""
    base, extra = divmod(num_examples, process_count)
    start = process_index * base + min(process_index, extra)
    return start, start + base + (process_index < extra)


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset:
    """Train and test arrays of a whole dataset, and this process's place among the processes.

    ``train`` / ``test`` are ``(uint8 images (N, H, W, C), int32 labels (N,))`` of the whole split;
    :meth:`load_arrays` and the streams give this process's shard of them.
    """
    info: DatasetInfo
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    process_index: int = 0
    process_count: int = 1

    @classmethod
    def from_arrays(cls, name: str, class_names, train, test, *, process_index: int = 0,
                    process_count: int = 1) -> ArrayDataset:
        """Checks and wraps whole splits: images uint8 (N, H, W) or (N, H, W, C), labels in
        [0, len(class_names))."""
        class_names = tuple(class_names)
        splits = {split: _checked_split(name, split, *arrays, len(class_names))
                  for split, arrays in zip(SPLITS, (train, test))}
        shapes = {split: images.shape[1:] for split, (images, _) in splits.items()}
        if shapes["train"] != shapes["test"]:
            raise DataError(f"dataset {name!r} has train images of shape {shapes['train']} but "
                            f"test images of shape {shapes['test']}; they must match")
        info = DatasetInfo(name=name, num_classes=len(class_names), class_names=class_names,
                           image_shape=tuple(int(d) for d in shapes["train"]),
                           channels=int(shapes["train"][-1]),
                           num_train=len(splits["train"][1]), num_test=len(splits["test"][1]))
        return cls(info=info, train=splits["train"], test=splits["test"],
                   process_index=process_index, process_count=process_count)

    def train_batches_per_epoch(self, batch_size: int) -> int:
        """Batches of `batch_size` per epoch in each process, the last one partial (d2l's): the
        same on every process, enough for the largest shard (shards differ by up to one
        example), so none waits in a collective for one that ran out."""
        return train_batches_per_epoch(self.info.num_train, self.process_count, batch_size)

    def load_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """This process's shard of 'train' or 'test' as uint8 (N, H, W, C) images and int32 labels."""
        return self._shard(split)

    def stream_train(self, *, batch_size: int, image_size: int, seed: int, epoch: int,
                     skip_batches: int = 0) -> Iterator[dict]:
        """One epoch of this process's train shard through tf.data; see
        :func:`flaxcnn.datasets.streams.train_batches`."""
        from flaxcnn.datasets import streams

        images, labels = self._shard("train")
        return streams.train_batches(images, labels, batch_size=batch_size, image_size=image_size,
                                     seed=seed, epoch=epoch, skip_batches=skip_batches,
                                     num_batches=self.train_batches_per_epoch(batch_size))

    def stream_eval(self, *, batch_size: int, image_size: int) -> Iterator[dict]:
        """Every test example of this process's shard once; see
        :func:`flaxcnn.datasets.streams.eval_batches`."""
        from flaxcnn.datasets import streams

        images, labels = self._shard("test")
        return streams.eval_batches(images, labels, batch_size=batch_size, image_size=image_size,
                                    num_test=self.info.num_test, process_count=self.process_count)

    def _shard(self, split: str):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        images, labels = self.train if split == "train" else self.test
        start, stop = shard_bounds(len(labels), self.process_index, self.process_count)
        return images[start:stop], labels[start:stop]


def _checked_split(name: str, split: str, images, labels, num_classes: int):
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DataError(f"dataset {name!r}: {split} images must be uint8 (N, H, W, C), got "
                        f"{images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise DataError(f"dataset {name!r}: {len(images)} {split} images but labels of shape "
                        f"{labels.shape}")
    if labels.size and not (0 <= int(labels.min()) and int(labels.max()) < num_classes):
        raise DataError(f"dataset {name!r}: {split} labels must be in 0..{num_classes - 1}, got "
                        f"{int(labels.min())}..{int(labels.max())}")
    return images, labels.astype(np.int32)
