"""Predictions on image files: `python -m flaxcnn.predict --workdir RUN image.jpg [more.png ...]`.

Each file gets the run's top-5 classes with their probabilities (`--json` for machines). A file
goes through what the run's own test images went through: decoded with Pillow (grey, RGB, RGBA,
palette; the alpha channel is dropped, as torchvision's ImageFolder does) into the run's channels,
scaled to cover the run's stored image shape and center-cropped to it (Fashion-MNIST: 28x28; a
folder dataset: its stored size), then the run's eval transform and normalization
(`flaxcnn.runs.eval_logits`).

A file that cannot be read (missing, not an image, truncated) gets one `error:` line and the other
files are still predicted; the exit code is then 1, so a script notices. A workdir that is not a
run or has no checkpoint is one line and exit code 1 before any file is read.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from flaxcnn.datasets import folder
from flaxcnn.errors import UserError, error_line, first_line
from flaxcnn.runs import eval_logits, load_run

BATCH = 64  # files per compiled call


def read_image(path, shape: tuple[int, int, int]) -> np.ndarray:
    """The image file at `path` as uint8 `shape` (H, W, C with C 1 or 3), fitted as the folder
    reader stores its images (flaxcnn.datasets.folder.fit_image: covers H x W, centre crop).
    UserError naming the file if it cannot be read."""
    height, width, channels = shape
    try:
        return folder.decode_file(path, height, width, channels)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read {path} as an image ({first_line(e)}); pass a JPEG or PNG "
                        "file") from None


def predict(loaded, paths, *, top: int = 5) -> list[dict]:
    """For each of `paths` in order: {"file", "predictions": [{"class", "index", "probability"},
    ...]} with the `top` most probable classes, or {"file", "error"} if it cannot be read.
    `loaded` is what `flaxcnn.load_run` returns."""
    model, variables, info = loaded
    probabilities = jax.jit(lambda v, x: jax.nn.softmax(eval_logits(model, v, info, x)))
    results, images = [], {}
    for path in paths:
        try:
            images[len(results)] = read_image(path, info.input_shape)
            results.append({"file": str(path)})
        except UserError as e:
            results.append({"file": str(path), "error": str(e)})
    order = list(images)
    for start in range(0, len(order), BATCH):
        chunk = order[start:start + BATCH]
        batch = np.stack([images[i] for i in chunk])
        size = min(BATCH, len(order))  # one compiled shape: the last chunk is padded
        padded = np.concatenate([batch, np.zeros((size - len(chunk), *batch.shape[1:]), np.uint8)])
        for i, row in zip(chunk, np.asarray(probabilities(variables, padded))):
            best = np.argsort(-row, kind="stable")[:top]
            results[i]["predictions"] = [
                {"class": info.class_names[k], "index": int(k), "probability": float(row[k])}
                for k in best]
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flaxcnn.predict",
        description="The top classes of a trained run for image files (JPEG, PNG).")
    parser.add_argument("files", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--workdir", required=True, metavar="RUN", help="a train.py --workdir")
    parser.add_argument("--top", type=int, default=5, help="classes per file (default 5)")
    parser.add_argument("--json", action="store_true", help="one JSON list on stdout")
    args = parser.parse_args(argv)
    try:
        if args.top < 1:
            raise UserError(f"--top must be at least 1, got {args.top}")
        results = predict(load_run(args.workdir), [Path(f) for f in args.files], top=args.top)
    except UserError as e:
        print(error_line(e), file=sys.stderr)
        return 1
    for result in results:
        if "error" in result:
            print(f"error: {result['error']}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in (r for r in results if "predictions" in r):
            print(result["file"])
            for p in result["predictions"]:
                print(f"  {p['probability']:6.3f}  {p['class']}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
