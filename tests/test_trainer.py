"""trainer.train_and_evaluate end to end: every config on twelve IDX examples, learning on the real
sample, the streamed input, the outputs a run leaves, errors."""
import json

import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from flaxcnn import config_check, models, outputs, plots, trainer
from flaxcnn.errors import UserError
from tests.conftest import CHAPTER_CONFIGS, train_to_end
from tests.data_helpers import write_idx_dir


def read_metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def twelve_examples(tmp_path_factory):
    """An --config.idx_dir folder of 12 random train and 12 test images (fashion_mnist's files)."""
    directory = tmp_path_factory.mktemp("idx")
    write_idx_dir(directory, seed=0, n_train=12, n_test=12)
    return str(directory)


@pytest.mark.parametrize("name", CHAPTER_CONFIGS)
def test_every_config_trains_one_real_step_on_twelve_examples(name, make_config, tmp_path,
                                                              twelve_examples):
    # The pictures and TensorBoard are the same for every config (test_lenet_bn_learns_... checks
    # them): one step, its evaluation and checkpoint are what differ.
    config = make_config(name, batch_size=8, num_epochs=1, idx_dir=twelve_examples, plots=False,
                         tensorboard=False)
    config.image_size = max(models.create(config.model).min_input_size, 16)
    train_to_end(config, tmp_path)
    (record,) = read_metrics(tmp_path)
    assert record["epoch"] == 1 and record["step"] == 1  # 12 examples: one batch of 8
    assert record["test_examples"] == 12  # the padded last eval batch is masked
    correct = record["test_accuracy"] * 12  # counted over the 12 test examples, each once
    assert abs(correct - round(correct)) < 1e-9
    assert record["train_accuracy"] * 8 == round(record["train_accuracy"] * 8)  # one batch of 8
    assert 0 < record["train_loss"] < 100 and record["learning_rate"] == config.learning_rate
    assert json.loads((tmp_path / "config.json").read_text())["model"] == config.model
    assert (tmp_path / "checkpoints" / "1").is_dir()


def test_lenet_bn_learns_the_real_fashion_mnist_sample(make_config, tmp_path):
    # d2l's own PyTorch LeNet-BN reaches 0.75 on this sample at these settings (single seeds 0.72-0.77).
    config = make_config("batchnorm", dataset="fashion_mnist_sample", batch_size=64,
                         learning_rate=1.0, num_epochs=30)
    seen = []  # what on_epoch (the notebooks' live plot) is given after each epoch
    train_to_end(config, tmp_path, on_epoch=lambda records: seen.append(list(records)))
    metrics = read_metrics(tmp_path)
    assert seen == [metrics[:epoch] for epoch in range(1, 31)]
    assert [m["epoch"] for m in metrics] == list(range(1, 31))
    assert all(m["test_examples"] == 1003 for m in metrics)  # every test image, not 15 x 64
    assert metrics[-1]["train_loss"] < 0.5 * metrics[0]["train_loss"]
    assert 0.70 <= metrics[-1]["test_accuracy"] <= 0.82
    assert_run_outputs(tmp_path, metrics)


