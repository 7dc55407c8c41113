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
* Decoding, into an on-disk cache that is memory-mapped (never the whole folder in memory), is
  :mod:`flaxcnn.datasets.folder_cache`'s. Large JPEGs are decoded at a reduced scale that is still
  at least ``store_size`` on both sides (Pillow's ``draft``), much faster than decoding them whole.

Every problem with the folder is one :class:`~flaxcnn.datasets.DataError` line saying what to do,
raised before any training. This module needs numpy and Pillow only; no TensorFlow.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps

from flaxcnn.datasets.catalog import DataError

EVAL_SPLITS = ("test", "valid")  # the first one present is the evaluation split
SIDE_SAMPLE = 256  # files whose header sizes set the stored side
PROGRESS_FROM = 500  # files: smaller folders decode without a progress bar
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
IGNORED_FILES = frozenset({"Thumbs.db", "desktop.ini"})  # and every name starting with "."


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
