"""One tiny finished run per test process, shared by the tests of flaxcnn.runs, predict and export:
LeNet-BN, one epoch on the bundled Fashion-MNIST sample, trained in-process."""
import importlib
from pathlib import Path

from flaxcnn.datasets import SAMPLE_DIR, idx

_RUNS: dict[str, Path] = {}


def trained_run(tfds_dir: str, tmp_path_factory) -> Path:
    """The workdir of the run (trained on first use). Tests must not change it: copy it first."""
    if tfds_dir not in _RUNS:
        from flaxcnn import trainer

        config = importlib.import_module("configs.batchnorm").get_config()
        config.update(dataset="fashion_mnist_sample", num_epochs=1, batch_size=64, plots=False,
                      tensorboard=False, progress=False, data_dir=tfds_dir)
        workdir = tmp_path_factory.mktemp("trained-run")
        trainer.train_and_evaluate(config, workdir)
        _RUNS[tfds_dir] = workdir
    return _RUNS[tfds_dir]


def sample_test_images():
    """The sample's test split as uint8 (N, 28, 28, 1) images and their labels."""
    split = idx.read_split(SAMPLE_DIR, "test")
    return split.images[..., None], split.labels
