"""Reading the IDX files that MNIST and Fashion-MNIST are published in.

An IDX file is a big-endian header followed by raw data:

    byte 0-1  zero
    byte 2    type code (0x08 = unsigned byte, the only type used here)
    byte 3    number of dimensions
    then one uint32 per dimension, then prod(dims) elements.

So images are magic 0x00000803 (N, rows, cols) and labels 0x00000801 (N,). The official
files are gzip-compressed (``train-images-idx3-ubyte.gz``); plain files are read too.

Only numpy and the standard library are used here, so this module imports fast.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import struct
from typing import NamedTuple

import numpy as np

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

# The four official file names: split -> (images file, labels file).
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
ALL_FILES = tuple(f for pair in FILES.values() for f in pair)


class IdxError(ValueError):
    """A missing or malformed IDX file; the message names the file."""


class Split(NamedTuple):
    images: np.ndarray  # uint8 (N, rows, cols)
    labels: np.ndarray  # uint8 (N,)


def find(directory: str, filename: str) -> str:
    """Path of `filename` in `directory`; the uncompressed name (without .gz) is accepted too."""
    path = os.path.join(directory, filename)
    if os.path.isfile(path):
        return path
    plain = path[: -len(".gz")] if path.endswith(".gz") else path
    if os.path.isfile(plain):
        return plain
    raise IdxError(f"missing IDX file {path}")


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise IdxError(f"cannot read IDX file {path}: {e.strerror or e}") from e
    if raw[:2] == b"\x1f\x8b":  # gzip, whatever the name says
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise IdxError(f"IDX file {path} is a damaged gzip file ({e}); it may be "
                           "truncated: download it again") from e
    return raw


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def read(path: str, magic: int) -> np.ndarray:
    """Reads one IDX file of unsigned bytes, checking its magic number and its size."""
    data = _read_bytes(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxError(f"IDX file {path} is too short ({len(data)} bytes) for its header")
    (got,) = struct.unpack(">I", data[:4])
    if got != magic and path.endswith(".gz") and not _is_gzip(path):
        raise IdxError(f"IDX file {path} is not gzip-compressed (and not a plain IDX file either: "
                       f"it starts with 0x{got:08x}); download it again")
    if got != magic:
        raise IdxError(
            f"IDX file {path} has magic number 0x{got:08x}, expected 0x{magic:08x} "
            f"({'images' if magic == IMAGES_MAGIC else 'labels'}, unsigned bytes, {ndim} dims)"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise IdxError(
            f"IDX file {path} holds {len(data) - header} bytes of data but its header "
            f"{tuple(dims)} needs {expected}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_split(directory: str, split: str) -> Split:
    """Images and labels of `split` ('train' or 'test') from the official files in `directory`."""
    images_name, labels_name = FILES[split]
    images_path = find(directory, images_name)
    labels_path = find(directory, labels_name)
    images = read(images_path, IMAGES_MAGIC)
    labels = read(labels_path, LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise IdxError(
            f"IDX file {images_path} holds {images.shape[0]} images but "
            f"{labels_path} holds {labels.shape[0]} labels"
        )
    if images.shape[0] == 0:
        raise IdxError(f"IDX file {images_path} holds no images")
    if min(images.shape[1:]) == 0:
        raise IdxError(f"IDX file {images_path} has empty images of size {images.shape[1:]}")
    return Split(images, labels)


def read_all(directory: str, num_classes: int = 10) -> dict[str, Split]:
    """Both splits, checked for consistency: same image size, labels in [0, num_classes)."""
    if not os.path.isdir(directory):
        raise IdxError(f"IDX folder {directory} does not exist")
    splits = {split: read_split(directory, split) for split in FILES}
    train_size = splits["train"].images.shape[1:]
    test_size = splits["test"].images.shape[1:]
    if train_size != test_size:
        raise IdxError(
            f"IDX file {find(directory, FILES['test'][0])} has images of size {test_size}, "
            f"the train images are {train_size}"
        )
    for split, (_, labels) in splits.items():
        if labels.size and int(labels.max()) >= num_classes:
            raise IdxError(
                f"IDX file {find(directory, FILES[split][1])} has label {int(labels.max())}, "
                f"expected 0..{num_classes - 1}"
            )
    return splits


def digest(splits: dict[str, Split]) -> str:
    """A short content digest of the (decompressed) data of both splits."""
    h = hashlib.sha256()
    for split in sorted(splits):
        for array in splits[split]:
            h.update(repr((split, array.shape)).encode())
            h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()[:16]

