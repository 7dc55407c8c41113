"""Datasets for flaxcnn: any tfds image-classification dataset, plus two offline routes.

Every route goes through TensorFlow Datasets (tfds), so the code that reads the data is the same:

* ``name`` = any tfds dataset with an ``image`` (uint8) and a ``label`` (ClassLabel) feature
  (``fashion_mnist``, ``mnist``, ``cifar10``, ...). It is downloaded and prepared into ``data_dir``
  (tfds' default ``~/tensorflow_datasets`` or ``$TFDS_DATA_DIR``) the first time. Without a network
  that fails within seconds with a :class:`DataError` naming the two offline routes below.
* ``name='fashion_mnist_sample'``: the real first 1,003 train + 1,003 test images of Fashion-MNIST
  bundled in ``flaxcnn/sample_data/`` (official IDX gz files), served by our tfds builder
  :class:`FashionMnistSample` (registered in tfds as ``fashion_mnist_sample``). Works offline.
* ``idx_dir=DIR`` with ``name`` ``fashion_mnist`` or ``mnist``: the four official IDX gz files in
  DIR (any number of examples) are prepared by our builder :class:`IdxImages` into
  ``<data_dir>/flaxcnn_idx/<digest of the files' contents>/``, so it never shadows the real
  dataset in ``data_dir`` and changed files are never served from a stale copy.

Train split is ``'train'``; the evaluation split is ``'test'`` (or ``'validation'`` for datasets
without a test split, e.g. imagenet2012).

Under ``tfds.testing.mock_data`` (random data, ``download_and_prepare`` a no-op, split metadata
unknown) everything works the same; example counts are taken from the ``tf.data`` cardinality of
what tfds actually serves, never from the split metadata alone, so ``DatasetInfo.num_train`` /
``num_test`` equal the lengths of the arrays that :func:`load_arrays` returns (the mock's
``num_examples``). Note that builders are not "prepared" under mock, so a caller must make
:func:`network_available` return True there (or the offline error is raised).
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import io
import logging
import math
import os
import re
import socket
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from typing import Iterator

import numpy as np

# TensorFlow is imported lazily by tfds; keep its C++ start-up chatter (the oneDNN banner ignores
# TF_CPP_MIN_LOG_LEVEL) out of the way unless the user asked for it. TF only decodes and resizes
# uint8 images here, which oneDNN does not change.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import tensorflow_datasets as tfds  # noqa: E402
from tensorflow_datasets.core import constants as _tfds_constants  # noqa: E402
from tensorflow_datasets.core import registered as _tfds_registered  # noqa: E402
from tensorflow_datasets.core.utils import gcs_utils as _tfds_gcs  # noqa: E402

from flaxcnn import idx as idx_lib  # noqa: E402
from flaxcnn.errors import UserError  # noqa: E402

# Never let tfds look datasets up on gs://tfds-data (its default in 4.9.10 already; some versions
# flipped it, and offline the GCS client retries for minutes).
_tfds_gcs._is_gcs_disabled = True
tfds.disable_progress_bar()

SAMPLE_NAME = "fashion_mnist_sample"
SAMPLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample_data")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
MNIST_CLASSES = tuple(str(i) for i in range(10))
# Datasets that --config.idx_dir can stand in for, with their class names.
IDX_DATASETS = {"fashion_mnist": FASHION_MNIST_CLASSES, "mnist": MNIST_CLASSES}
IDX_SUBDIR = "flaxcnn_idx"

DOWNLOAD_HOST = ("storage.googleapis.com", 443)
OFFLINE_ROUTES = (
    f"to work offline use --config.dataset={SAMPLE_NAME} (the bundled Fashion-MNIST sample), or put "
    f"the four official IDX gz files ({', '.join(idx_lib.ALL_FILES)}) in a folder DIR and pass "
    "--config.idx_dir=DIR (with --config.dataset=fashion_mnist or mnist)"
)


class DataError(UserError):
    """A dataset problem the user must fix; the message is one line saying what to do."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple | None  # (H, W, C) when static, None when images vary in size
    channels: int
    num_train: int  # examples in the whole train split (as served; see module docstring)
    num_test: int  # examples in the whole evaluation split


