"""flaxcnn.events: the scalars it writes are what TensorBoard's own reader reads back."""
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from flaxcnn.events import ScalarWriter


def test_scalars_read_back_by_tensorboard_as_tf_summary_scalars(tmp_path):
    writer = ScalarWriter(str(tmp_path / "logs"))
    writer.add_scalars(1, {"train_loss": 2.25, "test_accuracy": 0.125})
    writer.add_scalars(2, {"train_loss": 1.5, "test_accuracy": 1 / 3})
    writer.close()
    events = event_accumulator.EventAccumulator(
        str(tmp_path / "logs"), size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    assert sorted(events.Tags()["tensors"]) == ["test_accuracy", "train_loss"]
    for tag, expected in [("train_loss", {1: 2.25, 2: 1.5}), ("test_accuracy", {1: 0.125, 2: 1 / 3})]:
        read = {e.step: tensor_util.make_ndarray(e.tensor_proto) for e in events.Tensors(tag)}
        assert all(v.dtype == np.float32 and v.shape == () for v in read.values())
        assert {k: float(v) for k, v in read.items()} == pytest.approx(expected, rel=1e-7)
        assert events.SummaryMetadata(tag).plugin_data.plugin_name == "scalars"
