"""No TensorFlow on the device pipeline's route. Where TensorFlow is installed, reading the sample,
an IDX folder and a downloaded fashion_mnist, importing the trainer and writing TensorBoard scalars
import neither it nor tfds. Where it cannot be imported, a process reads those and a tfds ArrayRecord
dataset, and trains that dataset streamed from its ArrayRecord files (the host stream) with
TensorBoard files written; the routes that need TensorFlow say so in one line. A real process boundary is the point: a fresh interpreter's modules, or TensorFlow
hidden before anything imports."""
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.data_helpers import FileServer, checksums, tfds_test_builder, write_idx_dir

SCRIPT = r'''
import json, sys


class NoTensorFlow:
    """Wraps an import finder so that it finds no TensorFlow, as where none is installed (every
    import and find_spec of it fails); every look-up is recorded."""
    tries = []

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            self.tries.append(name)
            return None
        return self.finder.find_spec(name, path, target)

    def invalidate_caches(self):
        getattr(self.finder, "invalidate_caches", lambda: None)()


args = json.loads(sys.argv[1])
if args["hide"]:
    sys.meta_path[:] = [NoTensorFlow(finder) for finder in sys.meta_path]

def loaded(prefix):
    return sorted(m for m, module in sys.modules.items()
                  if module is not None and (m == prefix or m.startswith(prefix + ".")))

import flaxcnn.datasets as datasets
from flaxcnn.datasets import download, resolution
download.SOURCES["fashion_mnist"] = (args["url"], {k: tuple(v) for k, v in args["files"].items()})
resolution.network_available = lambda timeout=3.0: True
out = {"shapes": {}, "errors": {}}
for name, kwargs in [("fashion_mnist_sample", {}), ("mnist", {"idx_dir": args["idx_dir"]}),
                     ("fashion_mnist", {})]:
    x, y = datasets.resolve(name, data_dir=args["data_dir"], **kwargs).load_arrays("test")
    out["shapes"][name] = [list(x.shape), str(y.dtype)]
out["array_routes_loaded"] = loaded("tensorflow_datasets") + NoTensorFlow.tries
if not args["hide"]:
    import flaxcnn.trainer
    # what a machine with only jax, flax, optax and orbax lacks (BENCHMARKS.md): not imported
    out["extras"] = sum((loaded(m) for m in ("PIL", "matplotlib", "safetensors", "huggingface_hub",
                                             "clu", "torch")), [])
    from flaxcnn.events import ScalarWriter
    writer = ScalarWriter(args["workdir"])
    writer.add_scalars(1, {"train_loss": 0.5})
    writer.close()
    out["loaded"] = loaded("tensorflow") + loaded("tensorflow_datasets")
    print("RESULT " + json.dumps(out))
    sys.exit(0)
import tests.data_helpers as helpers
helpers.tfds_test_builder()  # registers the small tfds dataset prepared by the test
for what, call in [
        ("tfrecord", lambda: datasets.resolve(args["test_name"], data_dir=args["tfrecord"])),
        ("unprepared", lambda: datasets.resolve(args["test_name"], data_dir=args["data_dir"]))]:
    try:
        call()
    except datasets.DataError as e:
        out["errors"][what] = str(e)
x, y = datasets.resolve(args["test_name"], data_dir=args["array_record"]).load_arrays("train")
out["shapes"]["array_record"] = [list(x.shape), str(y.dtype)]

from configs import batchnorm
from flaxcnn import trainer
config = batchnorm.get_config()
config.update(dataset=args["test_name"], num_epochs=1, batch_size=8, plots=False,
              progress=False, tensorboard=True, data_dir=args["array_record"],
              input_pipeline="stream")  # the host stream, from the ArrayRecord data sources
out["record"] = trainer.train_and_evaluate(config, args["workdir"])
out["loaded"] = loaded("tensorflow")
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Served IDX files, an IDX folder and the small tfds dataset prepared as tfrecord and as
    ArrayRecord (here, where TensorFlow is)."""
    root = tmp_path_factory.mktemp("inputs")
    served = root / "served"
    write_idx_dir(served, seed=21, n_train=30, n_test=9)
    write_idx_dir(root / "idx", seed=22, n_train=16, n_test=5, size=(8, 8))
    builder = tfds_test_builder()
    for file_format in ("tfrecord", "array_record"):
        builder(data_dir=str(root / file_format), file_format=file_format).download_and_prepare()
    with FileServer(served) as server:
        yield {"url": server.url, "files": checksums(served), "idx_dir": str(root / "idx"),
               "test_name": builder.name,
               **{f: str(root / f) for f in ("tfrecord", "array_record")}}


def run_script(inputs, tmp_path, hide: bool) -> dict:
    args = {**inputs, "hide": hide, "data_dir": str(tmp_path / "data"),
            "workdir": str(tmp_path / "run")}
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[0][len("RESULT "):])


ARRAY_SHAPES = {"fashion_mnist_sample": [[1003, 28, 28, 1], "int32"],
                "mnist": [[5, 8, 8, 1], "int32"], "fashion_mnist": [[9, 28, 28, 1], "int32"]}


def test_with_tensorflow_installed_the_array_routes_trainer_and_scalars_import_none_of_it(
        inputs, tmp_path):
    out = run_script(inputs, tmp_path, hide=False)
    assert out["shapes"] == ARRAY_SHAPES
    assert out["array_routes_loaded"] == [] and out["loaded"] == []
    assert out["extras"] == []  # Pillow, matplotlib, safetensors, the Hub: only where used
    assert len(list((tmp_path / "run").glob("events.out.tfevents.*"))) == 1


def test_without_tensorflow_the_device_route_and_a_run_work(inputs, tmp_path):
    out = run_script(inputs, tmp_path, hide=True)
    assert out["shapes"] == {**ARRAY_SHAPES, "array_record": [[20, 28, 28, 1], "int32"]}
    assert out["array_routes_loaded"] == []  # neither tfds nor TensorFlow for the array routes
    errors = out["errors"]
    assert set(errors) == {"tfrecord", "unprepared"}
    assert all("\n" not in e and 'pip install "flaxcnn[stream]"' in e for e in errors.values()), errors
    assert "stored as tfrecord, which tfds reads only with TensorFlow" in errors["tfrecord"]
    assert "tfds needs TensorFlow to prepare it" in errors["unprepared"]
    assert out["record"]["epoch"] == 1 and out["record"]["test_examples"] == 20
    assert out["record"]["step"] == 20 // 8
    assert out["loaded"] == []
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))
