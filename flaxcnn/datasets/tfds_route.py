"""Any other tfds image-classification dataset (``cifar10``, ...), or one tfds already prepared here.

Preparing a tfds dataset needs TensorFlow, and so does reading one stored as tfrecord (tfds's
default) or one whose images vary in size: those are read by tf.data
(:class:`~flaxcnn.datasets.tf_dataset.TfdsDataset`). One stored as ArrayRecord
(``file_format='array_record'``) is a :class:`SourceDataset`: random access through
``tfds.data_source``, without TensorFlow, read into arrays for the device pipeline or streamed by
the host stream (:class:`flaxcnn.pipelines.HostStreamPipeline`), never read whole for it. Without
TensorFlow, the other cases stop with one line saying how to install it.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import registered as tfds_registered

from flaxcnn.datasets.catalog import (INSTALL_TENSORFLOW, SAMPLE_NAME, DataError,
                                      tensorflow_installed)
from flaxcnn.datasets.dataset import SPLITS, DatasetInfo, shard_bounds
from flaxcnn.datasets.tf_dataset import TfdsDataset
from flaxcnn.datasets.tf_setup import configure_tfds, count, quiet, tensorflow
from flaxcnn.errors import first_line

READ_CHUNK = 1024  # examples a data source reads at a time when a whole split is asked for
TFRECORD_FRAMING = 16  # bytes around each record of a tfrecord file: length, two checksums


def resolve(name: str, *, data_dir, process_index: int, process_count: int, can_download,
            offline_message: str):
    """The prepared tfds dataset `name`: a SourceDataset (ArrayRecord files) or a TfdsDataset.

    `can_download()` says whether the network is up; `offline_message` is the error's tail when
    it is not.
    """
    configure_tfds()
    has_tensorflow = tensorflow_installed()
    if has_tensorflow:
        tensorflow()  # configured before tfds touches it
    with quiet():  # e.g. "Variant folder ... has no dataset_info.json" before preparing
        builder = _builder(name, data_dir)
        _check_image_classification(builder, name)
        if not builder.is_prepared():
            if not has_tensorflow:
                raise DataError(f"dataset {name!r} is not prepared in {builder.data_dir_root}, "
                                f"and tfds needs TensorFlow to prepare it: {INSTALL_TENSORFLOW}")
            if not can_download():
                raise DataError(f"dataset {name!r} is not prepared in {builder.data_dir_root} and "
                                f"cannot be downloaded (no network); {offline_message}")
            _prepare(builder, name)
    _check_prepared_files(builder, name)
    splits = {s: _resolve_split(builder, name, s) for s in ("train", "test")}
    shape = tuple(builder.info.features["image"].shape)
    label = builder.info.features["label"]
    static = all(d is not None for d in shape)
    if str(builder.info.file_format).lower().endswith("array_record") and static:
        sources = {s: builder.as_data_source(split=split) for s, split in splits.items()}
        info = DatasetInfo(name=name, num_classes=int(label.num_classes),
                           class_names=tuple(label.names), image_shape=shape,
                           channels=int(shape[-1]), num_train=len(sources["train"]),
                           num_test=len(sources["test"]))
        return SourceDataset(info=info, sources=sources, process_index=process_index,
                             process_count=process_count,
                             storage=f"read from the ArrayRecord files in {builder.data_dir}")
    if not has_tensorflow:
        raise DataError(f"dataset {name!r} in {builder.data_dir} is stored as "
                        f"{builder.info.file_format.value}, which tfds reads only with "
                        f"TensorFlow: "
                        f"{INSTALL_TENSORFLOW}")
    info = DatasetInfo(name=name, num_classes=int(label.num_classes),
                       class_names=tuple(label.names), image_shape=shape if static else None,
                       channels=int(shape[-1]), num_train=_num_examples(builder, splits["train"]),
                       num_test=_num_examples(builder, splits["test"]))
    return TfdsDataset(info=info, builder=builder, train_split=splits["train"],
                       test_split=splits["test"], process_index=process_index,
                       process_count=process_count)


class SourceExamples:
    """Random access to examples [start, stop) of a tfds data source (ArrayRecord; no
    TensorFlow), as :class:`flaxcnn.datasets.dataset.Examples` gives arrays."""

    def __init__(self, source, shape, start: int = 0, stop: int | None = None):
        self.source, self.shape = source, tuple(shape)
        self.start, self.stop = start, len(source) if stop is None else stop

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.shape

    def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, np.int64)
        if not len(indices):
            return np.zeros((0, *self.shape), np.uint8), np.zeros((0,), np.int32)
        records = self.source.__getitems__((indices + self.start).tolist())
        return (np.stack([r["image"] for r in records]).astype(np.uint8, copy=False),
                np.array([r["label"] for r in records], np.int32))

    def read_all(self) -> tuple[np.ndarray, np.ndarray]:
        images = np.empty((len(self), *self.shape), np.uint8)
        labels = np.empty((len(self),), np.int32)
        for first in range(0, len(self), READ_CHUNK):
            rows = np.arange(first, min(first + READ_CHUNK, len(self)))
            images[rows], labels[rows] = self.read(rows)
        return images, labels

    def all_labels(self) -> np.ndarray:
        return self.read_all()[1]


@dataclasses.dataclass(frozen=True)
class SourceDataset:
    """A tfds dataset stored as ArrayRecord, read through its data sources (no TensorFlow):
    ``sources`` maps 'train' and 'test' to ``builder.as_data_source(split)``. Shards are
    contiguous, as ``tfds.split_for_jax_process`` cuts them."""
    info: DatasetInfo
    sources: dict[str, Any]
    process_index: int = 0
    process_count: int = 1
    storage: str = "read from ArrayRecord files"

    def train_batches_per_epoch(self, batch_size: int) -> int:
        """Batches of `batch_size` per epoch in each process, the same on every process."""
        return (self.info.num_train // self.process_count) // batch_size

    def load_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """This process's shard of 'train' or 'test' as uint8 (N, H, W, C) images and int32
        labels."""
        return self.examples(split).read_all()

    def examples(self, split: str, *, whole: bool = False) -> SourceExamples:
        """Random access to this process's shard of `split` (`whole`: the whole split)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        source = self.sources[split]
        start, stop = (0, len(source)) if whole else shard_bounds(
            len(source), self.process_index, self.process_count)
        return SourceExamples(source, self.info.image_shape, start, stop)


