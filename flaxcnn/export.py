"""A trained run's forward function, exported: `python -m flaxcnn.export --workdir RUN --out DIR`.

DIR gets `model.jax`, a serialized `jax.export` artifact (StableHLO with the parameters baked in)
that needs neither flaxcnn nor the run's workdir to compute, and `model.json`, what it expects.
The artifact takes uint8 images (N, H, W, C) at the run's stored image shape, N any batch size,
and returns float32 logits (N, classes): it contains the run's eval transform and normalization,
so a caller only decodes a file and fits it to H x W (`flaxcnn.predict.read_image` does that).
uint8 in keeps the caller from having to know the normalization; the cost is that the caller
must resize to the stored shape. It is lowered for CPU, CUDA and TPU, so one file runs on any of
them (`jax.export.deserialize(data).call(images)`).

`--format saved_model` also writes `saved_model/`, a TensorFlow SavedModel of the same function
(jax2tf, native serialization) with the signature `serve(images)`; it needs TensorFlow, and says
so in one line where it is missing.

`--format onnx` also writes `model.onnx`, the same function for ONNX Runtime and other ONNX
runtimes (input "images", output "logits"), converted by jax2onnx (`pip install
"flaxcnn[onnx]"`). jax2onnx, not the SavedModel through tf2onnx: jax2tf now serializes natively only,
so a SavedModel holds one XlaCallModule op, which tf2onnx cannot convert. jax2onnx is given the
forward function's jaxpr (lax primitives: convolutions with groups, reduce_window max and sum,
the resize's weights as constants) rather than the Python function, because it replaces Flax's
and jax.image's functions with its own while it traces, and those do not take symbolic batch
sizes or explicit pooling pads. Its lowering of a 4-D max pooling is an ONNX MaxPool with four
spatial axes, which ONNX Runtime does not run; `_two_d_max_pools` rewrites each into the 2-D
MaxPool on NCHW it is. Like the SavedModel, the ONNX file is run by a fresh process (onnxruntime)
at two batch sizes and kept only if its logits are model.jax's.

`--format torch` writes `model.safetensors` instead: the run's variables as the state_dict of the
model's PyTorch layout (flaxcnn.pretrained: torchvision's names for the tv_ ResNets, ResNet-50,
ResNeXt-50, Inception-v3 and the VGGs, d2l's nn.Sequential names for the chapter's own networks),
which `load_state_dict(..., strict=True)` takes and which `--config.init_from` reads back bit for
bit. No torch is needed to write it; a model without a PyTorch layout is one line. The BatchNorm
statistics are written as the run stored them (model.json says so).
An export never replaces files of an earlier one.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from flaxcnn import augment
from flaxcnn.errors import UserError, error_line, first_line
from flaxcnn.runs import eval_logits, load_run

FORMATS = ("jax", "saved_model", "onnx", "torch")
PLATFORMS = ("cpu", "cuda", "tpu")
ARTIFACT, SPEC, SAVED_MODEL = "model.jax", "model.json", "saved_model"
ONNX, STATE_DICT = "model.onnx", "model.safetensors"
FILES = {"jax": (ARTIFACT, SPEC), "saved_model": (ARTIFACT, SPEC, SAVED_MODEL),
         "onnx": (ARTIFACT, ONNX, SPEC), "torch": (STATE_DICT, SPEC)}


def export(workdir, out, *, format: str = "jax") -> list[Path]:  # pylint: disable=redefined-builtin
    """Exports the run in `workdir` into the folder `out`; returns the paths written."""
    if format not in FORMATS:
        raise UserError(f"unknown --format {format!r}; use one of: {', '.join(FORMATS)}")
    tf = _tensorflow() if format == "saved_model" else None  # before any work: it may be missing
    if format == "onnx":
        _check_onnx_tools()
    out = Path(out)
    names = FILES[format]
    existing = [name for name in names if (out / name).exists()]
    if existing:
        raise UserError(f"{out} already holds an export ({', '.join(existing)}); pass a new "
                        "--out or delete those first")
    model, variables, info = load_run(workdir)
    if format == "torch":
        return _export_torch(model, variables, info, out)

    def forward(images):
        return eval_logits(model, variables, info, images)

    height, width, channels = info.input_shape
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"b, {height}, {width}, {channels}"),
                                jnp.uint8)
    exported = jax.export.export(jax.jit(forward), platforms=PLATFORMS)(spec)
    onnx_model = _checked_onnx(forward, exported, info.input_shape) if format == "onnx" else None
    try:
        out.mkdir(parents=True, exist_ok=True)
        with _checked_saved_model(tf, forward, info.input_shape, out / SAVED_MODEL) as commit:
            _write_atomically(out / ARTIFACT, bytes(exported.serialize()))
            commit()
        if onnx_model is not None:
            _write_atomically(out / ONNX, onnx_model)
        _write_atomically(out / SPEC, (json.dumps(_spec(info, names), indent=2) + "\n").encode())
    except OSError as e:
        raise UserError(f"cannot write the export into {out} ({e.strerror or e}); free some "
                        "space or pass another --out") from None
    return [out / name for name in names]


def _spec(info, names) -> dict:
    height, width, channels = info.input_shape
    files = {"jax_export": ARTIFACT, "saved_model": SAVED_MODEL, "onnx": ONNX}
    return {
        "files": {kind: name for kind, name in files.items() if name in names},
        "input": {"shape": [None, height, width, channels], "dtype": "uint8", "layout": "NHWC",
                  "how": "decode the image into the channels, resize it to cover height x width "
                         "and center-crop it (flaxcnn.predict.read_image); the artifact does "
                         "the rest"},
        "output": {"shape": [None, len(info.class_names)], "dtype": "float32",
                   "meaning": "logits; softmax gives the class probabilities"},
        "class_names": list(info.class_names), "image_size": info.image_size,
        "channels": channels, "normalize": info.normalize, "augment": info.augment,
        "platforms": list(PLATFORMS), "model": info.config["model"],
        "run": str(info.workdir), "step": info.step,
    }


def _export_torch(model, variables, info, out: Path) -> list[Path]:
    """model.safetensors (the state_dict of the model's PyTorch layout) and model.json."""
    from safetensors.numpy import save

    from flaxcnn import pretrained

    name = info.config["model"]
    if name not in pretrained.layouts() + pretrained.d2l_layouts():
        raise UserError(f"model {name!r} has no PyTorch layout, so --format torch cannot write it; "
                        f"models with one: {', '.join(pretrained.layouts() + pretrained.d2l_layouts())}"
                        "; export it with --format onnx or jax instead")
    state = pretrained.state_dict(name, variables, batches_tracked=info.step)
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_atomically(out / STATE_DICT, save(state, metadata={"format": "pt"}))
        _write_atomically(out / SPEC, (json.dumps(_torch_spec(model, variables, info, state),
                                                  indent=2) + "\n").encode())
    except OSError as e:
        raise UserError(f"cannot write the export into {out} ({e.strerror or e}); free some "
                        "space or pass another --out") from None
    return [out / STATE_DICT, out / SPEC]


def _torch_network(model, variables, info) -> str:
    """The PyTorch code that builds the network the state_dict fits."""
    from flaxcnn import pretrained
    from flaxcnn.pretrained.readers import TORCHVISION_WEIGHTS

    name, classes = info.config["model"], len(info.class_names)
    if name in pretrained.d2l_layouts():
        return (f"d2l's PyTorch net for {name} (d2l-zh 2.0, chapter 7; RegNetX-32: d2l 1.0, 8.8) "
                f"with {classes} outputs and {info.channels} input channel(s)")
    builder = next(b for b, (_, flax_name) in TORCHVISION_WEIGHTS.items() if flax_name == name)
    arguments = f"num_classes={classes}"
    if name == "inception_v3":
        arguments += (f", aux_logits={'AuxLogits' in variables['params']}, transform_input="
                      f"{bool(getattr(model, 'transform_input', False))}, init_weights=False")
    first = "" if info.channels == 3 else (
        f" with its first convolution taking {info.channels} channels instead of 3")
    return f"torchvision.models.{builder}({arguments}){first}"


def _torch_spec(model, variables, info, state) -> dict:
    mean_std = ({"mean": list(augment.IMAGENET_MEAN), "std": list(augment.IMAGENET_STD)}
                if info.normalize == "imagenet" else {})
    return {
        "files": {"torch_state_dict": STATE_DICT},
        "network": _torch_network(model, variables, info),
        "load": "net.load_state_dict(safetensors.torch.load_file('model.safetensors'), "
                "strict=True); net.eval()" + (
                    "; d2l's from-scratch BatchNorm keeps moving_mean and moving_var as plain "
                    "attributes, not state: pop those entries first and assign them to the layers"
                    if any(key.endswith(".moving_mean") for key in state) else ""),
        "batch_norm": "running_mean and running_var are the statistics the run stored, written as "
                      "they are; num_batches_tracked is the run's step",
        "input": {"shape": [None, info.channels, info.image_size, info.image_size],
                  "dtype": "float32", "layout": "NCHW",
                  "how": f"pixels / 255, fitted to {info.image_size}x{info.image_size} as the run's "
                         f"evaluation did (augment {info.augment!r}), then normalized "
                         f"({info.normalize!r}{': (x - mean) / std' if mean_std else ''})",
                  **mean_std},
        "output": {"shape": [None, len(info.class_names)], "dtype": "float32",
                   "meaning": "logits; softmax gives the class probabilities"},
        "class_names": list(info.class_names), "image_size": info.image_size,
        "channels": info.channels, "normalize": info.normalize, "augment": info.augment,
        "model": info.config["model"], "tensors": len(state),
        "run": str(info.workdir), "step": info.step,
    }


def _check_onnx_tools():
    missing = [name for name in ("jax2onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"--format onnx needs {' and '.join(missing)}, which "
                        f"{'is' if len(missing) == 1 else 'are'} not installed here: pip install "
                        "\"flaxcnn[onnx]\", or export without --format (model.jax needs only jax)")


SERVE_ONNX = """
import sys
import numpy as np
import onnxruntime
folder = sys.argv[1]
session = onnxruntime.InferenceSession(folder + "/model.onnx", providers=["CPUExecutionProvider"])
probe = np.load(folder + "/probe.npy")
np.save(folder + "/served.npy", np.concatenate([session.run(None, {"images": part})[0]
                                                for part in (probe[:1], probe[1:])]))
"""


def _checked_onnx(forward, exported, input_shape) -> bytes:
    """model.onnx of `forward` (jax2onnx, from its jaxpr), run on a probe by onnxruntime in a
    fresh process, at batch sizes 1 and 2, and checked to give model.jax's logits."""
    import tempfile
    from importlib.metadata import version

    from jax2onnx import to_onnx

    height, width, channels = input_shape
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"b, {height}, {width}, {channels}"),
                                jnp.uint8)
    with jax.disable_jit():  # jit calls inlined: jax2onnx 0.12's jit lowering fails on jax 0.12
        jaxpr = jax.make_jaxpr(forward)(spec)
    try:
        with _quiet_converter():
            model = to_onnx(lambda images: jax.extend.core.jaxpr_as_fun(jaxpr)(images)[0], [spec],
                            model_name="flaxcnn", input_names=["images"], output_names=["logits"])
    except Exception as e:  # pylint: disable=broad-except  # any converter failure is one line
        raise UserError(f"jax2onnx {version('jax2onnx')} cannot convert this model on jax "
                        f"{jax.__version__} ({first_line(e, with_type=True)}); export without "
                        "--format (model.jax needs only jax)") from None
    _two_d_max_pools(model)
    data = model.SerializeToString()
    probe = np.random.default_rng(0).integers(0, 256, (3, *input_shape), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, ONNX).write_bytes(data)
        np.save(Path(folder, "probe.npy"), probe)
        done = subprocess.run([sys.executable, "-c", SERVE_ONNX, folder], capture_output=True,
                              text=True)
        if done.returncode:
            reason = (done.stderr.strip().splitlines() or ["it exited with an error"])[-1]
            raise UserError(f"ONNX Runtime cannot run the model.onnx jax2onnx wrote "
                            f"({reason[:200]}); export without --format (model.jax needs only jax)")
        served = np.load(Path(folder, "served.npy"))
    expected = np.asarray(exported.call(probe))
    if served.shape != expected.shape or not np.allclose(
            served, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()):
        difference = np.abs(served - expected).max() if served.shape == expected.shape else "shape"
        raise UserError(f"the ONNX model's logits differ from model.jax's (by up to {difference:.3g}); "
                        "export without --format (model.jax needs only jax)")
    return data


