"""Our tfds builders: one IDX builder class serves the bundled sample and ``--config.idx_dir``.

Both read the four official (Fashion-)MNIST IDX files and keep the files' order, so example i of a
split is image i of its file.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import registered as tfds_registered

from flaxcnn.datasets import idx as idx_lib
from flaxcnn.errors import UserError

SAMPLE_NAME = "fashion_mnist_sample"
SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "sample_data")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
MNIST_CLASSES = tuple(str(i) for i in range(10))
# Datasets that --config.idx_dir can stand in for, with their class names.
IDX_DATASETS = {"fashion_mnist": FASHION_MNIST_CLASSES, "mnist": MNIST_CLASSES}


class DataError(UserError):
    """A dataset problem the user must fix; the message is one line saying what to do."""


@dataclasses.dataclass(eq=False)
class IdxConfig(tfds.core.BuilderConfig):
    """Where the four IDX files are, the class names and the image size (rows, cols)."""

    idx_dir: str = ""
    class_names: tuple = ()
    image_size: tuple = (28, 28)


class IdxImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
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
    IdxImageBuilder,
    # Registered in tfds as `fashion_mnist_sample` (unless this module is somehow imported twice).
    skip_registration=SAMPLE_NAME in getattr(tfds_registered, "_DATASET_REGISTRY", {}),
):
    """The real first 1,003 train and 1,003 test images of Fashion-MNIST, bundled with flaxcnn.

    Read from ``flaxcnn/sample_data/*.gz``. Bump VERSION if those files ever change.
    """

    name = SAMPLE_NAME

    def _idx_config(self) -> IdxConfig:
        return _SAMPLE_CONFIG


class IdxImages(IdxImageBuilder, skip_registration=True):
    """``--config.idx_dir``: built with ``config=IdxConfig(name='fashion_mnist' or 'mnist', ...)``."""

    name = "idx_images"
