"""Shared test setup: four fake CPU devices, so every run tests the multi-device code."""
import importlib
import json
import os
import tempfile
from pathlib import Path

# Must happen before jax is imported anywhere in the test session (subprocesses inherit it too).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Runs of the same config compile the same programs: compile each once per machine.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "flaxcnn-tests-jax-cache"))

import pytest  # noqa: E402

from flaxcnn import training  # noqa: E402

training.reserve_cpu_threads_for_collectives()  # 4 devices on a 2-core CI machine (see its docstring)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One config per chapter section: every file of configs/ but the shared default.
CONFIG_NAMES = sorted(p.stem for p in Path(REPO, "configs").glob("*.py")
                      if p.stem not in ("__init__", "default"))


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """A tfds data_dir for the session: the bundled sample is prepared in it once."""
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))


@pytest.fixture
def make_config(tfds_dir):
    """make_config('batchnorm', num_epochs=2, ...): a chapter config with quiet, offline defaults."""

    def make(name, **overrides):
        config = importlib.import_module(f"configs.{name}").get_config()
        config.data_dir = tfds_dir
        config.progress = False
        for key, value in overrides.items():
            config[key] = value
        return config

    return make


def train_to_end(config, workdir) -> dict:
    """trainer.train_and_evaluate, checking that it returned the run's last recorded line."""
    from flaxcnn import trainer

    record = trainer.train_and_evaluate(config, workdir)
    log = Path(workdir) / ("eval.jsonl" if config.eval_only else "metrics.jsonl")
    assert record == json.loads(log.read_text().splitlines()[-1])
    return record


def uninterrupted_run(workdir, tfds_dir, overrides: dict):
    """configs/batchnorm.py with `overrides`, trained to the end in `workdir`: the reference that
    interrupted runs must reproduce bit for bit."""
    config = importlib.import_module("configs.batchnorm").get_config()
    config.update(overrides, data_dir=tfds_dir, progress=False)
    train_to_end(config, workdir)
    return workdir