# --------------------------------------------------------------------------------------------
# Our tfds builders: one IDX builder class serves the bundled sample and --config.idx_dir.


@dataclasses.dataclass(eq=False)
class IdxConfig(tfds.core.BuilderConfig):
    """Where the four IDX files are, the class names and the image size (rows, cols)."""

    idx_dir: str = ""
    class_names: tuple = ()
    image_size: tuple = (28, 28)


class _IdxImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Images + labels from the four official (Fashion-)MNIST IDX files, in the files' order."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _idx_config(self) -> IdxConfig:
        return self.builder_config

    def _info(self) -> tfds.core.DatasetInfo:
        config = self._idx_config()
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"IDX files from {config.idx_dir}",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(*config.image_size, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=list(config.class_names)),
            }),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            disable_shuffling=True,  # keep the files' order: example i is image i of the file
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        config = self._idx_config()
        try:
            splits = idx_lib.read_all(config.idx_dir, len(config.class_names))
        except idx_lib.IdxError as e:
            raise DataError(str(e)) from e
        return {split: self._generate_examples(data) for split, data in splits.items()}

    def _generate_examples(self, data: idx_lib.Split):
        for i, (image, label) in enumerate(zip(data.images, data.labels)):
            yield i, {"image": image[:, :, None], "label": int(label)}


_SAMPLE_CONFIG = IdxConfig(
    name="sample", idx_dir=SAMPLE_DIR, class_names=FASHION_MNIST_CLASSES, image_size=(28, 28)
)


class FashionMnistSample(
    _IdxImageBuilder,
    # Registered in tfds as `fashion_mnist_sample` (unless this module is somehow imported twice).
    skip_registration=SAMPLE_NAME in getattr(_tfds_registered, "_DATASET_REGISTRY", {}),
):
    """The real first 1,003 train and 1,003 test images of Fashion-MNIST, bundled with flaxcnn.

    Read from ``flaxcnn/sample_data/*.gz``. Bump VERSION if those files ever change.
    """

    name = SAMPLE_NAME

    def _idx_config(self) -> IdxConfig:
        return _SAMPLE_CONFIG


class IdxImages(_IdxImageBuilder, skip_registration=True):
    """``--config.idx_dir``: built with ``config=IdxConfig(name='fashion_mnist' or 'mnist', ...)``."""

    name = "idx_images"


# --------------------------------------------------------------------------------------------
# Helpers.


