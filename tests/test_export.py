"""`python -m flaxcnn.export`: the run's forward function, reloaded where flaxcnn is not."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import flaxcnn
from flaxcnn import export
from flaxcnn.datasets import FASHION_MNIST_CLASSES
from flaxcnn.errors import UserError
from flaxcnn.runs import eval_logits
from tests.conftest import REPO, sample_test_images

BATCH_SIZES = (1, 3, 8)

# Run in a fresh process, outside the checkout: only jax (and TensorFlow) read the export.
RELOAD = """
import sys
import numpy as np
from jax import export
images = np.load(sys.argv[2])
exported = export.deserialize(open(sys.argv[1] + "/model.jax", "rb").read())
outputs = {f"jax{n}": np.asarray(exported.call(images[:n])) for n in %(sizes)r}
import os
if os.path.isdir(sys.argv[1] + "/saved_model"):
    import tensorflow as tf
    served = tf.saved_model.load(sys.argv[1] + "/saved_model").serve
    outputs.update({f"tf{n}": served(images[:n]).numpy() for n in %(sizes)r})
assert not any(name.startswith("flaxcnn") for name in sys.modules)
np.savez(sys.argv[3], **outputs)
""" % {"sizes": BATCH_SIZES}


@pytest.fixture(scope="module")
def run(reference_run):
    """The session's finished run (conftest.py); read only."""
    return reference_run


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    """The run exported with its SavedModel, or without it where this TensorFlow cannot run what
    this jax writes (export says so: test_a_saved_model_is_written_where_tensorflow_runs_it)."""
    out = tmp_path_factory.mktemp("export") / "lenet"
    try:
        export.export(run, out, format="saved_model")
    except UserError as e:
        assert "cannot run the SavedModel that jax" in str(e)
        assert not out.exists() or not any(out.iterdir())  # nothing left behind
        export.export(run, out)
    return out


def test_a_saved_model_is_written_where_tensorflow_runs_it(exported):
    """Where export wrote no SavedModel, TensorFlow really cannot run jax2tf's output here."""
    if (exported / "saved_model").is_dir():
        return  # its logits are checked against load_run's in the test below
    import tensorflow as tf
    from jax.experimental import jax2tf

    module = tf.Module()
    module.f = tf.function(jax2tf.convert(lambda x: x * 2, polymorphic_shapes=["(b,)"],
                                          with_gradient=False), autograph=False,
                           input_signature=[tf.TensorSpec((None,), tf.float32)])
    tf.saved_model.save(module, str(exported.parent / "probe"))
    with pytest.raises(Exception, match="deserialize|StableHLO|vhlo"):
        tf.saved_model.load(str(exported.parent / "probe")).f(np.ones(2, np.float32))


def test_the_export_gives_load_runs_logits_in_a_fresh_process_at_any_batch_size(
        run, exported, tmp_path):
    images = sample_test_images()[0][:max(BATCH_SIZES)]
    np.save(tmp_path / "images.npy", images)
    result = subprocess.run([sys.executable, "-c", RELOAD, str(exported), str(tmp_path / "images.npy"),
                             str(tmp_path / "logits.npz")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    model, variables, info = flaxcnn.load_run(run)
    expected = np.asarray(eval_logits(model, variables, info, images))
    reloaded = np.load(tmp_path / "logits.npz")
    kinds = ("jax", "tf") if (exported / "saved_model").is_dir() else ("jax",)
    for n in BATCH_SIZES:
        for kind in kinds:
            assert reloaded[f"{kind}{n}"].dtype == np.float32
            np.testing.assert_allclose(reloaded[f"{kind}{n}"], expected[:n], rtol=1e-5, atol=1e-5)


def test_the_spec_says_what_the_export_expects(run, exported):
    spec = json.loads((exported / "model.json").read_text())
    assert spec["input"]["shape"] == [None, 28, 28, 1] and spec["input"]["dtype"] == "uint8"
    assert spec["output"]["shape"] == [None, 10] and spec["class_names"] == list(FASHION_MNIST_CLASSES)
    assert (spec["normalize"], spec["image_size"], spec["model"]) == ("none", 28, "lenet_bn")
    assert spec["files"] == {"jax_export": "model.jax", **(
        {"saved_model": "saved_model"} if (exported / "saved_model").is_dir() else {})}
    assert spec["step"] == json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]


def test_an_earlier_export_is_never_replaced(run, exported, capsys):
    before = (exported / "model.jax").read_bytes()
    assert export.main(["--workdir", str(run), "--out", str(exported)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds an export (model.jax, model.json)" in err
    assert (exported / "model.jax").read_bytes() == before


def test_saved_model_without_tensorflow_is_one_line_and_writes_nothing(run, tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow now fails
    out = tmp_path / "export"
    assert export.main(["--workdir", str(run), "--out", str(out), "--format", "saved_model"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs TensorFlow, which is not installed here" in err
    assert not out.exists()


def test_a_folder_that_is_not_a_run_is_one_line(tmp_path, capsys):
    assert export.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no config.json, so it is not a flaxcnn run" in err


def test_the_books_reload_example_runs(exported):
    text = (Path(REPO) / "docs" / "predict-export.md").read_text()
    (example,) = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S)
                  if "deserialize" in b]
    namespace = {}
    exec(example.replace("runs/lenet-export", str(exported)), namespace)  # pylint: disable=exec-used
    assert namespace["logits"].shape == (2, 10)