def assert_run_outputs(workdir, metrics):
    """The pictures, run_info.json and TensorBoard scalars a finished run leaves in its workdir."""
    for name, size in (("curves.png", plots.CURVES_SIZE), ("predictions.png", plots.PREDICTIONS_SIZE),
                       ("confusion.png", plots.CONFUSION_SIZE)):
        with Image.open(workdir / name) as image:
            assert (image.format, image.size) == ("PNG", size), name
    info = json.loads((workdir / "run_info.json").read_text())
    assert (info["params"], info["batch_stats"], info["devices"]) == (44_878, 452, 4)
    assert info["class_names"][0] == "T-shirt/top" and info["flops_per_image"] > 5e5
    timing = info["timing"]  # where the run's time went, in this (the test) process
    assert timing["compilations"]["programs"] >= 2  # at least the train step and the evaluation
    assert timing["train_seconds"] > 0 and timing["evaluate_seconds"] > 0
    assert timing["outputs_and_checkpoints_seconds"] > 0
    assert timing["seconds_since_start"] > timing["seconds_before_first_step"] > 0
    # TensorBoard's own reader (needs no TensorFlow): every scalar, as TensorBoard shows it.
    assert list(workdir.glob("events.out.tfevents.*"))
    events = event_accumulator.EventAccumulator(
        str(workdir), size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    scalars = {tag: {e.step: float(tensor_util.make_ndarray(e.tensor_proto))
                     for e in events.Tensors(tag)} for tag in events.Tags()["tensors"]}
    assert set(scalars) == set(outputs.TENSORBOARD_SCALARS)
    for tag in outputs.TENSORBOARD_SCALARS:
        assert scalars[tag] == pytest.approx({m["epoch"]: m[tag] for m in metrics}, rel=1e-6)


def test_streamed_input_trains_and_evaluates_every_test_image(make_config, tmp_path):
    config = make_config("batchnorm", dataset="fashion_mnist_sample", input_pipeline="stream",
                         batch_size=64, num_epochs=2)
    train_to_end(config, tmp_path)
    metrics = read_metrics(tmp_path)
    assert [m["step"] for m in metrics] == [15, 30]  # 1,003 // 64 steps an epoch
    assert all(m["test_examples"] == 1003 for m in metrics)
    assert metrics[1]["train_loss"] < metrics[0]["train_loss"]
    assert (tmp_path / "predictions.png").exists() and (tmp_path / "confusion.png").exists()


@pytest.mark.parametrize("overrides,message", [
    ({"model": "lenet5"}, "unknown model 'lenet5'; use one of: alexnet"),
    ({"dataset": "no_such_dataset"}, "no_such_dataset"),
    ({"batch_size": 6}, "batch_size=6 is not divisible by the 4 devices"),
    ({"image_size": 8}, "at least 16"),
    ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'"),
    ({"dtype": "float16"}, "unknown dtype 'float16'; use one of: float32, bfloat16"),
    ({"model_overrides": {"depth": 3}}, "depth"),
])
def test_bad_config_is_a_clear_error(overrides, message, make_config, tmp_path):
    config = make_config("batchnorm", **{"dataset": "fashion_mnist_sample", **overrides})
    with pytest.raises(UserError, match=message.replace("(", r"\(")) as error:
        trainer.train_and_evaluate(config, tmp_path / "run")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("field,value,message", [
    ("learning_rate", -1.0, "learning_rate must be a finite number above 0"),
    ("learning_rate", 0.0, "learning_rate must be a finite number above 0"),
    ("learning_rate", float("nan"), "learning_rate must be a finite number above 0, e.g. 0.1, got nan"),
    ("learning_rate", float("inf"), "learning_rate must be a finite number above 0"),
    ("momentum", 1.0, r"momentum must be a finite number in \[0, 1\)"),
    ("momentum", -0.1, r"momentum must be a finite number in \[0, 1\)"),
    ("weight_decay", -1e-4, "weight_decay must be a finite number, 0 or more"),
    ("weight_decay", float("nan"), "weight_decay must be a finite number"),
    ("warmup_epochs", -1.0, "warmup_epochs must be a finite number of epochs, 0 or more"),
    ("warmup_epochs", float("inf"), "warmup_epochs must be a finite number"),
    ("num_epochs", -1, "num_epochs must be a whole number, 0 or more"),
    ("batch_size", 0, "batch_size must be a whole number, at least 1"),
    ("eval_batch_size", -4, "eval_batch_size must be a whole number, 0"),
    ("image_size", 0, "image_size must be a whole number, at least 1"),
    ("checkpoint_every_epochs", 0, "checkpoint_every_epochs must be a whole number, at least 1"),
    ("max_checkpoints", 0, "max_checkpoints must be a whole number, at least 1"),
    ("seed", -3, "seed must be a whole number, 0 or more"),
    ("reference_accuracy", (0.9, 0.8, 0.95), r"reference_accuracy must be d2l's \(min, median, max\)"),
    ("reference_accuracy", (0.8, 0.9, 1.5), r"reference_accuracy must be d2l's \(min, median, max\)"),
])
def test_out_of_range_numbers_are_refused_before_any_work(field, value, message, make_config,
                                                          tmp_path):
    config = make_config("batchnorm", dataset="fashion_mnist_sample", **{field: value})
    with pytest.raises(UserError, match=message) as error:
        trainer.train_and_evaluate(config, tmp_path / "run")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()  # refused before the workdir was made


def test_numbers_at_the_edges_of_their_ranges_are_accepted(make_config):
    config = make_config("batchnorm", learning_rate=1e-12, momentum=0.0, weight_decay=0.0,
                         warmup_epochs=0.0, num_epochs=0, eval_batch_size=0, seed=0,
                         reference_accuracy=(1.0, 1.0, 1.0))
    config_check.check_config(config, device_count=4)
    config.reference_accuracy = None
    config_check.check_config(config, device_count=4)


def test_unwritable_workdir_is_a_clear_error(make_config, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = make_config("batchnorm", dataset="fashion_mnist_sample")
    with pytest.raises(UserError, match="cannot write to workdir .*a-file/run"):
        trainer.train_and_evaluate(config, blocker / "run")


def test_progress_bar_shows_steps_running_loss_and_images_per_second(capsys):
    progress = outputs.EpochProgress(True, total=10, start=2, desc="epoch 1/3", batch_size=8)
    progress.update(6, {"loss_sum": 8.0, "correct": 0, "count": 32, "bad_step": -1})
    assert progress.bar.n == 6
    assert "loss 0.250" in progress.bar.postfix and "img/s" in progress.bar.postfix
    progress.close()
    assert "epoch 1/3" in capsys.readouterr().err
    quiet = outputs.EpochProgress(False, total=10, start=0, desc="epoch 1/3", batch_size=8)
    quiet.update(3, {"loss_sum": 1.0, "correct": 0, "count": 8, "bad_step": -1})
    quiet.close()
    assert capsys.readouterr().err == ""