@contextlib.contextmanager
def _quiet():
    """Silences tfds/TF Python warnings (e.g. "Variant folder ... has no dataset_info.json")."""
    loggers = [logging.getLogger("absl"), logging.getLogger("tensorflow")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


_tf_configured = False


def _tf():
    """TensorFlow, configured to leave accelerators to JAX."""
    global _tf_configured
    import tensorflow as tf

    if not _tf_configured:
        _tf_configured = True
        try:  # a full (non -cpu) TF would otherwise grab GPU memory that JAX needs
            tf.config.set_visible_devices([], "GPU")
        except (RuntimeError, ValueError):
            pass
    return tf


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _default_data_dir() -> str:
    return os.path.expanduser(_tfds_constants.DATA_DIR)


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
        raise DataError(f"dataset {name!r} has images of shape {shape}, flaxcnn needs (H, W, C) with C known")
    if np.dtype(image.np_dtype) != np.uint8:
        raise DataError(f"dataset {name!r} has {np.dtype(image.np_dtype)} images, flaxcnn needs uint8 images")


def _prepare(builder, name: str, **kwargs) -> None:
    try:
        _tf()  # before tfds runs its first TF op
        with _quiet():
            builder.download_and_prepare(**kwargs)
    except DataError:
        raise
    except Exception as e:  # pylint: disable=broad-except  # one clear line for train.py
        raise DataError(
            f"could not download and prepare dataset {name!r} into {builder.data_dir_root}: "
            f"{_first_line(e)}"
        ) from e


def _parse_name(name: str):
    """tfds' DatasetName of 'ns:name/config:version' (name, namespace); DataError if malformed."""
    try:
        return tfds.core.naming.parse_builder_name_kwargs(name)[0]
    except Exception as e:  # pylint: disable=broad-except
        raise DataError(f"cannot parse dataset name {name!r}: {_first_line(e)}") from e


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
    root = os.path.join(data_dir or _default_data_dir(), IDX_SUBDIR, idx_lib.digest(splits))
    config = IdxConfig(
        name=base, idx_dir=idx_dir, class_names=class_names,
        image_size=tuple(int(d) for d in splits["train"].images.shape[1:]),
    )
    return IdxImages(data_dir=root, config=config)


def _builder(name, *, data_dir=None, idx_dir=None):
    """The tfds builder for `name`, prepared (downloading only when the network is up)."""
    with _quiet():  # e.g. "Variant folder ... has no dataset_info.json" before preparing
        return _builder_quiet(name, data_dir=data_dir, idx_dir=idx_dir)


def _builder_quiet(name, *, data_dir=None, idx_dir=None):
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"no dataset given ({name!r}); try --config.dataset=fashion_mnist or {SAMPLE_NAME}")
    name = name.strip()
    data_dir = os.path.expanduser(data_dir) if data_dir else None
    if idx_dir:
        builder = _idx_builder(name, idx_dir, data_dir)
    elif name == SAMPLE_NAME:
        builder = FashionMnistSample(data_dir=data_dir)
    else:
        namespace = _parse_name(name).namespace
        if namespace:  # community/huggingface lookups go to the network, even just to resolve
            raise DataError(
                f"dataset {name!r} is from the tfds namespace {namespace!r}, which flaxcnn does not "
                f"support; use a dataset built into tfds (e.g. fashion_mnist, cifar10) or {SAMPLE_NAME}"
            )
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except _tfds_registered.DatasetNotFoundError:
            raise _unknown_dataset(name) from None
        except Exception as e:  # pylint: disable=broad-except  # e.g. a bad config/version
            raise DataError(f"cannot open tfds dataset {name!r}: {_first_line(e)}") from e
    _check_image_classification(builder, name)
    if builder.is_prepared():
        return builder
    if isinstance(builder, _IdxImageBuilder):  # local files: no network, no downloads/ folder
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


def _resolve_split(builder, name: str, split: str) -> str:
    """`split`, with 'test' standing for 'validation' in datasets that have no test split."""
    known = set(builder.info.splits.keys())
    if not known or not re.fullmatch(r"\w+", split):  # unknown under mock, or a tfds split expression
        return split
    if split == "test" and "test" not in known and "validation" in known:
        return "validation"
    if split not in known:
        raise DataError(f"dataset {name!r} has no {split!r} split (it has {', '.join(sorted(known))})")
    return split


def _count(ds) -> int:
    """Examples in a tf.data dataset: its cardinality (tfds asserts it), else by counting."""
    n = int(ds.cardinality())
    if n < 0:
        n = int(ds.reduce(np.int64(0), lambda count, _: count + 1))
    return n


def _num_examples(builder, split: str) -> int:
    with _quiet():
        ds = builder.as_dataset(split=split, read_config=tfds.ReadConfig(try_autocache=False),
                                decoders={"image": tfds.decode.SkipDecoding()})
    return _count(ds)


def _info_from_builder(builder, name: str) -> DatasetInfo:
    _tf()
    features = builder.info.features
    shape = tuple(features["image"].shape)
    label = features["label"]
    return DatasetInfo(
        name=name,
        num_classes=int(label.num_classes),
        class_names=tuple(label.names),
        image_shape=shape if all(d is not None for d in shape) else None,
        channels=int(shape[-1]),
        num_train=_num_examples(builder, _resolve_split(builder, name, "train")),
        num_test=_num_examples(builder, _resolve_split(builder, name, "test")),
    )


def _check_process(process_index: int, process_count: int) -> None:
    if not (process_count >= 1 and 0 <= process_index < process_count):
        raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, {process_count}")


# --------------------------------------------------------------------------------------------
# Public API.


