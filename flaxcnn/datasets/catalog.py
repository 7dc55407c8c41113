"""The names every dataset route shares, with no TensorFlow and no tfds behind them.

``data_dir`` defaults to tfds's own choice (``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``, as
``tensorflow_datasets.core.constants.DATA_DIR`` reads it), so a dataset that tfds prepared on this
machine is found without importing tfds.
"""
from __future__ import annotations

import importlib.util
import os

from flaxcnn.errors import UserError

SAMPLE_NAME = "fashion_mnist_sample"
SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "sample_data")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
MNIST_CLASSES = tuple(str(i) for i in range(10))
# Datasets published as the four official IDX files (downloads and --config.idx_dir), with their
# class names.
IDX_DATASETS = {"fashion_mnist": FASHION_MNIST_CLASSES, "mnist": MNIST_CLASSES}
INSTALL_TENSORFLOW = 'pip install "flaxcnn[stream]" (or pip install tensorflow-cpu)'


class DataError(UserError):
    """A dataset problem the user must fix; the message is one line saying what to do."""


def default_data_dir() -> str:
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def tensorflow_installed() -> bool:
    """Whether `import tensorflow` would find it, without importing it."""
    return importlib.util.find_spec("tensorflow") is not None


FOLDER_PREFIX = "folder:"  # --config.dataset=folder:PATH, an image folder (flaxcnn.datasets.folder)


def folder_path(dataset_name: str) -> str | None:
    """PATH of a dataset name ``folder:PATH`` (user and relative paths expanded), else None."""
    if not isinstance(dataset_name, str) or not dataset_name.startswith(FOLDER_PREFIX):
        return None
    path = dataset_name[len(FOLDER_PREFIX):].strip()
    if not path:
        raise DataError(f"no folder given in --config.dataset={dataset_name!r}; use "
                        "--config.dataset=folder:PATH with PATH/train/<class>/<images>")
    return os.path.abspath(os.path.expanduser(path))
