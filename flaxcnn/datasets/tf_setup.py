"""TensorFlow and tfds in their jobs here (the tfds route, the tf.data stream), and quiet about it.

Imported only by those routes: the sample, IDX files and downloads never load this module.
"""
from __future__ import annotations

import contextlib
import logging
import os

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import gcs_utils as tfds_gcs

_tensorflow_configured = False


def tensorflow():
    """TensorFlow, configured for its only job here (decoding and resizing uint8 images).

    Its C++ start-up chatter is silenced unless the user set TF_CPP_MIN_LOG_LEVEL (the oneDNN
    banner ignores that level, so oneDNN is off: it changes nothing for uint8 decoding), it leaves
    accelerators to JAX, and tfds never looks datasets up on gs://tfds-data (offline, the GCS client
    retries for minutes). Call it before anything imports TensorFlow.
    """
    global _tensorflow_configured
    if not _tensorflow_configured:
        _tensorflow_configured = True
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
        configure_tfds()
        import tensorflow as tf

        try:  # a full (non -cpu) TF would otherwise grab GPU memory that JAX needs
            tf.config.set_visible_devices([], "GPU")
        except (RuntimeError, ValueError):
            pass
    import tensorflow as tf

    return tf


def configure_tfds():
    """tfds never looks datasets up on gs://tfds-data (offline, the GCS client retries for
    minutes) and draws no progress bars. Needs no TensorFlow."""
    tfds_gcs._is_gcs_disabled = True  # pylint: disable=protected-access
    tfds.disable_progress_bar()


@contextlib.contextmanager
def quiet():
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


def count(ds) -> int:
    """Examples in a tf.data dataset: its cardinality, else by counting."""
    n = int(ds.cardinality())
    if n < 0:
        n = int(ds.reduce(np.int64(0), lambda total, _: total + 1))
    return n