@contextlib.contextmanager
def _quiet_converter():
    """jax2onnx and onnx_ir log (and jax2onnx 0.12 prints) what they skip or cannot annotate, and
    jax2onnx 0.12 cannot import its dm_pix plugin on jax 0.10, which nothing here uses; the file
    is judged by running it instead."""
    loggers = [logging.getLogger(name) for name in ("jax2onnx", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _two_d_max_pools(model) -> None:
    """Rewrites, in place, each MaxPool that jax2onnx made of a max pooling over H and W of an
    NHWC array (Unsqueeze twice, a 4-D kernel (1, kh, kw, 1)) into Squeeze, Transpose to NCHW,
    the 2-D MaxPool, Transpose back and Unsqueeze."""
    from onnx import helper, numpy_helper

    graph = model.graph
    axes = "flaxcnn_axes_0_1"
    nodes = []
    for node in graph.node:
        attributes = {a.name: list(a.ints) for a in node.attribute}
        kernel = attributes.get("kernel_shape", [])
        strides = attributes.get("strides", [1] * len(kernel))
        pads = attributes.get("pads", [0] * 2 * len(kernel))
        if (node.op_type != "MaxPool" or len(kernel) != 4 or kernel[0] != 1 or kernel[3] != 1
                or strides[0] != 1 or strides[3] != 1 or any(pads[i] for i in (0, 3, 4, 7))
                or "dilations" in attributes):
            nodes.append(node)
            continue
        name = node.name or node.output[0]
        inner = [f"{name}_nhwc", f"{name}_nchw", f"{name}_pooled", f"{name}_pooled_nhwc"]
        nodes += [
            helper.make_node("Squeeze", [node.input[0], axes], [inner[0]]),
            helper.make_node("Transpose", [inner[0]], [inner[1]], perm=[0, 3, 1, 2]),
            helper.make_node("MaxPool", [inner[1]], [inner[2]], kernel_shape=kernel[1:3],
                             strides=strides[1:3], pads=[pads[1], pads[2], pads[5], pads[6]]),
            helper.make_node("Transpose", [inner[2]], [inner[3]], perm=[0, 2, 3, 1]),
            helper.make_node("Unsqueeze", [inner[3], axes], list(node.output[:1])),
        ]
    if len(nodes) != len(graph.node):
        graph.initializer.append(numpy_helper.from_array(np.array([0, 1], np.int64), axes))
        del graph.node[:]
        graph.node.extend(nodes)


def _tensorflow():
    missing = UserError("--format saved_model needs TensorFlow, which is not installed here: "
                        "pip install tensorflow-cpu, or export without --format (the jax.export "
                        "artifact needs no TensorFlow)")
    # asked before tf_setup imports tfds, which without TensorFlow imports only in part
    if importlib.util.find_spec("tensorflow") is None:
        raise missing
    try:
        from flaxcnn.datasets.tf_setup import tensorflow

        return tensorflow()
    except ImportError:
        raise missing from None


SERVE_ELSEWHERE = """
import sys
import numpy as np
import tensorflow as tf
folder = sys.argv[1]
np.save(folder + "/served.npy", tf.saved_model.load(folder).serve(np.load(folder + "/probe.npy")).numpy())
"""


def _served_elsewhere(tf, folder: Path) -> np.ndarray:
    """The SavedModel in `folder` run on its probe.npy by a fresh Python process, as a user's
    would load it; UserError (one line) if that TensorFlow cannot run it."""
    done = subprocess.run([sys.executable, "-c", SERVE_ELSEWHERE, str(folder)],
                          capture_output=True, text=True,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))  # TF leaves GPUs alone
    if done.returncode:
        reason = next((line.strip() for line in done.stderr.splitlines()
                       if "deserialize" in line or "StableHLO" in line),
                      (done.stderr.strip().splitlines() or ["it exited with an error"])[-1])
        raise UserError(f"TensorFlow {tf.__version__} cannot run the SavedModel that jax "
                        f"{jax.__version__} writes ({reason[:160]}); use a TensorFlow as new as "
                        "this jax, or export without --format (model.jax needs only jax)")
    served = np.load(folder / "served.npy")
    (folder / "served.npy").unlink()
    return served


@contextlib.contextmanager
def _checked_saved_model(tf, forward, input_shape, path: Path):
    """With TensorFlow (`tf` not None): the SavedModel of `forward` with `serve(images)`, written
    beside `path`, loaded back by a fresh process and checked to give forward's logits, then
    yields `commit`, which
    renames it to `path`. A TensorFlow that cannot run what this jax wrote (its StableHLO too
    old) is one line, and nothing is left behind. Without TensorFlow `commit` does nothing."""
    if tf is None:
        yield lambda: None
        return
    from jax.experimental import jax2tf

    height, width, channels = input_shape
    converted = jax2tf.convert(forward, polymorphic_shapes=[f"(b, {height}, {width}, {channels})"],
                               native_serialization_platforms=PLATFORMS, with_gradient=False)
    module = tf.Module()
    module.serve = tf.function(converted, autograph=False, input_signature=[
        tf.TensorSpec((None, height, width, channels), tf.uint8, name="images")])
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tf.saved_model.save(module, str(temporary))
        probe = np.random.default_rng(0).integers(0, 256, (2, *input_shape), dtype=np.uint8)
        np.save(temporary / "probe.npy", probe)
        served = _served_elsewhere(tf, temporary)  # this process's TF would reuse its own trace
        expected = np.asarray(forward(probe))
        if not np.allclose(served, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max()):
            raise UserError(f"the SavedModel's logits differ from the run's (by up to "
                            f"{np.abs(served - expected).max():.3g}); export without --format")
        (temporary / "probe.npy").unlink()
        yield lambda: os.replace(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _write_atomically(path: Path, data: bytes):
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flaxcnn.export",
        description="Export a trained run: its forward function (jax.export, TF SavedModel, "
                    "ONNX) or its weights as a PyTorch state_dict.")
    parser.add_argument("--workdir", required=True, metavar="RUN", help="a train.py --workdir")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the export")
    parser.add_argument("--format", default="jax", choices=FORMATS,
                        help="jax: model.jax only; saved_model: also a TF SavedModel; onnx: also "
                             "model.onnx; torch: model.safetensors (a PyTorch state_dict) only")
    args = parser.parse_args(argv)
    try:
        paths = export(args.workdir, args.out, format=args.format)
    except UserError as e:
        print(error_line(e), file=sys.stderr)
        return 1
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
