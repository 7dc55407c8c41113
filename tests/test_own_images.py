"""A user's own images, end to end: train on an image folder with d2l 14.2's augmentation, resume
bit for bit, predict image files; fine-tune from ImageNet-style weights (a converted torchvision
checkpoint) with a 10x head and a frozen backbone, and resume that bit for bit too.

The folder is made from the bundled Fashion-MNIST sample (tests/image_folders.py: PNG and JPEG,
grey and colour, mixed sizes, three classes); the checkpoint holds the deterministic tensors of
tests/fixtures/pretrained_tensors.py under torchvision's names, as a .safetensors file.
"""
import json
import sys
from pathlib import Path

import pytest
from safetensors.numpy import save_file

import flaxcnn
from flaxcnn import predict, pretrained, trainer
from flaxcnn.errors import UserError
from image_folders import CLASSES, make_folder, sample_images
from tests.conftest import (assert_bit_identical, config_of, copy_run, latest, max_abs_difference,
                            metrics_without_timing, train_to_end)

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from pretrained_tensors import reference_state  # noqa: E402

STORE = 32  # --config.folder_store_size; the images' shorter sides are 28, so they are kept at 28
STORED = 28


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """An image folder of 24 training and 9 test images in three classes."""
    return make_folder(tmp_path_factory.mktemp("own") / "pictures", sample_images())


def folder_config(tfds_dir, pictures, **overrides):
    """LeNet-BN on the folder at 28x28 with 14.2's augmentation and ImageNet normalization."""
    return config_of("batchnorm", tfds_dir, **{
        "dataset": f"folder:{pictures}", "folder_store_size": STORE, "batch_size": 8,
        "num_epochs": 2, "augment": "d2l_finetune", "normalize": "imagenet", "plots": False,
        **overrides})


