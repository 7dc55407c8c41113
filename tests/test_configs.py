"""configs/: each section's config is the course notebook's experiment, its cited band is the one
benchmarks/d2l_reference/table.md verified, configs/batchnorm.py:scratch reaches the
from-scratch LeNet-BN through ml_collections' config_flags, as train.py loads it, and each
section has a :sample variant (tests/test_trainer.py trains each)."""
import importlib
import re
import sys
from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

from flaxcnn import reference

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "benchmarks" / "d2l_reference" / "table.md"
# config (and variant) -> the run's name in table.md
COURSE_RUNS = {"alexnet": "alexnet", "vgg": "vgg", "nin": "nin", "googlenet": "googlenet",
               "batchnorm:concise": "batchnorm, concise", "batchnorm:scratch": "batchnorm, from scratch",
               "resnet": "resnet", "densenet": "densenet"}


def verified_rows() -> dict[str, dict]:
    """table.md's rows by run: the settings and the min / median / max printed test accuracy."""
    rows = {}
    for line in TABLE.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 8 and re.fullmatch(r"[\d.]+", cells[4] or "-"):
            lr, batch, size = (float(v) for v in cells[1].split(","))
            rows[cells[0]] = {"lr": lr, "batch": int(batch), "size": int(size),
                              "epochs": int(cells[2]), "band": tuple(float(c) for c in cells[4:7])}
    return rows


def load(name: str):
    config_name, _, variant = name.partition(":")
    module = importlib.import_module(f"configs.{config_name}")
    return module, module.get_config(*([variant] if variant else []))


def test_table_has_every_course_run():
    assert sorted(verified_rows()) == sorted(COURSE_RUNS.values())


@pytest.mark.parametrize("name", COURSE_RUNS)
def test_config_is_the_course_notebooks_experiment(name):
    module, config = load(name)
    row = verified_rows()[COURSE_RUNS[name]]
    assert (config.learning_rate, config.batch_size, config.image_size, config.num_epochs) == (
        row["lr"], row["batch"], row["size"], row["epochs"])
    assert config.optimizer == "sgd" and config.weight_decay == 0 and config.lr_schedule == "constant"
    band = reference.band(config.reference_accuracy)
    assert band == pytest.approx(row["band"], abs=5e-4)  # table.md prints three decimals
    for value in band:  # the docstring cites the same band, with its source
        assert f"{value:.3f}" in module.__doc__ or f"{value:.4g}" in module.__doc__
    assert "github.com/d2l-ai/d2l-pytorch-colab" in module.__doc__
    assert "v1.0" in module.__doc__ and "prints no accuracy" in module.__doc__


def test_regnet_keeps_v1_settings_and_cites_no_accuracy():
    module, config = load("regnet")
    assert (config.model, config.learning_rate, config.batch_size, config.image_size) == (
        "regnetx32", 0.05, 128, 96)
    assert reference.band(config.reference_accuracy) is None
    assert "v1.0" in module.__doc__ and "no accuracy is cited" in module.__doc__


def parse_train_flags(monkeypatch, argv):
    """argv parsed the way train.py parses it (config_flags reads its overrides from sys.argv)."""
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=flag_values)
    monkeypatch.setattr(sys, "argv", argv)
    flag_values(argv)
    return flag_values.config


@pytest.mark.parametrize("argument, model, band", [
    ("configs/batchnorm.py", "lenet_bn", (0.518, 0.853, 0.892)),
    ("configs/batchnorm.py:concise", "lenet_bn", (0.518, 0.853, 0.892)),
    ("configs/batchnorm.py:scratch", "lenet_bn_scratch", (0.682, 0.873, 0.894)),
])
def test_batchnorm_variants_through_config_flags(monkeypatch, argument, model, band):
    monkeypatch.chdir(REPO)
    config = parse_train_flags(monkeypatch, ["train.py", f"--config={argument}", "--config.seed=2"])
    assert config.model == model and config.seed == 2
    assert reference.band(config.reference_accuracy) == band


def test_reference_accuracy_can_be_unset_or_replaced_on_the_command_line(monkeypatch):
    monkeypatch.chdir(REPO)
    for value, expected in (("()", None), ("None", None),
                            ("(0.8,0.85,0.9)", reference.Band(0.8, 0.85, 0.9))):
        config = parse_train_flags(monkeypatch, ["train.py", "--config=configs/resnet.py",
                                                 f"--config.reference_accuracy={value}"])
        assert reference.band(config.reference_accuracy) == expected


def test_unknown_batchnorm_variant_names_the_choices():
    from configs import batchnorm
    with pytest.raises(ValueError, match=r"use configs/batchnorm.py:concise or "
                                         r"configs/batchnorm.py:scratch"):
        batchnorm.get_config("lenet")


SECTIONS = ["alexnet", "vgg", "nin", "googlenet", "batchnorm", "resnet", "densenet", "regnet"]


def test_every_section_has_a_sample_variant_that_says_what_it_measured():
    for name in SECTIONS:
        module, config = load(f"{name}:sample")
        assert config.dataset == "fashion_mnist_sample" and config.model == load(name)[1].model
        assert reference.band(config.reference_accuracy) is None  # d2l's band is for the full set
        assert 1003 / config.batch_size >= 10  # enough steps an epoch to learn in
        doc = " ".join(module.__doc__.split())
        assert f"python train.py --config configs/{name}.py:sample" in doc
        assert "Measured with that command on the 2-core VM" in doc and "seeds 0, 1, 2" in doc
        assert "What differs from the course:" in doc and "final test accuracy" in doc

