"""Image-folder datasets (``--config.dataset=folder:PATH``): your own pictures, decoded once.

PATH follows torchvision's ImageFolder convention, which d2l 14.2's hot-dog set uses:
``PATH/train/<class>/*`` and ``PATH/test/<class>/*`` (``valid/`` is the evaluation split where
there is no ``test/``); files may sit in sub-folders of a class folder. Class names are the class
folders' names, sorted; both splits must have the same ones.

What is stored, and why:

* Every image becomes one uint8 array of ``side x side`` pixels: its shorter side is resized to
  ``side`` (Pillow's bilinear filter, the long side truncated to whole pixels, as torchvision's
  ``Resize(int)`` does on a PIL image), then the centre square is cropped (offsets rounded as in
  torchvision's ``CenterCrop``). A square of one size is what lets the whole set sit on the
  devices as one array with static shapes, as every other dataset does.
* ``side`` is the smaller of ``store_size`` (``--config.folder_store_size``, 256 by default) and
  the images' typical shorter side: the median of the shorter sides of up to ``SIDE_SAMPLE``
  files spread evenly over the folder (their headers only). So images are never stored larger
  than they mostly are: a folder of 28-pixel scans stays at 28 (upscaling it would only make
  every step, prediction and export work on more pixels with nothing new in them), while photos
  are kept at 256, the side d2l 14.2 and torchvision's ImageNet recipe resize to before their 224
  crops, so ``flaxcnn.augment`` can cut 14.2's crops from them. The price of the square: the sides
  of a non-square photo beyond the centre square are not kept (d2l's test transform squashes the
  whole photo to 256x256 instead; we keep the aspect ratio).
* Channels: 1 if every image of both splits is grey (Pillow modes 1, L, LA, I, I;16, F), else 3;
  grey images in a colour set get three equal channels, palette images count as colour. Alpha is
  dropped, as torchvision's loader (``convert('RGB')``) drops it. EXIF orientation is applied, so
  phone photos stand upright.
* Decoding runs in threads (Pillow releases the GIL while it decodes and resizes; processes would
  copy every array back and fork a process that may hold accelerators), with a tqdm bar from
  ``PROGRESS_FROM`` files on. Large JPEGs are decoded at a reduced scale that is still at least
  ``store_size`` on both sides (Pillow's ``draft``), which is much faster than decoding them whole.
* The arrays are cached in ``<data_dir>/flaxcnn_folder/`` as one ``.npz`` file, named by a digest
  of the folder's file list, the files' sizes and modification times, the store size and
  ``skip_bad``; any change to the folder makes a new cache. It is written to a temporary name and
  renamed, so a crash leaves no half-written cache; one that does not read back whole (zip CRCs,
  shapes, labels, its own key) is decoded afresh, never trusted.

Every problem with the folder is one :class:`~flaxcnn.datasets.DataError` line saying what to do,
raised before any training. This module needs numpy, Pillow and tqdm only; no TensorFlow.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import zipfile

import numpy as np
import tqdm
from PIL import Image, ImageOps

from flaxcnn.datasets.catalog import DataError, default_data_dir
from flaxcnn.errors import first_line, warn

EVAL_SPLITS = ("test", "valid")  # the first one present is the evaluation split
CACHE_SUBDIR = "flaxcnn_folder"
CACHE_VERSION = 2  # bump when what is stored for the same files changes (2: the typical side)
SIDE_SAMPLE = 256  # files whose header sizes set the stored side
PROGRESS_FROM = 500  # files: smaller folders decode without a progress bar
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
IGNORED_FILES = frozenset({"Thumbs.db", "desktop.ini"})  # and every name starting with "."


@dataclasses.dataclass(frozen=True)
class FolderData:
    """An image folder as arrays: uint8 (N, S, S, C) images and int32 labels for both splits."""
    root: str
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


def load_folder(path: str, *, data_dir: str | None = None, store_size: int = 256,
                skip_bad: bool = False, progress: bool = True) -> FolderData:
    """The image folder at `path` as arrays, from the cache in `data_dir` when the folder has not
    changed, else decoded (and cached). DataError for a folder that cannot be trained on."""
    if not isinstance(store_size, int) or store_size < 1:
        raise DataError(f"--config.folder_store_size must be a positive number of pixels, got "
                        f"{store_size!r}")
    root = os.path.abspath(os.path.expanduser(path))
    test_split, listing = list_folder(root)
    cache = _cache_path(root, data_dir, _cache_key(root, listing, store_size, skip_bad))
    data = _read_cache(cache, root)
    if data is None:
        data = _decode_folder(root, test_split, listing, store_size=store_size,
                              skip_bad=skip_bad, progress=progress)
        _write_cache(cache, data)
    if data.skipped:
        warn(f"skipped {len(data.skipped)} unreadable file(s) in {root} (folder_skip_bad=true), "
             f"e.g. {data.skipped[0]}")
    return data


def list_folder(root: str) -> tuple[str, dict[str, dict[str, list[str]]]]:
    """(evaluation split name, {split: {class: [file paths relative to root, sorted]}}),
    checked: both splits exist and have the same, non-empty class folders."""
    if not os.path.isdir(root):
        raise DataError(f"the image folder {root} does not exist (--config.dataset=folder:PATH)")
    layout = (f"a folder dataset needs {root}/train/<class>/<images> and "
              f"{root}/test/<class>/<images> (or valid/)")
    if not os.path.isdir(os.path.join(root, "train")):
        raise DataError(f"no train/ folder in {root}: {layout}")
    test_split = next((s for s in EVAL_SPLITS if os.path.isdir(os.path.join(root, s))), None)
    if test_split is None:
        raise DataError(f"no test/ or valid/ folder in {root}: {layout}")
    listing = {split: _list_split(root, split) for split in ("train", test_split)}
    for split, other in (("train", test_split), (test_split, "train")):
        if not listing[split]:
            raise DataError(f"{root}/{split} holds no class folders: put each class's images in "
                            f"{root}/{split}/<class name>/")
        missing = sorted(set(listing[split]) - set(listing[other]))
        if missing:
            raise DataError(
                f"the class folder {missing[0]!r} is in {root}/{split} but not in {root}/{other}: "
                "both splits need the same classes (add images there, or remove the class)")
        empty = [c for c, files in listing[split].items() if not files]
        if empty:
            raise DataError(f"the class folder {root}/{split}/{empty[0]} holds no files: add "
                            "images to it, or remove it from both splits")
    return test_split, listing


def _list_split(root: str, split: str) -> dict[str, list[str]]:
    split_dir = os.path.join(root, split)
    classes = sorted(e.name for e in os.scandir(split_dir)
                     if e.is_dir() and not e.name.startswith("."))
    listing = {}
    for name in classes:
        files = []
        for parent, dirs, names in os.walk(os.path.join(split_dir, name), followlinks=True):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            files += [os.path.relpath(os.path.join(parent, n), root) for n in names
                      if not n.startswith(".") and n not in IGNORED_FILES]
        listing[name] = sorted(files)
    return listing


# ------------------------------------------------------------------------------------ decoding


def fit_image(image: Image.Image, height: int, width: int, channels: int | None = None) -> np.ndarray:
    """A PIL image -> uint8 (height, width, C): upright (EXIF), resized (bilinear) so that it
    covers height x width, the side that binds exactly, then its centre cut out (torchvision's
    Resize and CenterCrop rounding). C = `channels` (1 or 3); by default 1 for a grey image, else 3.
    The folder reader stores every image this way, and predictions read files this way."""
    image = ImageOps.exif_transpose(image)
    grey = image.mode in GREY_MODES if channels is None else channels == 1
    if image.mode == "P":  # via RGBA: a palette's transparency then converts without a warning
        image = image.convert("RGBA")
    image = image.convert("L" if grey else "RGB")
    w, h = image.size
    if width / w >= height / h:
        size = (width, max(height, int(h * width / w)))
    else:
        size = (max(width, int(w * height / h)), height)
    if size != (w, h):
        image = image.resize(size, Image.Resampling.BILINEAR)
    left = int(round((size[0] - width) / 2.0))
    top = int(round((size[1] - height) / 2.0))
    image = image.crop((left, top, left + width, top + height))
    return np.asarray(image, dtype=np.uint8).reshape(height, width, -1)


def decode_file(path, height: int, width: int | None = None,
                channels: int | None = None) -> np.ndarray:
    """The image file at `path` fitted to height x width (default square), as :func:`fit_image`
    fits it. Pillow's errors pass through (OSError for a file that is not an image or is
    truncated)."""
    width = width or height
    with Image.open(path) as image:
        image.draft(image.mode, (width, height))  # JPEG only: decode at a smaller scale
        image.load()
        return fit_image(image, height, width, channels)


def stored_side(paths: list[str], store_size: int) -> int:
    """The side images are stored at: the smaller of `store_size` and the median shorter side of
    up to SIDE_SAMPLE of `paths`, spread evenly (unreadable files are left out here; decoding
    reports them)."""
    sides = []
    for path in paths[::max(1, len(paths) // SIDE_SAMPLE)]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            pass
    return min(store_size, int(np.median(sides))) if sides else store_size


def _try_decode(path: str, store_size: int):
    try:
        return decode_file(path, store_size), None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return None, first_line(e)


def _decode_folder(root: str, test_split: str, listing, *, store_size: int, skip_bad: bool,
                   progress: bool) -> FolderData:
    class_names = tuple(listing["train"])
    files = [(split, label, rel) for split in ("train", test_split)
             for label, name in enumerate(class_names) for rel in listing[split][name]]
    side = stored_side([os.path.join(root, f[2]) for f in files], store_size)
    with concurrent.futures.ThreadPoolExecutor() as pool, tqdm.tqdm(
            total=len(files), desc=f"decoding {root}", unit="image", leave=False,
            disable=not progress or len(files) < PROGRESS_FROM) as bar:
        decoded = []
        for result in pool.map(lambda f: _try_decode(os.path.join(root, f[2]), side), files):
            decoded.append(result)
            bar.update()
    bad = [(rel, error) for (_, _, rel), (_, error) in zip(files, decoded) if error is not None]
    if bad and not skip_bad:
        more = f" ({len(bad) - 1} more unreadable files)" if len(bad) > 1 else ""
        raise DataError(
            f"{os.path.join(root, bad[0][0])} is not an image Pillow can read, or is damaged "
            f"({bad[0][1]}){more}: remove it, or set --config.folder_skip_bad=true to skip such "
            "files")
    kept = [(f, image) for f, (image, _) in zip(files, decoded) if image is not None]
    del decoded
    counts = collections.Counter((split, label) for (split, label, _), _ in kept)
    for split in ("train", test_split):
        for label, name in enumerate(class_names):
            if not counts[split, label]:
                raise DataError(f"the class folder {root}/{split}/{name} holds no readable "
                                "image: add images to it, or remove it from both splits")
    channels = 3 if any(image.shape[-1] == 3 for _, image in kept) else 1
    arrays = {split: _stack([(l, image) for (s, l, _), image in kept if s == split], channels)
              for split in ("train", test_split)}
    return FolderData(root=root, class_names=class_names, train_images=arrays["train"][0],
                      train_labels=arrays["train"][1], test_images=arrays[test_split][0],
                      test_labels=arrays[test_split][1], test_split=test_split,
                      skipped=tuple(rel for rel, _ in bad))


def _stack(examples, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """[(label, (S, S, 1 or 3) image)] -> uint8 (N, S, S, channels) images, int32 labels."""
    size = examples[0][1].shape[0]
    images = np.empty((len(examples), size, size, channels), np.uint8)
    for i, (_, image) in enumerate(examples):
        images[i] = image  # a grey image broadcasts to three equal channels
    return images, np.array([label for label, _ in examples], np.int32)


# --------------------------------------------------------------------------------------- cache


def _cache_key(root: str, listing, store_size: int, skip_bad: bool) -> str:
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, store_size, bool(skip_bad)]).encode())
    for split in sorted(listing):
        for name, files in listing[split].items():
            for rel in files:
                stat = os.stat(os.path.join(root, rel))
                digest.update(json.dumps([split, name, rel, stat.st_size,
                                          stat.st_mtime_ns]).encode())
    return digest.hexdigest()[:24]


def _cache_path(root: str, data_dir: str | None, key: str) -> str:
    base = os.path.basename(root.rstrip(os.sep)) or "folder"
    return os.path.join(os.path.expanduser(data_dir) if data_dir else default_data_dir(),
                        CACHE_SUBDIR, f"{base}-{key}.npz")


def _read_cache(path: str, root: str) -> FolderData | None:
    """The cached arrays, or None when there is no cache or it does not read back whole."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}  # reading checks each zip CRC
        meta = json.loads(str(arrays.pop("meta")))
        data = FolderData(root=root, class_names=tuple(meta["class_names"]),
                          test_split=meta["test_split"], skipped=tuple(meta["skipped"]),
                          **arrays)
        _check_arrays(data, meta, os.path.basename(path))
        return data
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        warn(f"the folder cache {path} is damaged ({first_line(e)}); decoding the folder again")
        return None


def _check_arrays(data: FolderData, meta: dict, file_name: str) -> None:
    if meta.get("file") != file_name:
        raise ValueError(f"it was written as {meta.get('file')!r}")
    for images, labels in ((data.train_images, data.train_labels),
                           (data.test_images, data.test_labels)):
        if (images.dtype != np.uint8 or images.ndim != 4 or labels.dtype != np.int32
                or len(images) != len(labels) or images.shape[1:] != data.train_images.shape[1:]
                or labels.min(initial=0) < 0 or labels.max(initial=0) >= data.num_classes):
            raise ValueError("its arrays do not fit together")


def _write_cache(path: str, data: FolderData) -> None:
    """Writes the cache atomically; a data dir that cannot take it only costs the next run time."""
    meta = {"file": os.path.basename(path), "class_names": list(data.class_names),
            "test_split": data.test_split, "skipped": list(data.skipped)}
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(temporary, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), train_images=data.train_images,
                     train_labels=data.train_labels, test_images=data.test_images,
                     test_labels=data.test_labels)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as e:
        warn(f"could not cache the decoded folder in {path} ({first_line(e)}); the next run "
             "decodes it again")
        if os.path.exists(temporary):
            os.remove(temporary)