def is_prepared(name: str, data_dir) -> bool:
    configure_tfds()
    try:
        with quiet():
            return tfds.builder(name, data_dir=data_dir).is_prepared()
    except Exception:  # pylint: disable=broad-except  # unknown name, bad version: not here
        return False


def _builder(name: str, data_dir):
    namespace = _parse_name(name).namespace
    if namespace:  # community/huggingface lookups go to the network, even just to resolve
        raise DataError(
            f"dataset {name!r} is from the tfds namespace {namespace!r}, which flaxcnn does not "
            f"support; use a dataset built into tfds (e.g. fashion_mnist, cifar10) or {SAMPLE_NAME}"
        )
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds_registered.DatasetNotFoundError:
        raise _unknown_dataset(name) from None
    except Exception as e:  # pylint: disable=broad-except  # e.g. a bad config/version
        raise DataError(f"cannot open tfds dataset {name!r}: {first_line(e, with_type=True)}") from e


def _parse_name(name: str):
    """tfds' DatasetName of 'ns:name/config:version' (name, namespace); DataError if malformed."""
    try:
        return tfds.core.naming.parse_builder_name_kwargs(name)[0]
    except Exception as e:  # pylint: disable=broad-except
        raise DataError(f"cannot parse dataset name {name!r}: {first_line(e, with_type=True)}") from e


