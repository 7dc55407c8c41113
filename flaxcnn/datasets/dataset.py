"""A resolved dataset held as arrays: the bundled sample, IDX files, image folders.

Every such dataset ends up here as uint8 (N, H, W, C) images and int32 labels, in memory or
memory-mapped from disk (an image folder's cache), so both the device pipeline and the host stream
need nothing but numpy to get their data; neither imports TensorFlow.

Any reader that yields arrays plugs in with :meth:`ArrayDataset.from_arrays`. :class:`Examples` is
what the host stream reads: random access to a split by example index.
"""
from __future__ import annotations

import dataclasses
import math

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
    storage: str = "in memory"  # where the arrays live, for the run's header

    @classmethod
    def from_arrays(cls, name: str, class_names, train, test, *, process_index: int = 0,
                    process_count: int = 1, storage: str = "in memory") -> ArrayDataset:
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
                   process_index=process_index, process_count=process_count, storage=storage)

    def train_batches_per_epoch(self, batch_size: int) -> int:
        """Batches of `batch_size` per epoch in each process, the last one partial (d2l's): the
        same on every process, enough for the largest shard (shards differ by up to one
        example), so none waits in a collective for one that ran out."""
        return train_batches_per_epoch(self.info.num_train, self.process_count, batch_size)

    def load_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """This process's shard of 'train' or 'test' as uint8 (N, H, W, C) images and int32 labels."""
        return self._shard(split)

    def examples(self, split: str, *, whole: bool = False) -> Examples:
        """Random access to this process's shard of 'train' or 'test' (`whole`: the whole split),
        for the host stream."""
        return Examples(*self._shard(split, process_count=1 if whole else None))

    def _shard(self, split: str, process_count: int | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        images, labels = self.train if split == "train" else self.test
        if process_count == 1:
            return images, labels
        start, stop = shard_bounds(len(labels), self.process_index, self.process_count)
        return images[start:stop], labels[start:stop]


class Examples:
    """Random access to uint8 (N, H, W, C) images and int32 labels held as arrays, in memory or
    memory-mapped: what the host stream (:class:`flaxcnn.pipelines.HostStreamPipeline`) reads."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.images.shape[1:])

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The examples at `indices` (any order, repeats allowed), as new arrays. They are read
        in ascending order: from a memory-mapped file that is one pass over the file."""
        indices = np.asarray(indices, np.int64)
        order = np.argsort(indices, kind="stable")
        images = np.empty((len(indices), *self.images.shape[1:]), np.uint8)
        images[order] = self.images[indices[order]]
        return images, np.asarray(self.labels[indices], np.int32)

    def all_labels(self) -> np.ndarray:
        return np.asarray(self.labels, np.int32)


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
