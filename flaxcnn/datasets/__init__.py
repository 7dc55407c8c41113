"""Datasets for flaxcnn, resolved once by :func:`resolve` into a :class:`Dataset`: any tfds image-classification dataset, plus two offline routes.

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
``num_test`` equal the lengths of the arrays that :meth:`Dataset.load_arrays` returns (the mock's
``num_examples``). Note that builders are not "prepared" under mock, so a caller must make
:func:`network_available` return True there (or the offline error is raised).
"""
from flaxcnn.datasets.builders import (FASHION_MNIST_CLASSES, IDX_DATASETS, MNIST_CLASSES,
                                       SAMPLE_DIR, SAMPLE_NAME, DataError)
from flaxcnn.datasets.dataset import Dataset, DatasetInfo
from flaxcnn.datasets.resolution import IDX_SUBDIR, is_prepared, network_available, resolve

__all__ = ["DataError", "Dataset", "DatasetInfo", "FASHION_MNIST_CLASSES", "IDX_DATASETS",
           "IDX_SUBDIR", "MNIST_CLASSES", "SAMPLE_DIR", "SAMPLE_NAME", "is_prepared",
           "network_available", "resolve"]
