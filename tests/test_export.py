"""`python -m flaxcnn.export`: the run's forward function, reloaded where flaxcnn is not; its
ONNX file in ONNX Runtime; its weights as a PyTorch state_dict, read back through
flaxcnn.pretrained (what --config.init_from does) for every layout, and equal to the torchvision
references (tests/fixtures/pretrained) where they came from them. None of it needs torch."""
import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file, save_file

import flaxcnn
from flaxcnn import export, models, pretrained
from flaxcnn.datasets import FASHION_MNIST_CLASSES
from flaxcnn.errors import UserError
from flaxcnn.pretrained import mappings
from flaxcnn.runs import eval_logits
from image_folders import make_folder, sample_images
from tests.conftest import REPO, config_of, sample_test_images, slow_for_larger_networks, train_to_end

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from pretrained_tensors import manifest, reference_input, reference_state  # noqa: E402

HAS_ONNX_TOOLS = all(importlib.util.find_spec(name) for name in ("jax2onnx", "onnxruntime"))

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
    """The run exported as python -m flaxcnn.export writes it by default: model.jax, model.json."""
    out = tmp_path_factory.mktemp("export") / "lenet"
    export.export(run, out)
    return out


@pytest.fixture(scope="module")
def saved_model_exported(run, tmp_path_factory):
    """The run exported with its SavedModel, or without it where this TensorFlow cannot run what
    this jax writes (export says so: test_a_saved_model_is_written_where_tensorflow_runs_it)."""
    out = tmp_path_factory.mktemp("saved_model_export") / "lenet"
    try:
        export.export(run, out, format="saved_model")
    except UserError as e:
        assert "cannot run the SavedModel that jax" in str(e)
        assert not out.exists() or not any(out.iterdir())  # nothing left behind
        export.export(run, out)
    return out


@pytest.mark.slow
def test_a_saved_model_is_written_where_tensorflow_runs_it(saved_model_exported):
    """Where export wrote no SavedModel, TensorFlow really cannot run jax2tf's output here."""
    exported = saved_model_exported
    if (exported / "saved_model").is_dir():
        spec = json.loads((exported / "model.json").read_text())
        assert spec["files"] == {"jax_export": "model.jax", "saved_model": "saved_model"}
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


@pytest.mark.slow
def test_the_export_gives_load_runs_logits_in_a_fresh_process_at_any_batch_size(
        run, saved_model_exported, tmp_path):
    exported = saved_model_exported
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
    assert spec["files"] == {"jax_export": "model.jax"}
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


# --- ONNX ------------------------------------------------------------------------------------

SERVE_ONNX = """
import sys
import numpy as np
import onnxruntime
session = onnxruntime.InferenceSession(sys.argv[1] + "/model.onnx")
images = np.load(sys.argv[2])
np.savez(sys.argv[3], **{f"onnx{n}": session.run(["logits"], {"images": images[:n]})[0]
                         for n in %(sizes)r})
""" % {"sizes": BATCH_SIZES}


