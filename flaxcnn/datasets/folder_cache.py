"""An image folder decoded once into an on-disk cache of uint8 squares, in bounded memory.

The images of ``--config.dataset=folder:PATH`` are stored as :mod:`flaxcnn.datasets.folder` fits
them (squares of the side :func:`flaxcnn.datasets.folder.stored_side` picks, 1 or 3
channels), each split as one ``.npy`` array file that is memory-mapped, never loaded whole. Why ``.npy`` and not ArrayRecord: every stored image has the
same shape, so image ``i`` is bytes ``[i * row, (i + 1) * row)`` of the file; reading a batch is a
slice of the page cache with no per-record framing, compression or decoding, the decode threads
write their rows in place in any order (which is what lets a killed decode resume), and numpy
alone reads it (the host stream, :mod:`flaxcnn.pipelines`, hands the array to grain as a
random-access source). ArrayRecord would add a serialization per image and buys nothing for
fixed-size rows; tfds datasets already stored as ArrayRecord are read in place instead
(:mod:`flaxcnn.datasets.tfds_route`).

The cache is the folder ``<data_dir>/flaxcnn_folder/<name>-<key>/``, where the key is a digest of
the folder's file list, the files' sizes and modification times, the store size and ``skip_bad``
(any change to the folder makes a new cache). In it:

* ``train_images.npy`` / ``<split>_images.npy``: uint8 (N, S, S, C); ``*_labels.npy``: int32 (N,);
* ``decoded.npy``: one byte per file (0 to do, 1 decoded, 2 unreadable), updated after each batch
  of rows is written, so a decode that is killed resumes where it stopped;
* ``complete.json``: written last, atomically, after the arrays are synced to disk. Without it the
  cache is not complete and is never read as data; with it, shapes and labels are checked before
  use, and a cache that does not check out is decoded afresh.

Before any decoding, every file's header is read (its mode gives the channels; a file that is not
an image fails here), the disk the arrays need is computed, and too little free disk is one line.
Decoding runs in threads (Pillow releases the GIL) a bounded number of images at a time, with a
tqdm bar from ``folder.PROGRESS_FROM`` files on: memory stays at a few batches of images whatever
the folder's size (the written rows are file-backed page cache, not the process's own memory).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import struct

import numpy as np
import tqdm
from PIL import Image

from flaxcnn.datasets import folder
from flaxcnn.datasets.catalog import DataError, default_data_dir
from flaxcnn.errors import first_line, warn

CACHE_SUBDIR = "flaxcnn_folder"
CACHE_VERSION = 2  # 1 was one .npz file held in memory
COMPLETE = "complete.json"
TO_DO, DECODED, UNREADABLE = 0, 1, 2
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclasses.dataclass(frozen=True)
class FolderData:
    """An image folder's cache: memory-mapped uint8 (N, S, S, C) images and int32 labels."""
    root: str
    cache_dir: str
    class_names: tuple[str, ...]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    test_split: str  # the folder the evaluation images came from: "test" or "valid"
    skipped: tuple[str, ...] = ()  # unreadable files left out (with folder_skip_bad), relative

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.train_images.shape[1:])

    @property
    def channels(self) -> int:
        return self.image_shape[-1]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.train_images, self.train_labels, self.test_images,
                                      self.test_labels))


def load_folder(path: str, *, data_dir: str | None = None, store_size: int = 256,
                skip_bad: bool = False, progress: bool = True) -> FolderData:
    """The image folder at `path`, memory-mapped from its cache in `data_dir`, decoded there
    first (or the rest of it, after a decode that was stopped) when the cache is not complete.
    DataError for a folder that cannot be trained on, or too little disk for its cache."""
    if not isinstance(store_size, int) or store_size < 1:
        raise DataError(f"--config.folder_store_size must be a positive number of pixels, got "
                        f"{store_size!r}")
    root = os.path.abspath(os.path.expanduser(path))
    test_split, listing = folder.list_folder(root)
    cache_dir = _cache_dir(root, data_dir, _cache_key(root, listing, store_size, skip_bad))
    data = _open_complete(cache_dir, root)
    if data is None:
        data = _Decode(root, cache_dir, test_split, listing, store_size, skip_bad).run(progress)
    if data.skipped:
        warn(f"skipped {len(data.skipped)} unreadable file(s) in {root} (folder_skip_bad=true), "
             f"e.g. {data.skipped[0]}")
    return data


