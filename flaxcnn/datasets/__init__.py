"""Datasets for flaxcnn, resolved once by :func:`resolve` into a dataset object.

The array routes need only numpy (and Pillow for image folders): the bundled
``fashion_mnist_sample``, an ``idx_dir`` folder of the four official (Fashion-)MNIST IDX files,
``fashion_mnist`` / ``mnist`` downloaded as those files, and ``folder:PATH`` image folders, decoded
once into a memory-mapped cache (see :mod:`flaxcnn.datasets.resolution`). They give an
:class:`ArrayDataset`; so does any reader that has uint8 arrays (:meth:`ArrayDataset.from_arrays`).
Other tfds datasets go through tfds (:mod:`flaxcnn.datasets.tfds_route`), which needs TensorFlow to
prepare them and to read them when they are stored as tfrecord; those stored as ArrayRecord are read
without it. Importing this package imports neither TensorFlow nor tfds.

Every dataset object has ``.info`` (:class:`DatasetInfo`), ``.train_batches_per_epoch(batch)``,
``.load_arrays('train' | 'test')`` (this process's shard: uint8 NHWC images, int32 labels), and
``process_index`` / ``process_count`` fields that ``dataclasses.replace`` changes
(``process_count=1``: the whole split). Those the host stream reads have
``.examples(split, whole=False)`` (random access); the rest (tfds through tf.data) have
``.stream_train(...)`` / ``.stream_eval(...)``.

Train split is ``'train'``; the evaluation split is ``'test'`` (or ``'validation'`` for tfds
datasets without a test split, e.g. imagenet2012).
"""
from flaxcnn.datasets.catalog import (FASHION_MNIST_CLASSES, IDX_DATASETS, MNIST_CLASSES,
                                      SAMPLE_DIR, SAMPLE_NAME, DataError)
from flaxcnn.datasets.dataset import ArrayDataset, DatasetInfo
from flaxcnn.datasets.resolution import IDX_SUBDIR, is_prepared, network_available, resolve

__all__ = ["ArrayDataset", "DataError", "DatasetInfo", "FASHION_MNIST_CLASSES", "IDX_DATASETS",
           "IDX_SUBDIR", "MNIST_CLASSES", "SAMPLE_DIR", "SAMPLE_NAME", "is_prepared",
           "network_available", "resolve"]
