"""Any other tfds image-classification dataset (``cifar10``, ...), or one tfds already prepared here.

Preparing a tfds dataset needs TensorFlow, and so does reading one stored as tfrecord (tfds's
default). One stored as ArrayRecord is read with ``tfds.data_source``, without TensorFlow, into
arrays (:class:`~flaxcnn.datasets.dataset.ArrayDataset`) when it fits in memory. Without
TensorFlow, the other cases stop with one line saying how to install it.
"""
from __future__ import annotations

import difflib
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import registered as tfds_registered

from flaxcnn.datasets.catalog import (INSTALL_TENSORFLOW, SAMPLE_NAME, DataError,
                                      tensorflow_installed)
from flaxcnn.datasets.dataset import ArrayDataset, DatasetInfo
from flaxcnn.datasets.tf_dataset import TfdsDataset
from flaxcnn.datasets.tf_setup import configure_tfds, count, quiet, tensorflow
from flaxcnn.errors import first_line

IN_MEMORY_MAX_BYTES = 2 << 30  # ArrayRecord datasets up to this size are read into arrays
TFRECORD_FRAMING = 16  # bytes around each record of a tfrecord file: length, two checksums


def resolve(name: str, *, data_dir, process_index: int, process_count: int, can_download,
            offline_message: str):
    """The prepared tfds dataset `name`: an ArrayDataset (ArrayRecord files) or a TfdsDataset.

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
        arrays = {s: _read_data_source(builder, split) for s, split in splits.items()}
        nbytes = sum(x.nbytes + y.nbytes for x, y in arrays.values())
        if nbytes <= IN_MEMORY_MAX_BYTES or not has_tensorflow:
            return ArrayDataset.from_arrays(name, label.names, arrays["train"], arrays["test"],
                                            process_index=process_index,
                                            process_count=process_count)
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


def _read_data_source(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole split of an ArrayRecord dataset, decoded by tfds without TensorFlow."""
    source = builder.as_data_source(split=split)
    examples = source.__getitems__(range(len(source))) if len(source) else []
    shape = tuple(builder.info.features["image"].shape)
    images = np.stack([e["image"] for e in examples]) if examples else np.zeros((0, *shape))
    labels = np.array([e["label"] for e in examples], np.int32)
    return images.astype(np.uint8, copy=False), labels


def _num_examples(builder, split: str) -> int:
    """Examples in `split` as tfds serves it: its cardinality (tfds asserts it), else counted."""
    with quiet():
        ds = builder.as_dataset(split=split, read_config=tfds.ReadConfig(try_autocache=False),
                                decoders={"image": tfds.decode.SkipDecoding()})
    return count(ds)
