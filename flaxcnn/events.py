"""TensorBoard scalars in TensorBoard's own file format, with its own protos, and no TensorFlow.

TensorBoard's event writer (``tensorboard.summary.Writer``, ``EventFileWriter``) opens its files
through ``tensorboard.compat.tf``, which imports TensorFlow whenever it is installed (1.5 s and
more at start-up here); the pieces under it, the record writer (length, masked CRC32C) and the
Event / Summary protos, do not. The files hold what ``tf.summary.scalar`` writes: one float32
tensor summary per value, marked for TensorBoard's scalars plugin.
"""
from __future__ import annotations

import os
import socket
import time

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR)


class ScalarWriter:
    """One event file in `logdir`, named as TensorFlow names them, for scalars by step."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.v2")
        self.path = os.path.join(logdir, name)
        self._records = RecordWriter(open(self.path, "wb"))
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            event = event_pb2.Event(wall_time=time.time(), step=int(step))
            event.summary.value.add(tag=tag, metadata=_SCALAR_METADATA,
                                    tensor=tensor_util.make_tensor_proto(np.float32(value)))
            self._write(event)

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        self._records.close()

    def _write(self, event) -> None:
        self._records.write(event.SerializeToString())