def _cache_key(root: str, listing, store_size: int, skip_bad: bool) -> str:
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, store_size, bool(skip_bad)]).encode())
    for split in sorted(listing):
        for name, files in listing[split].items():
            for rel in files:
                stat = os.stat(os.path.join(root, rel))
                digest.update(json.dumps([split, name, rel, stat.st_size,
                                          stat.st_mtime_ns]).encode())
    return digest.hexdigest()[:24]


def _cache_dir(root: str, data_dir: str | None, key: str) -> str:
    base = os.path.basename(root.rstrip(os.sep)) or "folder"
    return os.path.join(os.path.expanduser(data_dir) if data_dir else default_data_dir(),
                        CACHE_SUBDIR, f"{base}-{key}")


def _array_path(cache_dir: str, split: str, what: str) -> str:
    return os.path.join(cache_dir, f"{split}_{what}.npy")


def _open_complete(cache_dir: str, root: str) -> FolderData | None:
    """The complete cache, memory-mapped read-only; None when there is none or it does not check
    out (then it is removed, with a warning)."""
    marker = os.path.join(cache_dir, COMPLETE)
    if not os.path.exists(marker):
        return None
    try:
        with open(marker) as f:
            meta = json.load(f)
        splits = ("train", meta["test_split"])
        arrays = {f"{name}_{what}": np.load(_array_path(cache_dir, split, what), mmap_mode="r")
                  for name, split in zip(("train", "test"), splits)
                  for what in ("images", "labels")}
        data = FolderData(root=root, cache_dir=cache_dir, class_names=tuple(meta["class_names"]),
                          test_split=meta["test_split"], skipped=tuple(meta["skipped"]), **arrays)
        _check(data, meta)
        return data
    except (OSError, ValueError, KeyError, TypeError, EOFError) as e:
        warn(f"the folder cache {cache_dir} is damaged ({first_line(e)}); decoding the folder "
             "again")
        shutil.rmtree(cache_dir, ignore_errors=True)
        return None


def _check(data: FolderData, meta: dict) -> None:
    shape = tuple(meta["image_shape"])
    for split, images, labels in (("train", data.train_images, data.train_labels),
                                  ("test", data.test_images, data.test_labels)):
        if (images.dtype != np.uint8 or images.shape != (meta["examples"][split], *shape)
                or labels.dtype != np.int32 or labels.shape != (len(images),)):
            raise ValueError(f"its {split} arrays are not the shape it recorded")
    for labels in (data.train_labels, data.test_labels):  # small: read whole
        if labels.min(initial=0) < 0 or labels.max(initial=0) >= data.num_classes:
            raise ValueError("its labels are out of range")


def disk_needed(num_images: int, store_size: int, channels: int) -> int:
    """Bytes of a cache of `num_images` images (images, labels, the per-file progress)."""
    return num_images * (store_size * store_size * channels + np.dtype(np.int32).itemsize + 1)


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