def _unknown_dataset(name: str) -> DataError:
    try:
        known = tfds.list_builders(with_community_datasets=False) + [SAMPLE_NAME]
        close = difflib.get_close_matches(name, known, n=1)
    except Exception:  # pylint: disable=broad-except  # only for the hint
        close = []
    hint = f"did you mean {close[0]}? " if close else ""
    return DataError(
        f"unknown dataset {name!r}: it is not a tfds dataset; {hint}"
        f"try e.g. --config.dataset=fashion_mnist, or {SAMPLE_NAME} (bundled, offline)"
    )


def _check_image_classification(builder, name: str) -> None:
    features = builder.info.features
    keys = sorted(features.keys()) if isinstance(features, tfds.features.FeaturesDict) else []
    image = features["image"] if "image" in keys else None
    label = features["label"] if "label" in keys else None
    if not isinstance(image, tfds.features.Image) or not isinstance(label, tfds.features.ClassLabel):
        raise DataError(
            f"dataset {name!r} is not an image-classification dataset: flaxcnn needs an 'image' "
            f"(Image) and a 'label' (ClassLabel) feature, it has {keys or type(features).__name__}; "
            "pick one like fashion_mnist, mnist or cifar10"
        )
    shape = tuple(image.shape)
    if len(shape) != 3 or shape[-1] is None:
        raise DataError(f"dataset {name!r} has images of shape {shape}, flaxcnn needs (H, W, C) "
                        "with C known")
    if np.dtype(image.np_dtype) != np.uint8:
        raise DataError(f"dataset {name!r} has {np.dtype(image.np_dtype)} images, flaxcnn needs "
                        "uint8 images")


def _prepare(builder, name: str) -> None:
    try:
        builder.download_and_prepare()
    except DataError:
        raise
    except Exception as e:  # pylint: disable=broad-except  # one clear line for train.py
        raise DataError(
            f"could not download and prepare dataset {name!r} into {builder.data_dir_root}: "
            f"{first_line(e, with_type=True)}"
        ) from e


def _check_prepared_files(builder, name: str) -> None:
    """Refuses a prepared folder whose data files are missing or shorter than its
    dataset_info.json says (a copy or a preparation that stopped half-way): reading would only
    fail at that record, in the middle of training."""
    folder = builder.data_dir
    for split, info in builder.info.splits.items():
        try:
            paths = [str(p) for p in info.filepaths]
        except Exception:  # pylint: disable=broad-except  # no file list: nothing to check
            continue
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise DataError(
                f"the prepared dataset {name!r} in {folder} is incomplete: its {split} file "
                f"{missing[0]} is missing ({len(missing)} of {len(paths)} files); delete {folder} "
                "and run again to prepare it afresh")
        if str(builder.info.file_format).lower().endswith("tfrecord") and int(info.num_bytes):
            size = sum(os.path.getsize(p) for p in paths)
            expected = int(info.num_bytes) + TFRECORD_FRAMING * int(info.num_examples)
            if size < expected:
                raise DataError(
                    f"the prepared dataset {name!r} in {folder} is damaged: its {split} files "
                    f"({', '.join(os.path.basename(p) for p in paths)}) hold {size} bytes, "
                    f"dataset_info.json says {expected}; delete {folder} and run again to prepare "
                    "it afresh")


def _resolve_split(builder, name: str, split: str) -> str:
    """`split`, with 'test' standing for 'validation' in datasets that have no test split."""
    known = set(builder.info.splits.keys())
    if not known or not re.fullmatch(r"\w+", split):  # unknown under mock, or a split expression
        return split
    if split == "test" and "test" not in known and "validation" in known:
        return "validation"
    if split not in known:
        raise DataError(f"dataset {name!r} has no {split!r} split (it has "
                        f"{', '.join(sorted(known))})")
    return split


def _num_examples(builder, split: str) -> int:
    """Examples in `split` as tfds serves it: its cardinality (tfds asserts it), else counted."""
    with quiet():
        ds = builder.as_dataset(split=split, read_config=tfds.ReadConfig(try_autocache=False),
                                decoders={"image": tfds.decode.SkipDecoding()})
    return count(ds)