def is_prepared(name, *, data_dir=None) -> bool:
    """Whether `name` can be loaded from data_dir without downloading (the sample always can)."""
    if name == SAMPLE_NAME:
        return True
    try:
        with _quiet():
            return tfds.builder(name, data_dir=data_dir).is_prepared()
    except Exception:  # pylint: disable=broad-except  # unknown name, bad version: not here
        return False


def info(name, *, data_dir=None, idx_dir=None) -> DatasetInfo:
    """Classes, image shape and split sizes of `name`; prepares the dataset first if needed.

    ``num_train`` / ``num_test`` count the whole split (all processes) as tfds serves it: the
    split metadata for prepared data, the mock's ``num_examples`` under ``tfds.testing.mock_data``.
    """
    builder = _builder(name, data_dir=data_dir, idx_dir=idx_dir)
    return _info_from_builder(builder, name.strip())


def load_arrays(name, split, *, data_dir=None, idx_dir=None, process_index=0, process_count=1):
    """All of `split` (this process's shard of it) as uint8 (N, H, W, C) images and int32 (N,) labels.

    For datasets that fit in memory. With ``process_count > 1`` the shards are
    ``tfds.even_splits(split, process_count)`` (sizes differ by at most one); together they
    partition the split. ``split`` 'test' means 'validation' for datasets without a test split.
    """
    _check_process(process_index, process_count)
    builder = _builder(name, data_dir=data_dir, idx_dir=idx_dir)
    name = name.strip()
    shape = tuple(builder.info.features["image"].shape)
    if None in shape:
        raise DataError(f"dataset {name!r} has images of varying size {shape}; it must be streamed, not loaded into memory")
    tf = _tf()
    subsplit = tfds.split_for_jax_process(
        _resolve_split(builder, name, split), process_index=process_index, process_count=process_count
    )
    with _quiet():
        ds = builder.as_dataset(split=subsplit, read_config=tfds.ReadConfig(try_autocache=False))
    ds = ds.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)))
    n = int(ds.cardinality())
    if n == 0:
        return np.zeros((0, *shape), np.uint8), np.zeros((0,), np.int32)
    # One batch of the whole shard (what tfds' batch_size=-1 does, but sized from the actual
    # cardinality: under mock_data batch_size=-1 asks for a batch of sys.maxsize and aborts).
    chunks = list(tfds.as_numpy(ds.batch(n if n > 0 else 65536)))
    images = np.concatenate([c[0] for c in chunks]) if len(chunks) > 1 else chunks[0][0]
    labels = np.concatenate([c[1] for c in chunks]) if len(chunks) > 1 else chunks[0][1]
    return images, labels


def nbytes_in_memory(info: DatasetInfo) -> int | None:
    """Host bytes of train + test as load_arrays returns them (uint8 images + int32 labels).

    None when the image shape varies (such datasets must be streamed).
    """
    if info.image_shape is None:
        return None
    per_example = int(np.prod(info.image_shape)) + np.dtype(np.int32).itemsize
    return (info.num_train + info.num_test) * per_example