@pytest.fixture(scope="module")
def folder_run(tfds_dir, pictures, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("folder-run")
    train_to_end(folder_config(tfds_dir, pictures), workdir)
    return workdir


@pytest.mark.slow
def test_a_folder_trains_with_augmentation_and_resumes_bit_for_bit(folder_run, tfds_dir,
                                                                    pictures, tmp_path):
    records = metrics_without_timing(folder_run)
    assert [r["epoch"] for r in records] == [1, 2] and [r["step"] for r in records] == [3, 6]
    assert all(r["test_examples"] == 9 for r in records)
    info = json.loads((folder_run / "run_info.json").read_text())
    assert info["class_names"] == sorted(CLASSES.values()) and info["channels"] == 3
    assert info["input"] == {"stored_shape": [STORED, STORED, 3], "augment": "d2l_finetune",
                             "normalize": "imagenet"}
    resumed = copy_run(folder_run, tmp_path / "resumed", epochs=1)
    train_to_end(folder_config(tfds_dir, pictures), resumed)
    assert metrics_without_timing(resumed) == records
    assert_bit_identical(latest(resumed), latest(folder_run))


@pytest.mark.slow
def test_augmentation_changes_the_run(folder_run, tfds_dir, pictures, tmp_path):
    train_to_end(folder_config(tfds_dir, pictures, augment="none", num_epochs=1), tmp_path)
    assert max_abs_difference(latest(tmp_path)["params"], latest(
        copy_run(folder_run, tmp_path / "first", epochs=1))["params"]) > 1e-4


def test_predictions_on_the_folders_files_are_the_runs_own(folder_run, pictures, capsys):
    files = sorted((pictures / "test").rglob("*.png"))
    model, variables, info = flaxcnn.load_run(folder_run)
    results = predict.predict((model, variables, info), files)
    for path, result in zip(files, results):
        classes = [p["class"] for p in result["predictions"]]
        assert len(classes) == 3 == len(set(classes))  # top-5 of three classes: all three
        assert sum(p["probability"] for p in result["predictions"]) == pytest.approx(1, abs=1e-5)
    assert predict.main(["--workdir", str(folder_run), "--json", *map(str, files[:2])]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [p["file"] for p in printed] == [str(f) for f in files[:2]]


def test_fewer_images_than_one_batch_is_one_line_before_training(tfds_dir, pictures, tmp_path):
    with pytest.raises(UserError, match=r"folder:.*pictures has 24 training examples, fewer than "
                                        r"one batch of 32: set --config.batch_size to at most 24"):
        trainer.train_and_evaluate(folder_config(tfds_dir, pictures, batch_size=32), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


# --- fine-tuning (d2l 14.2) from torchvision's layout --------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A torchvision ResNet-18 checkpoint (1,000 ImageNet classes, RGB) as .safetensors."""
    path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
    save_file(reference_state("tv_resnet18"), str(path))
    return path


def finetune_config(tfds_dir, pictures, weights, **overrides):
    """configs/finetune.py (14.2's settings) on the folder at 32x32, batch 8, from `weights`."""
    return config_of("finetune", tfds_dir, **{
        "dataset": f"folder:{pictures}", "folder_store_size": STORE, "image_size": 32,
        "batch_size": 8, "num_epochs": 2, "init_from": str(weights), "plots": False,
        **overrides})


@pytest.fixture(scope="module")
def finetuned(tfds_dir, pictures, weights, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("finetuned")
    train_to_end(finetune_config(tfds_dir, pictures, weights, freeze="backbone"), workdir)
    return workdir


@pytest.mark.slow
def test_fine_tuning_starts_from_the_weights_and_trains_only_the_new_head(finetuned, weights):
    loaded = pretrained.load("tv_resnet18", str(weights))
    state = latest(finetuned)
    backbone = {k: v for k, v in state["params"].items() if k != "Dense_0"}
    assert_bit_identical(backbone, {k: v for k, v in loaded["params"].items() if k != "Dense_0"})
    assert_bit_identical(state["batch_stats"], loaded["batch_stats"])  # frozen statistics too
    assert state["params"]["Dense_0"]["kernel"].shape == (512, 3)  # the folder's three classes
    info = json.loads((finetuned / "run_info.json").read_text())
    assert info["init_from"] == str(weights) and info["input"]["normalize"] == "imagenet"


@pytest.mark.slow
def test_fine_tuning_resumes_bit_for_bit_and_ignores_init_from_then(finetuned, tfds_dir,
                                                                     pictures, weights, tmp_path,
                                                                     capsys):
    resumed = copy_run(finetuned, tmp_path / "resumed", epochs=1)
    capsys.readouterr()
    train_to_end(finetune_config(tfds_dir, pictures, weights, freeze="backbone",
                                 init_from=str(tmp_path / "not-there.safetensors")), resumed)
    assert "starting from the weights" not in capsys.readouterr().out
    assert metrics_without_timing(resumed) == metrics_without_timing(finetuned)
    assert_bit_identical(latest(resumed), latest(finetuned))
    assert json.loads((resumed / "run_info.json").read_text())["init_from"] == str(weights)


@pytest.mark.slow
def test_without_freezing_the_backbone_trains_too(tfds_dir, pictures, weights, tmp_path):
    train_to_end(finetune_config(tfds_dir, pictures, weights, num_epochs=1), tmp_path)
    loaded, state = pretrained.load("tv_resnet18", str(weights)), latest(tmp_path)
    backbone = lambda params: {k: v for k, v in params.items() if k != "Dense_0"}  # noqa: E731
    assert max_abs_difference(backbone(state["params"]), backbone(loaded["params"])) > 0
    assert max_abs_difference(state["batch_stats"], loaded["batch_stats"]) > 0


@pytest.mark.parametrize("overrides, message", [
    ({"init_from": "", "head_lr_multiplier": 10.0}, "head_lr_multiplier needs --config.init_from"),
    ({"init_from": "", "head_lr_multiplier": 1.0, "freeze": "backbone"},
     "freeze=backbone needs --config.init_from"),
    ({"model": "resnet18"}, "no tensor '7.weight', which every checkpoint of resnet18 has .*tv_resnet18"),
])
def test_fine_tuning_options_that_make_no_sense_are_one_line(overrides, message, tfds_dir,
                                                             pictures, weights, tmp_path):
    with pytest.raises(UserError, match=message) as error:
        trainer.train_and_evaluate(finetune_config(tfds_dir, pictures, weights, **overrides),
                                   tmp_path)
    assert "\n" not in str(error.value)