def onnx_and_jax_logits(folder, images, tmp_path):
    """model.onnx's logits (ONNX Runtime, a fresh process) and model.jax's, at every batch size."""
    np.save(tmp_path / "images.npy", images)
    done = subprocess.run([sys.executable, "-c", SERVE_ONNX, str(folder), str(tmp_path / "images.npy"),
                           str(tmp_path / "onnx.npz")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    served = np.load(tmp_path / "onnx.npz")
    exported = jax.export.deserialize((folder / "model.jax").read_bytes())
    return [(served[f"onnx{n}"], np.asarray(exported.call(images[:n]))) for n in BATCH_SIZES]


needs_onnx_tools = pytest.mark.skipif(not HAS_ONNX_TOOLS,
                                      reason="the onnx extra (jax2onnx, onnxruntime) is not installed")


@pytest.fixture(scope="module")
def onnx_exported(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "lenet"
    assert export.main(["--workdir", str(run), "--out", str(out), "--format", "onnx"]) == 0
    return out


@pytest.mark.slow
@needs_onnx_tools
def test_the_onnx_export_gives_model_jaxs_logits_in_onnxruntime_at_any_batch_size(onnx_exported,
                                                                                   tmp_path):
    spec = json.loads((onnx_exported / "model.json").read_text())
    assert spec["files"] == {"jax_export": "model.jax", "onnx": "model.onnx"}
    for served, expected in onnx_and_jax_logits(onnx_exported,
                                                sample_test_images()[0][:max(BATCH_SIZES)], tmp_path):
        assert served.dtype == np.float32 and served.shape == expected.shape
        np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@needs_onnx_tools
def test_the_books_onnx_and_jax_examples_run(onnx_exported):
    text = (Path(REPO) / "docs" / "use-elsewhere.md").read_text()
    examples = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S)
                if "onnxruntime" in b or "deserialize" in b]
    assert len(examples) == 2
    for example in examples:
        namespace = {}
        exec(example.replace("runs/lenet-onnx", str(onnx_exported)), namespace)  # pylint: disable=exec-used
        assert namespace["logits"].shape == (2, 10) and namespace["logits"].dtype == np.float32


@pytest.mark.parametrize("missing", ["jax2onnx", "onnxruntime"])
def test_onnx_without_its_tools_is_one_line_and_writes_nothing(run, tmp_path, capsys, monkeypatch,
                                                               missing):
    monkeypatch.setitem(sys.modules, missing, None)  # find_spec and import now fail
    out = tmp_path / "export"
    assert export.main(["--workdir", str(run), "--out", str(out), "--format", "onnx"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--format onnx needs {missing}, which is not installed" in err
    assert 'pip install "flaxcnn[onnx]"' in err and not out.exists()


@needs_onnx_tools
def test_a_model_jax2onnx_cannot_convert_is_one_line_and_writes_nothing(run, tmp_path, capsys,
                                                                       monkeypatch):
    import jax2onnx

    def unsupported(*args, **kwargs):
        raise NotImplementedError("[converter] No plugins registered for primitive 'reduce_precision'")

    monkeypatch.setattr(jax2onnx, "to_onnx", unsupported)
    out = tmp_path / "export"
    assert export.main(["--workdir", str(run), "--out", str(out), "--format", "onnx"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot convert this model" in err
    assert "No plugins registered for primitive 'reduce_precision'" in err and not out.exists()


@needs_onnx_tools
def test_jax2onnxs_four_d_max_pools_become_two_d_ones():
    """jax2onnx's 4-D MaxPool (kernel (1, kh, kw, 1) over N, H, W, C) becomes the 2-D one on NCHW,
    with the same padding and strides, and nothing else changes."""
    from onnx import helper, numpy_helper

    node = helper.make_node("MaxPool", ["x6"], ["y6"], kernel_shape=[1, 3, 3, 1],
                            strides=[1, 2, 2, 1], pads=[0, 1, 1, 0, 0, 1, 1, 0])
    other = helper.make_node("MaxPool", ["a"], ["b"], kernel_shape=[2, 2])
    graph = helper.make_graph([node, other], "g", [], [])
    model = helper.make_model(graph)
    export._two_d_max_pools(model)
    kinds = [n.op_type for n in model.graph.node]
    assert kinds == ["Squeeze", "Transpose", "MaxPool", "Transpose", "Unsqueeze", "MaxPool"]
    pool = {a.name: list(a.ints) for a in model.graph.node[2].attribute}
    assert pool == {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    assert model.graph.node[4].output == ["y6"] and model.graph.node[5] == other
    assert numpy_helper.to_array(model.graph.initializer[0]).tolist() == [0, 1]


# --- PyTorch state_dicts ---------------------------------------------------------------------


def flat(variables):
    return {key: np.asarray(value) for key, value in traverse_util.flatten_dict(variables).items()}


def assert_same_bits(a, b):
    a, b = flat(a), flat(b)
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype == np.float32, key
        np.testing.assert_array_equal(a[key], b[key], err_msg="/".join(key))


def test_a_torch_export_reads_back_bit_for_bit_through_init_from(run, tmp_path):
    """lenet_bn (d2l's layout): the export is d2l's nn.Sequential state_dict, and what
    --config.init_from makes of it (pretrained.load, then fit_to_task) is the run's variables."""
    out = tmp_path / "torch"
    assert export.main(["--workdir", str(run), "--out", str(out), "--format", "torch"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    state = load_file(str(out / "model.safetensors"))
    assert state["0.weight"].shape == (6, 1, 5, 5) and state["15.weight"].shape == (10, 84)
    model, variables, info = flaxcnn.load_run(run)
    assert state["1.num_batches_tracked"] == info.step
    loaded = pretrained.load("lenet_bn", str(out / "model.safetensors"))
    assert_same_bits(loaded, variables)
    assert_same_bits(pretrained.fit_to_task("lenet_bn", loaded, variables), variables)
    spec = json.loads((out / "model.json").read_text())
    assert spec["files"] == {"torch_state_dict": "model.safetensors"}
    assert spec["network"].startswith("d2l's PyTorch net for lenet_bn") and "10 outputs" in spec["network"]
    assert "written as they are" in spec["batch_norm"] and spec["step"] == info.step
    assert spec["input"]["shape"] == [None, 1, 28, 28] and spec["input"]["layout"] == "NCHW"


# Smaller images for the layouts whose dense layer sees the flattened final map (AlexNet 3x3,
# the VGGs 2x2 instead of 5x5 and 7x7): the same reordering, a tenth of the 0.1-0.5 GB of weights.
# The VGGs' first dense layer sees a 7 x 7 map (their layout's 224 pixels, which the mapping's
# column reordering assumes); an eighth of the channels keeps its weights small.
NARROWER = {name: {"width_divisor": 8} for name in ("vgg11", "vgg13", "vgg16", "vgg19")}


def fake_variables(name, channels, num_classes=7):
    """Variables of model `name` as pretrained.load builds it (its layout's image size and model
    fields), no two leaves alike and cheap to make."""
    layout = mappings.LAYOUTS[name]
    model = models.create(name, num_classes=num_classes, **layout.model_fields)
    image = jax.ShapeDtypeStruct((1, layout.image_size, layout.image_size, channels), jnp.float32)
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), image)
    values = np.random.default_rng(0).standard_normal(2**16 + 7).astype(np.float32)
    leaves, tree = jax.tree.flatten(abstract)
    return jax.tree.unflatten(tree, [np.resize(values, leaf.shape) + np.float32(index)
                                     for index, leaf in enumerate(leaves)])


@pytest.mark.parametrize("name", slow_for_larger_networks(mappings.LAYOUTS))
def test_every_layouts_state_dict_reads_back_bit_for_bit(name, tmp_path, monkeypatch):
    """Any variables of a model with a PyTorch layout: exported, read by pretrained.load, equal."""
    if name in NARROWER:
        monkeypatch.setitem(mappings.LAYOUTS, name, dataclasses.replace(
            mappings.LAYOUTS[name], model_fields=NARROWER[name]))
    d2l = name in pretrained.d2l_layouts()
    variables = fake_variables(name, channels=1 if d2l else 3)
    path = tmp_path / "model.safetensors"
    save_file(pretrained.state_dict(name, variables, batches_tracked=3), str(path))
    assert_same_bits(pretrained.load(name, str(path)), variables)


@pytest.mark.parametrize("name", slow_for_larger_networks(
    name for name in pretrained.layouts() if not name.startswith("vgg")))
def test_the_torchvision_references_export_to_themselves(name, tmp_path):
    """The committed references' tensors, loaded, export to the very tensors under torchvision's
    names (num_batches_tracked included), so torchvision computes its reference logits from the
    export; read back, the export gives them too. The VGGs' 120 M-value references take half a
    minute each to make and load: their mapping's inverse is the round trip above, and
    test_pretrained checks that loading them gives torchvision's logits."""
    reference = reference_state(name)
    path = tmp_path / "reference.safetensors"
    save_file(reference, str(path))
    exported = pretrained.state_dict(name, pretrained.load(name, str(path)), batches_tracked=7)
    assert sorted(exported) == sorted(key for key, _, _ in manifest(name)["state_dict"]
                                      if not key.startswith("AuxLogits."))
    for key, value in exported.items():
        assert value.dtype == reference[key].dtype
        np.testing.assert_array_equal(value, reference[key], err_msg=key)
    save_file(exported, str(tmp_path / "model.safetensors"))
    model = models.create(name, num_classes=1000, **pretrained.model_fields(name))
    images = reference_input(manifest(name)["image_size"]).transpose(0, 2, 3, 1)
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(
        pretrained.load(name, str(tmp_path / "model.safetensors")), images)
    expected = np.load(Path(__file__).parent / "fixtures" / "pretrained" / f"{name}_logits.npy")
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())


def test_a_model_without_a_pytorch_layout_is_one_line(run, tmp_path, capsys, monkeypatch):
    monkeypatch.delitem(mappings.LAYOUTS, "lenet_bn")  # as a registry model with no layout is
    out = tmp_path / "export"
    assert export.main(["--workdir", str(run), "--out", str(out), "--format", "torch"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model 'lenet_bn' has no PyTorch layout" in err
    assert "--format onnx or jax" in err and not out.exists()


@pytest.mark.parametrize("format", ["torch", "onnx"])
def test_a_folder_that_is_not_a_run_is_one_line_in_every_format(tmp_path, capsys, format):
    if format == "onnx" and not HAS_ONNX_TOOLS:
        pytest.skip("the onnx extra is not installed: its own one line comes first")
    out = tmp_path / "out"
    assert export.main(["--workdir", str(tmp_path), "--out", str(out), "--format", format]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no config.json, so it is not a flaxcnn run" in err
    assert not out.exists()


def test_an_earlier_torch_export_is_never_replaced(run, tmp_path, capsys):
    out = tmp_path / "torch"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"earlier")
    assert export.main(["--workdir", str(run), "--out", str(out), "--format", "torch"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds an export (model.safetensors)" in err
    assert (out / "model.safetensors").read_bytes() == b"earlier"


# --- the "done when": a ResNet-18 fine-tuned on an image folder, taken elsewhere ----------


@pytest.fixture(scope="module")
def finetuned(tfds_dir, tmp_path_factory):
    """configs/finetune.py (d2l 14.2) on an image folder at 32x32, from torchvision's layout (the
    reference tensors), every layer trained, so the BatchNorm statistics moved too."""
    base = tmp_path_factory.mktemp("finetune")
    pictures = make_folder(base / "pictures", sample_images())
    weights = base / "resnet18.safetensors"
    save_file(reference_state("tv_resnet18"), str(weights))
    workdir = base / "run"
    train_to_end(config_of("finetune", tfds_dir, **{
        "dataset": f"folder:{pictures}", "folder_store_size": 32, "image_size": 32,
        "batch_size": 8, "num_epochs": 1, "init_from": str(weights), "plots": False}), workdir)
    return workdir


@pytest.mark.slow
def test_a_finetuned_resnet18_exports_for_torchvision_and_onnx(finetuned, tmp_path):
    model, variables, info = flaxcnn.load_run(finetuned)
    assert not np.array_equal(variables["batch_stats"]["BatchNorm_0"]["mean"],
                              reference_state("tv_resnet18")["bn1.running_mean"])
    out = tmp_path / "torch"
    export.export(finetuned, out, format="torch")
    state = load_file(str(out / "model.safetensors"))
    names = [key for key, _, _ in manifest("tv_resnet18")["state_dict"]]
    assert sorted(state) == sorted(names) and state["fc.weight"].shape == (3, 512)
    assert json.loads((out / "model.json").read_text())["network"] == \
        "torchvision.models.resnet18(num_classes=3)"
    assert_same_bits(pretrained.load("tv_resnet18", str(out / "model.safetensors")), variables)
    if not HAS_ONNX_TOOLS:
        return
    export.export(finetuned, tmp_path / "onnx", format="onnx")
    shape = tuple(json.loads((tmp_path / "onnx" / "model.json").read_text())["input"]["shape"][1:])
    images = np.random.default_rng(1).integers(0, 256, (max(BATCH_SIZES), *shape), np.uint8)
    for served, expected in onnx_and_jax_logits(tmp_path / "onnx", images, tmp_path):
        np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
