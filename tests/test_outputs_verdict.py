"""Outputs.print_verdict: the end-of-run line on where a run landed relative to d2l's band."""
import ml_collections
import pytest

from flaxcnn.outputs import Outputs


def outputs_for(tmp_path, dataset, band):
    config = ml_collections.ConfigDict({"dataset": dataset, "reference_accuracy": band,
                                        "tensorboard": False, "plots": False})
    return Outputs(config, tmp_path, info=None)


@pytest.mark.parametrize("accuracy, where", [(0.50, "below"), (0.86, "inside"), (0.90, "above")])
def test_full_fashion_mnist_run_says_where_it_landed(tmp_path, capsys, accuracy, where):
    outputs_for(tmp_path, "fashion_mnist", (0.518, 0.853, 0.892)).print_verdict(
        {"epoch": 10, "test_accuracy": accuracy})
    assert capsys.readouterr().out == (f"final test acc {accuracy:.4f} is {where} d2l's printed "
                                       "spread 0.518–0.892 (median 0.853)\n")


@pytest.mark.parametrize("dataset, band", [("fashion_mnist_sample", (0.518, 0.853, 0.892)),
                                           ("fashion_mnist", None)])
def test_no_line_off_the_full_dataset_or_without_a_band(tmp_path, capsys, dataset, band):
    outputs_for(tmp_path, dataset, band).print_verdict({"epoch": 10, "test_accuracy": 0.86})
    assert capsys.readouterr().out == ""