def train_batches_per_epoch(info: DatasetInfo, batch_size: int, process_count: int = 1) -> int:
    """How many batches :func:`stream_train` yields per epoch in each process."""
    return (info.num_train // process_count) // batch_size


def _order_seed(seed: int, epoch: int) -> int:
    digest = hashlib.sha256(f"flaxcnn:{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:7], "big")  # fits tf.int64


def _decode_and_resize(builder, image_size: int):
    """A tf function: encoded image -> uint8 (image_size, image_size, C), resizing only if needed."""
    tf = _tf()
    feature = builder.info.features["image"]
    height, width, channels = feature.shape
    resize = (height, width) != (image_size, image_size)

    def fn(encoded, label):
        image = feature.decode_example(encoded)
        if resize:
            # Bilinear with antialiasing, like jax.image.resize(method='bilinear') which the
            # trainer uses for in-memory data; then rounded back to uint8.
            image = tf.image.resize(image, (image_size, image_size), method="bilinear", antialias=True)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
        image = tf.ensure_shape(image, (image_size, image_size, channels))
        return image, tf.cast(label, tf.int32)

    return fn


def stream_train(name, *, batch_size, image_size, seed, epoch, skip_batches=0, data_dir=None,
                 idx_dir=None, process_index=0, process_count=1,
                 shuffle_buffer=10_000) -> Iterator[dict]:
    """One epoch of this process's shard of 'train' as numpy batches, for datasets too big for memory.

    Yields ``{'image': uint8 (batch_size, image_size, image_size, C), 'label': int32 (batch_size,)}``
    (the last partial batch is dropped). The order depends only on ``(seed, epoch)``: the files
    and a buffer of ``shuffle_buffer`` still-encoded examples are shuffled with a seed made from
    both. ``skip_batches=k`` yields the same batches minus the first k (resuming mid-epoch).
    Shards are ``tfds.split_for_jax_process(..., drop_remainder=True)``: equal sizes, so every
    process yields the same number of batches (:func:`train_batches_per_epoch`).
    """
    _check_process(process_index, process_count)
    builder = _builder(name, data_dir=data_dir, idx_dir=idx_dir)
    name = name.strip()
    tf = _tf()
    order_seed = _order_seed(seed, epoch)
    subsplit = tfds.split_for_jax_process(
        _resolve_split(builder, name, "train"), process_index=process_index,
        process_count=process_count, drop_remainder=True,
    )
    read_config = tfds.ReadConfig(
        shuffle_seed=order_seed, shuffle_reshuffle_each_iteration=False, try_autocache=False,
        enable_ordering_guard=False,  # our IDX builders store examples in file order
    )
    with _quiet():
        ds = builder.as_dataset(split=subsplit, shuffle_files=True, read_config=read_config,
                                decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.map(lambda ex: (ex["image"], ex["label"]))
    ds = ds.shuffle(shuffle_buffer, seed=order_seed, reshuffle_each_iteration=False)
    if skip_batches:
        ds = ds.skip(int(skip_batches) * batch_size)
    ds = ds.map(_decode_and_resize(builder, image_size), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    def batches():
        for image, label in tfds.as_numpy(ds):
            yield {"image": image, "label": label}

    return batches()


def stream_eval(name, *, batch_size, image_size, data_dir=None, idx_dir=None, process_index=0,
                process_count=1) -> Iterator[dict]:
    """Every test example of this process's shard exactly once, in batches of `batch_size`.

    Yields ``{'image', 'label', 'mask'}``; the last batch is zero-padded to ``batch_size`` and
    ``mask`` (bool) marks the real examples. Every process yields the same number of batches
    (processes with a smaller shard add fully-masked batches), so multi-host eval steps line up.
    """
    _check_process(process_index, process_count)
    builder = _builder(name, data_dir=data_dir, idx_dir=idx_dir)
    name = name.strip()
    tf = _tf()
    split = _resolve_split(builder, name, "test")
    subsplit = tfds.split_for_jax_process(split, process_index=process_index, process_count=process_count)
    with _quiet():
        ds = builder.as_dataset(split=subsplit, read_config=tfds.ReadConfig(try_autocache=False),
                                decoders={"image": tfds.decode.SkipDecoding()})
    shard_size = _count(ds)
    total = _num_examples(builder, split) if process_count > 1 else shard_size
    num_batches = max(math.ceil(shard_size / batch_size),
                      math.ceil(math.ceil(total / process_count) / batch_size))
    channels = builder.info.features["image"].shape[-1]
    ds = ds.map(lambda ex: (ex["image"], ex["label"]))
    ds = ds.map(_decode_and_resize(builder, image_size), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def batches():
        produced = 0
        for image, label in tfds.as_numpy(ds):
            n = len(label)
            mask = np.zeros((batch_size,), bool)
            mask[:n] = True
            if n < batch_size:
                pad = batch_size - n
                image = np.concatenate([image, np.zeros((pad, *image.shape[1:]), image.dtype)])
                label = np.concatenate([label, np.zeros((pad,), label.dtype)])
            produced += 1
            yield {"image": image, "label": label, "mask": mask}
        for _ in range(num_batches - produced):
            yield {
                "image": np.zeros((batch_size, image_size, image_size, channels), np.uint8),
                "label": np.zeros((batch_size,), np.int32),
                "mask": np.zeros((batch_size,), bool),
            }

    return batches()
