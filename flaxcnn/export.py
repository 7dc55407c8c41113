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
so in one line where it is missing. An export never replaces files of an earlier one.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from flaxcnn.errors import UserError, error_line, first_line
from flaxcnn.runs import eval_logits, load_run

FORMATS = ("jax", "saved_model")
PLATFORMS = ("cpu", "cuda", "tpu")
ARTIFACT, SPEC, SAVED_MODEL = "model.jax", "model.json", "saved_model"


def export(workdir, out, *, format: str = "jax") -> list[Path]:  # pylint: disable=redefined-builtin
    """Exports the run in `workdir` into the folder `out`; returns the paths written."""
    if format not in FORMATS:
        raise UserError(f"unknown --format {format!r}; use one of: {', '.join(FORMATS)}")
    tf = _tensorflow() if format == "saved_model" else None  # before any work: it may be missing
    out = Path(out)
    names = (ARTIFACT, SPEC) + ((SAVED_MODEL,) if tf else ())
    existing = [name for name in names if (out / name).exists()]
    if existing:
        raise UserError(f"{out} already holds an export ({', '.join(existing)}); pass a new "
                        "--out or delete those first")
    model, variables, info = load_run(workdir)

    def forward(images):
        return eval_logits(model, variables, info, images)

    height, width, channels = info.input_shape
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"b, {height}, {width}, {channels}"),
                                jnp.uint8)
    exported = jax.export.export(jax.jit(forward), platforms=PLATFORMS)(spec)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with _checked_saved_model(tf, forward, info.input_shape, out / SAVED_MODEL) as commit:
            _write_atomically(out / ARTIFACT, bytes(exported.serialize()))
            commit()
        _write_atomically(out / SPEC, (json.dumps(_spec(info, names), indent=2) + "\n").encode())
    except OSError as e:
        raise UserError(f"cannot write the export into {out} ({e.strerror or e}); free some "
                        "space or pass another --out") from None
    return [out / name for name in names]


def _spec(info, names) -> dict:
    height, width, channels = info.input_shape
    return {
        "files": {"jax_export": ARTIFACT, **({"saved_model": SAVED_MODEL}
                                             if SAVED_MODEL in names else {})},
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


def _tensorflow():
    try:
        from flaxcnn.datasets.tf_setup import tensorflow

        return tensorflow()
    except ImportError:
        raise UserError("--format saved_model needs TensorFlow, which is not installed here: "
                        "pip install tensorflow-cpu, or export without --format (the jax.export "
                        "artifact needs no TensorFlow)") from None


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
        description="Export a trained run's forward function (jax.export; TF SavedModel).")
    parser.add_argument("--workdir", required=True, metavar="RUN", help="a train.py --workdir")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the export")
    parser.add_argument("--format", default="jax", choices=FORMATS,
                        help="jax: model.jax only; saved_model: also a TF SavedModel")
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
