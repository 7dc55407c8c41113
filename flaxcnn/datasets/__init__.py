"""Datasets for flaxcnn, resolved once by :func:`resolve` into a dataset object.

The routes that fit in memory need only numpy: the bundled ``fashion_mnist_sample``, an
``idx_dir`` folder of the four official (Fashion-)MNIST IDX files, and ``fashion_mnist`` /
``mnist`` downloaded as those files (see :mod:`flaxcnn.datasets.resolution`). They give an
:class:`ArrayDataset`; so does any reader that has uint8 arrays (:meth:`ArrayDataset.from_arrays`).
Other tfds datasets go through tfds (:mod:`flaxcnn.datasets.tfds_route`), which needs TensorFlow to
prepare them; so does the tf.data stream (``--config.input_pipeline=stream``). Importing this
package imports neither TensorFlow nor tfds.

Every dataset object has ``.info`` (:class:`DatasetInfo`), ``.train_batches_per_epoch(batch)``,
``.load_arrays('train' | 'test')`` (this process's shard: uint8 NHWC images, int32 labels),
``.stream_train(...)`` / ``.stream_eval(...)``, and ``process_index`` / ``process_count`` fields
that ``dataclasses.replace`` changes (``process_count=1``: the whole split).

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
