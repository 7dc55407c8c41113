"""Resolving a dataset name once: the tfds builder, prepared, checked, and its splits' sizes.

Downloads happen only when the network is up: the offline probe answers within seconds, and the
error names the two routes that work without a network (the bundled sample, ``idx_dir``).
"""
from __future__ import annotations

import contextlib
import difflib
import io
import os
import re
import socket
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import constants as tfds_constants
from tensorflow_datasets.core import registered as tfds_registered

from flaxcnn.datasets import idx as idx_lib
from flaxcnn.datasets.builders import (IDX_DATASETS, SAMPLE_NAME, DataError, FashionMnistSample,
                                       IdxConfig, IdxImageBuilder, IdxImages)
from flaxcnn.datasets.dataset import Dataset, DatasetInfo
from flaxcnn.errors import first_line
from flaxcnn.datasets.tf_setup import count, quiet, tensorflow

IDX_SUBDIR = "flaxcnn_idx"
DOWNLOAD_HOST = ("storage.googleapis.com", 443)
OFFLINE_ROUTES = (
    f"to work offline use --config.dataset={SAMPLE_NAME} (the bundled Fashion-MNIST sample), or put "
    f"the four official IDX gz files ({', '.join(idx_lib.ALL_FILES)}) in a folder DIR and pass "
    "--config.idx_dir=DIR (with --config.dataset=fashion_mnist or mnist)"
)


def resolve(name, *, data_dir=None, idx_dir=None, process_index: int = 0,
            process_count: int = 1) -> Dataset:
    """The prepared dataset `name` (this process's shard of it), or a one-line DataError.

    ``idx_dir`` stands in for fashion_mnist or mnist; ``fashion_mnist_sample`` is the bundled
    sample; any other name is a tfds dataset, downloaded into ``data_dir`` if the network is up.
    """
    if not (process_count >= 1 and 0 <= process_index < process_count):
        raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, "
                         f"{process_count}")
    tensorflow()
    with quiet():  # e.g. "Variant folder ... has no dataset_info.json" before preparing
        builder = _prepared_builder(name, data_dir=data_dir, idx_dir=idx_dir)
    name = name.strip()
    _check_prepared_files(builder, name)
    train_split = _resolve_split(builder, name, "train")
    test_split = _resolve_split(builder, name, "test")
    shape = tuple(builder.info.features["image"].shape)
    label = builder.info.features["label"]
    info = DatasetInfo(
        name=name,
        num_classes=int(label.num_classes),
        class_names=tuple(label.names),
        image_shape=shape if all(d is not None for d in shape) else None,
        channels=int(shape[-1]),
        num_train=_num_examples(builder, train_split),
        num_test=_num_examples(builder, test_split),
    )
    return Dataset(info=info, builder=builder, train_split=train_split, test_split=test_split,
                   process_index=process_index, process_count=process_count)


def is_prepared(name, *, data_dir=None) -> bool:
    """Whether `name` can be loaded from data_dir without downloading (the sample always can)."""
    if name == SAMPLE_NAME:
        return True
    try:
        with quiet():
            return tfds.builder(name, data_dir=data_dir).is_prepared()
    except Exception:  # pylint: disable=broad-except  # unknown name, bad version: not here
        return False


def network_available(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the tfds download host (or the HTTPS proxy) opens in `timeout` s.

    DNS resolution and connecting both run in a daemon thread, so a hanging resolver cannot
    block the caller for longer than `timeout`.
    """
    host, port = DOWNLOAD_HOST
    proxy = urllib.request.getproxies().get("https")
    if proxy and not urllib.request.proxy_bypass(host):
        parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parsed.hostname:
            host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    deadline = time.monotonic() + timeout
    ok = threading.Event()

    def probe():
        try:
            addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            return
        for family, kind, proto, _, address in addresses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                with socket.socket(family, kind, proto) as s:
                    s.settimeout(remaining)
                    s.connect(address)
                ok.set()
                return
            except OSError:
                continue

    thread = threading.Thread(target=probe, name="flaxcnn-network-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return ok.is_set()


def _prepared_builder(name, *, data_dir=None, idx_dir=None):
    """The tfds builder for `name`, prepared (downloading only when the network is up)."""
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"no dataset given ({name!r}); try --config.dataset=fashion_mnist or "
                        f"{SAMPLE_NAME}")
    name = name.strip()
    data_dir = os.path.expanduser(data_dir) if data_dir else None
    if idx_dir:
        builder = _idx_builder(name, idx_dir, data_dir)
    elif name == SAMPLE_NAME:
        builder = FashionMnistSample(data_dir=data_dir)
    else:
        builder = _tfds_builder(name, data_dir)
    _check_image_classification(builder, name)
    if builder.is_prepared():
        return builder
    if isinstance(builder, IdxImageBuilder):  # local files: no network, no downloads/ folder
        # (tfds' "Downloading and preparing dataset Unknown size..." would mislead here.)
        with tempfile.TemporaryDirectory(prefix="flaxcnn_idx_") as scratch, \
                contextlib.redirect_stdout(io.StringIO()):
            _prepare(builder, name, download_dir=scratch)
    else:
        if not network_available():
            raise DataError(
                f"dataset {name!r} is not prepared in {builder.data_dir_root} and cannot be "
                f"downloaded (no connection to {DOWNLOAD_HOST[0]}); {OFFLINE_ROUTES}"
            )
        _prepare(builder, name)
    return builder


def _tfds_builder(name: str, data_dir: str | None):
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


def _idx_builder(name: str, idx_dir: str, data_dir: str | None):
    base = str(_parse_name(name))
    if base not in IDX_DATASETS:
        raise DataError(
            f"--config.idx_dir only stands in for {' or '.join(IDX_DATASETS)}, not {name!r}; "
            "drop idx_dir or set --config.dataset=fashion_mnist"
        )
    idx_dir = os.path.abspath(os.path.expanduser(idx_dir))
    class_names = IDX_DATASETS[base]
    try:
        splits = idx_lib.read_all(idx_dir, len(class_names))
    except idx_lib.IdxError as e:
        raise DataError(
            f"{e}; --config.idx_dir must hold the four official files {', '.join(idx_lib.ALL_FILES)}"
        ) from e
    default_data_dir = os.path.expanduser(tfds_constants.DATA_DIR)
    root = os.path.join(data_dir or default_data_dir, IDX_SUBDIR, idx_lib.digest(splits))
    config = IdxConfig(
        name=base, idx_dir=idx_dir, class_names=class_names,
        image_size=tuple(int(d) for d in splits["train"].images.shape[1:]),
    )
    return IdxImages(data_dir=root, config=config)


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


def _prepare(builder, name: str, **kwargs) -> None:
    try:
        builder.download_and_prepare(**kwargs)
    except DataError:
        raise
    except Exception as e:  # pylint: disable=broad-except  # one clear line for train.py
        raise DataError(
            f"could not download and prepare dataset {name!r} into {builder.data_dir_root}: "
            f"{first_line(e, with_type=True)}"
        ) from e


TFRECORD_FRAMING = 16  # bytes around each record of a tfrecord file: length, two checksums


def _check_prepared_files(builder, name: str) -> None:
    """Refuses a prepared folder whose data files are missing or shorter than its
    dataset_info.json says (a copy or a preparation that stopped half-way): tf.data would only
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
