"""flaxcnn.reference: d2l's band from a config, and where a final accuracy lands relative to it."""
import pytest

from flaxcnn import reference
from flaxcnn.errors import UserError

BAND = reference.Band(0.847, 0.88, 0.885)


@pytest.mark.parametrize("unset", [None, (), [], (None,)])
def test_unset_is_no_band(unset):
    assert reference.band(unset) is None


def test_band_from_tuple_or_json_list():
    assert reference.band((0.847, 0.88, 0.885)) == BAND
    assert reference.band([0.1, 0.843, 0.875]) == reference.Band(0.1, 0.843, 0.875)
    assert reference.band((0, 1, 1)) == reference.Band(0.0, 1.0, 1.0)


@pytest.mark.parametrize("bad", [0.885, (0.9, 0.88, 0.885), (0.8, 0.9, 0.85), (0.5, 0.6, 1.2),
                                 (-0.1, 0.5, 0.6), (0.5, float("nan"), 0.6), (0.1, 0.2),
                                 (True, True, True), ("0.1", "0.2", "0.3")])
def test_bad_band_is_one_line_saying_what_to_write(bad):
    with pytest.raises(UserError) as raised:
        reference.band(bad)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("--config.reference_accuracy must be d2l's (min, median, max)")
    assert "'()' to unset it" in message and repr(bad) in message


def test_check_reads_the_config_field():
    class Config:
        reference_accuracy = (0.9, 0.1, 0.5)
    with pytest.raises(UserError):
        reference.check(Config())
    Config.reference_accuracy = None
    reference.check(Config())


def test_band_applies_to_the_full_fashion_mnist_only():
    config = {"dataset": "fashion_mnist", "reference_accuracy": [0.847, 0.88, 0.885]}
    assert reference.for_run(config) == BAND
    for dataset in ("fashion_mnist_sample", "mnist", "cifar10"):
        assert reference.for_run({**config, "dataset": dataset}) is None
    assert reference.for_run({"dataset": "fashion_mnist", "reference_accuracy": None}) is None


@pytest.mark.parametrize("accuracy, where", [(0.5, "below"), (0.8469, "below"), (0.847, "inside"),
                                             (0.88, "inside"), (0.885, "inside"),
                                             (0.8851, "above"), (0.95, "above")])
def test_position_ends_count_as_inside(accuracy, where):
    assert reference.position(accuracy, BAND) == where


def test_verdict_line():
    assert reference.verdict(0.8612, BAND) == (
        "final test acc 0.8612 is inside d2l's printed spread 0.847–0.885 (median 0.880)")
    assert reference.verdict(0.9, BAND).startswith("final test acc 0.9000 is above d2l's")
    assert reference.verdict(0.9, None) is None
