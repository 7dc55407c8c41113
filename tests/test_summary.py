"""The model summary: flax's layer table, parameter counts and XLA's FLOP count, as a library and a CLI."""
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from flaxcnn import models, summary

# multiply-adds of LeNet-BN's convolutions and dense layers on a 28x28 image
LENET_MULTIPLY_ADDS = (24 * 24 * 6 * 5 * 5 * 1 + 8 * 8 * 16 * 5 * 5 * 6 + 256 * 120 + 120 * 84 + 84 * 10)


def test_cli_prints_layers_parameters_and_flops():
    result = subprocess.run([sys.executable, "-m", "flaxcnn.summary", "--model", "lenet_bn", "--image-size", "28"],
                            capture_output=True, text=True, check=True)
    out = result.stdout
    assert "Conv_0" in out and "float32[1,24,24,6]" in out and "Dense_2" in out
    assert "\nparameters: 44,878 (trainable; the count the README's tables give)\n" in out
    assert "\nBatchNorm statistics: 452 (running means and variances, not trained" in out
    assert "45,330" not in out  # flax's footer total, statistics included, is not printed
    flops = float(re.search(r"forward FLOPs per image: ([\d,]+)", out).group(1).replace(",", ""))
    analytic = 2 * LENET_MULTIPLY_ADDS
    assert analytic / 2 < flops < 2 * analytic


def test_cli_rejects_an_unknown_model_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        summary.main(["--model", "lenet", "--image-size", "28"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "invalid choice: 'lenet'" in error and "resnet50" in error


def test_cli_rejects_a_too_small_image_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        summary.main(["--model", "alexnet", "--image-size", "64"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "alexnet needs inputs of at least 65x65 pixels, got 64x64; pass a larger --image-size" in error


def test_model_stats():
    stats = summary.model_stats("resnet18", 96)
    assert stats["params"] == 11_178_378
    assert stats["batch_stats"] == 7_808
    assert stats["min_input_size"] == 1
    # about 2.7 G multiply-adds per 224x224 RGB image for ResNet-18; far fewer at 96x96x1
    assert 0.3e9 < stats["flops_per_image"] < 1e9
    assert summary.model_stats("lenet_bn", 28, channels=3, num_classes=5)["params"] == 44_878 + 2 * 150 - 85 * 5


def test_model_stats_passes_overrides():
    assert summary.model_stats("vgg11", 224, width_divisor=4)["params"] == 43_093_322


def test_parameters_are_model_stats_params_without_compiling():
    # AlexNet's first dense layer sees the flattened maps, so its size follows the image's
    assert summary.parameters("alexnet", 224) == summary.model_stats("alexnet", 224)["params"]
    assert summary.parameters("alexnet", 96) < summary.parameters("alexnet", 224)
    assert summary.parameters("vgg11", 224, width_divisor=4) == 43_093_322
    assert summary.parameters("lenet_bn", 28, channels=3, num_classes=5) == \
        44_878 + 2 * 150 - 85 * 5


def test_param_count_takes_variables_or_params():
    model = models.create("lenet_bn")
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False))
    assert summary.param_count(variables) == summary.param_count(variables["params"]) == 44_878
    assert summary.param_count(variables["batch_stats"]) == 452