class _Decode:
    """One decode of a folder into its cache directory (resuming a stopped one)."""

    def __init__(self, root, cache_dir, test_split, listing, store_size, skip_bad):
        self.root, self.cache_dir, self.test_split = root, cache_dir, test_split
        self.skip_bad = skip_bad
        self.class_names = tuple(listing["train"])
        self.splits = ("train", test_split)
        self.files = [(split, label, rel) for split in self.splits
                      for label, name in enumerate(self.class_names)
                      for rel in listing[split][name]]
        self.counts = collections.Counter(split for split, _, _ in self.files)
        # the cache is keyed by the asked store_size; the same files give the same side
        self.store_size = folder.stored_side(
            [os.path.join(root, rel) for _, _, rel in self.files], store_size)

    def run(self, progress: bool) -> FolderData:
        channels, unreadable = self._read_headers()
        self._refuse_unreadable(unreadable)
        state = self._open(channels)
        for i in unreadable:
            state["decoded"][i] = UNREADABLE
        to_do = np.flatnonzero(state["decoded"] == TO_DO)
        resuming = len(to_do) + len(unreadable) < len(self.files)
        try:
            self._check_disk(len(to_do), channels, resuming)
        except DataError:
            if not resuming:
                shutil.rmtree(self.cache_dir, ignore_errors=True)
            raise
        self._decode(state, to_do, progress)
        bad = np.flatnonzero(state["decoded"] == UNREADABLE)
        self._refuse_unreadable(bad, decoded=state["decoded"])
        return self._finish(state, bad)

    # ---------------------------------------------------------------------------- the plan

    def _read_headers(self) -> tuple[int, list[int]]:
        """(channels, indices of the files that are not images): Pillow reads headers only."""

        def mode(rel):
            try:
                with Image.open(os.path.join(self.root, rel)) as image:
                    return image.mode
            except DECODE_ERRORS:
                return None

        with concurrent.futures.ThreadPoolExecutor() as pool:
            modes = list(pool.map(mode, (rel for _, _, rel in self.files)))
        unreadable = [i for i, m in enumerate(modes) if m is None]
        grey = all(m in folder.GREY_MODES for m in modes if m is not None)
        return (1 if grey else 3), unreadable

    def _refuse_unreadable(self, bad, decoded=None) -> None:
        if len(bad) == 0 or self.skip_bad:
            return
        rel = self.files[bad[0]][2]
        error = self._error_of(rel)
        more = f" ({len(bad) - 1} more unreadable files)" if len(bad) > 1 else ""
        if decoded is not None:  # a decode that found them: nothing of it is worth keeping
            shutil.rmtree(self.cache_dir, ignore_errors=True)
        raise DataError(
            f"{os.path.join(self.root, rel)} is not an image Pillow can read, or is damaged "
            f"({error}){more}: remove it, or set --config.folder_skip_bad=true to skip such files")

    def _error_of(self, rel: str) -> str:
        try:
            folder.decode_file(os.path.join(self.root, rel), self.store_size)
        except DECODE_ERRORS as e:
            return first_line(e)
        return "it could not be read"

    def _check_disk(self, to_decode: int, channels: int, resuming: bool) -> None:
        """One line when the disk has less room than the rows still to write."""
        needed = disk_needed(to_decode, self.store_size, channels)
        free = shutil.disk_usage(self.cache_dir).free
        if needed > free:
            what = "the rest of " if resuming else ""
            raise DataError(
                f"decoding {what}{self.root} ({to_decode} images of {self.store_size}x"
                f"{self.store_size}x{channels}) needs {_gib(needed)} of disk in {self.cache_dir}, "
                f"which has {_gib(free)} free: free some space, or point --config.data_dir at a "
                "disk with room")

    # ----------------------------------------------------------------------- the arrays

    def _open(self, channels: int) -> dict:
        """The cache's arrays, memory-mapped for writing: those of a stopped decode of the same
        files when they fit, else new ones (sparse until written)."""
        shape = (self.store_size, self.store_size, channels)
        try:
            return self._open_arrays("r+", shape)
        except (OSError, ValueError):  # none yet, or not these files'
            shutil.rmtree(self.cache_dir, ignore_errors=True)
        os.makedirs(self.cache_dir)
        for split in self.splits:
            labels = np.array([label for s, label, _ in self.files if s == split], np.int32)
            np.save(_array_path(self.cache_dir, split, "labels"), labels)
        return self._open_arrays("w+", shape)

    def _open_arrays(self, mode: str, shape) -> dict:
        state = {"decoded": np.lib.format.open_memmap(
            os.path.join(self.cache_dir, "decoded.npy"), mode, np.uint8, (len(self.files),))}
        for split in self.splits:
            state[split] = np.lib.format.open_memmap(
                _array_path(self.cache_dir, split, "images"), mode, np.uint8,
                (self.counts[split], *shape))
            if state[split].shape != (self.counts[split], *shape) or state["decoded"].shape != (
                    len(self.files),):
                raise ValueError("another folder's arrays")
        return state

    def _decode(self, state: dict, to_do: np.ndarray, progress: bool) -> None:
        first_row = {self.splits[0]: 0, self.splits[1]: self.counts[self.splits[0]]}
        decoded, workers = state["decoded"], min(32, (os.cpu_count() or 1) + 4)
        batch = 8 * workers

        def decode(i):
            try:
                return folder.decode_file(os.path.join(self.root, self.files[i][2]),
                                          self.store_size)
            except DECODE_ERRORS:
                return None

        with concurrent.futures.ThreadPoolExecutor(workers) as pool, tqdm.tqdm(
                total=len(self.files), initial=len(self.files) - len(to_do),
                desc=f"decoding {self.root}", unit="image", leave=False,
                disable=not progress or len(self.files) < folder.PROGRESS_FROM) as bar:
            for start in range(0, len(to_do), batch):
                chunk = to_do[start:start + batch]
                done = []
                for i, image in zip(chunk, pool.map(decode, chunk)):
                    split = self.files[i][0]
                    if image is not None:
                        state[split][i - first_row[split]] = image  # grey broadcasts to RGB
                    done.append(image is not None)
                for split in self.splits:
                    state[split].flush()  # the rows reach the file before they count as done
                decoded[chunk] = np.where(done, DECODED, UNREADABLE)
                decoded.flush()
                bar.update(len(chunk))

    def _finish(self, state: dict, bad: np.ndarray) -> FolderData:
        """Drops the unreadable files' rows (with skip_bad), syncs the arrays to disk and marks
        the cache complete; then opens it as any complete cache."""
        for split in self.splits:
            state[split].flush()
        first_row = {self.splits[0]: 0, self.splits[1]: self.counts[self.splits[0]]}
        skipped, bad = [self.files[i][2] for i in bad], set(bad.tolist())
        kept_counts = collections.Counter(
            (s, label) for i, (s, label, _) in enumerate(self.files) if i not in bad)
        for split in self.splits:
            for label, name in enumerate(self.class_names):
                if not kept_counts[split, label]:
                    raise DataError(f"the class folder {self.root}/{split}/{name} holds no "
                                    "readable image: add images to it, or remove it from both "
                                    "splits")
        examples = {}
        for split in self.splits:
            rows = np.array([i - first_row[split] for i in range(len(self.files))
                             if self.files[i][0] == split and i not in bad], np.int64)
            images = state.pop(split)
            if len(rows) < len(images):
                _keep_rows(images, rows)
                labels = np.load(_array_path(self.cache_dir, split, "labels"))[rows]
                np.save(_array_path(self.cache_dir, split, "labels"), labels)
            del images
            path = _array_path(self.cache_dir, split, "images")
            if len(rows) < self.counts[split]:
                _truncate_rows(path, len(rows))
            _fsync(path)
            examples["train" if split == "train" else "test"] = len(rows)
        _fsync(_array_path(self.cache_dir, self.splits[1], "labels"))
        meta = {"class_names": list(self.class_names), "test_split": self.test_split,
                "skipped": skipped, "examples": examples,
                "image_shape": [self.store_size, self.store_size,
                                int(np.load(_array_path(self.cache_dir, "train", "images"),
                                            mmap_mode="r").shape[-1])]}
        temporary = os.path.join(self.cache_dir, f"{COMPLETE}.tmp")
        with open(temporary, "w") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, os.path.join(self.cache_dir, COMPLETE))
        data = _open_complete(self.cache_dir, self.root)
        if data is None:
            raise DataError(f"the folder cache {self.cache_dir} could not be read back after "
                            "decoding: check the disk, and run again")
        return data


def _keep_rows(images: np.ndarray, rows: np.ndarray) -> None:
    """Moves rows `rows` (ascending) of a memory-mapped array to its front, in place."""
    for j, i in enumerate(rows):
        if i != j:
            images[j] = images[i]
    images.flush()


def _truncate_rows(path: str, rows: int) -> None:
    """Shortens a .npy file of uint8 rows to its first `rows`, rewriting its header in place
    (the header keeps its length: numpy pads it for this)."""
    with open(path, "r+b") as f:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
        shape = (rows, *shape[1:])
        header = repr({"descr": dtype.descr[0][1], "fortran_order": fortran,
                       "shape": shape}).encode("latin1")
        length_size = 2 if version == (1, 0) else 4
        room = offset - 6 - 2 - length_size
        f.seek(8)
        f.write(struct.pack("<H" if length_size == 2 else "<I", room))
        f.write(header + b" " * (room - len(header) - 1) + b"\n")
        f.truncate(offset + rows * int(np.prod(shape[1:])) * dtype.itemsize)


def _fsync(path: str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
