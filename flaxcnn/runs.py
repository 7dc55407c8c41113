"""A finished run, loaded for use: `load_run(workdir) -> (model, variables, info)`.

Predictions on files (`flaxcnn.predict`) and the exported forward function (`flaxcnn.export`) both
start from a run's workdir, so what they share lives here rather than in either of them: reading
config.json and run_info.json, building the model as the run built it, restoring its parameters
and BatchNorm statistics from the newest readable checkpoint, and the run's evaluation transform
(`eval_logits`), the exact computation its test accuracy was measured with.

Loading never changes the workdir: a damaged newest checkpoint is reported and an older one used,
but nothing is moved (train.py sets damaged checkpoints aside when it resumes). No TensorFlow.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from flaxcnn import augment, models, tree_compare
from flaxcnn.errors import UserError, first_line, warn


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What a loaded run expects of its input and what its outputs mean.

    `stored_shape` is the (H, W, C) of the images the run's evaluation received before its eval
    transform (Fashion-MNIST: 28x28x1; a folder dataset: its stored size), None where they came in
    any size and were resized straight to `image_size` (streamed datasets, and runs written before
    run_info.json recorded it). `augment` and `normalize` name the eval transform.
    """
    workdir: Path
    config: dict
    class_names: tuple[str, ...]
    image_size: int
    channels: int
    stored_shape: tuple[int, int, int] | None
    normalize: str
    augment: str
    dtype: str
    step: int  # the training step of the restored checkpoint

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the uint8 images `eval_logits` takes."""
        return self.stored_shape or (self.image_size, self.image_size, self.channels)


def load_run(workdir) -> tuple[nn.Module, dict, RunInfo]:
    """The model of the run in `workdir`, its variables ({"params", "batch_stats"}) from the newest
    checkpoint that reads, and its RunInfo. UserError (one line) for a folder that is not a run, a
    run without a complete checkpoint, or checkpoints that no longer fit the model's code."""
    workdir = Path(workdir)
    config, run_info = _read_json(workdir, "config.json"), _read_json(workdir, "run_info.json")
    try:
        model = models.create(config["model"], num_classes=run_info["num_classes"],
                              dtype=getattr(jnp, config["dtype"]), **config["model_overrides"])
        recorded = run_info.get("input", {})
        stored = recorded.get("stored_shape")
        info = RunInfo(workdir=workdir, config=config, class_names=tuple(run_info["class_names"]),
                       image_size=config["image_size"], channels=run_info["channels"],
                       stored_shape=tuple(stored) if stored else None,
                       normalize=recorded.get("normalize", "none"),
                       augment=recorded.get("augment", "none"), dtype=config["dtype"], step=-1)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # another version's files
        raise UserError(f"{workdir} holds a run this flaxcnn cannot build "
                        f"({first_line(e, with_type=True)}); use the flaxcnn that trained it") from None
    shape = (1, info.image_size, info.image_size, info.channels)
    target = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape),
                                               train=False))
    step, variables = _restore_newest(workdir / "checkpoints", target)
    return model, variables, dataclasses.replace(info, step=step)


def eval_logits(model: nn.Module, variables: dict, info: RunInfo, images) -> jax.Array:
    """float32 logits of uint8 images (N, *info.input_shape): the run's eval transform, then its
    model in evaluation mode (BatchNorm's running statistics), as its evaluation computed them."""
    x = _eval_images(images, info)
    return model.apply(variables, x, train=False).astype(jnp.float32)


def _eval_images(images, info: RunInfo) -> jax.Array:
    return augment.eval_images(images, image_size=info.image_size, augment=info.augment,
                               normalize=info.normalize, dtype=getattr(jnp, info.dtype))


def _read_json(workdir: Path, name: str) -> dict:
    path = workdir / name
    if not path.is_file():
        what = "does not exist" if not workdir.exists() else f"has no {name}"
        raise UserError(f"{workdir} {what}, so it is not a flaxcnn run: pass the --workdir of a "
                        "train.py run")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({first_line(e)}): pass the --workdir of a "
                        "train.py run") from None


def _restore_newest(directory: Path, target: Any) -> tuple[int, dict]:
    """(step, {"params", "batch_stats"}) of the newest checkpoint in `directory` that reads;
    damaged ones are reported and skipped, never moved (this is read-only)."""
    if not directory.is_dir() or not any(p.name.isdigit() for p in directory.iterdir()):
        raise UserError(f"{directory.parent} has no complete checkpoint yet: train it first "
                        f"(train.py --workdir {directory.parent}) or pass another --workdir")
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # Orbax warns that a read-only manager is read-only
    try:
        manager = ocp.CheckpointManager(directory.absolute(), options=ocp.CheckpointManagerOptions(
            read_only=True, create=False, save_interval_steps=0))
    finally:
        absl.setLevel(level)
    try:
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                state = manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore()))["state"]
            except Exception as e:  # pylint: disable=broad-except  # any failure: unusable
                warn(f"checkpoint {directory / str(step)} cannot be read ({first_line(e)}); "
                     "trying an older one")
                continue
            variables = {"params": state["params"]}
            if state.get("batch_stats"):  # empty for a network without BatchNorm
                variables["batch_stats"] = state["batch_stats"]
            difference = tree_compare.first_difference(variables, target)
            if difference is not None:
                raise UserError(f"checkpoint {directory / str(step)} does not fit the model as "
                                f"the code builds it now: {difference}; use the code that "
                                "trained it")
            return int(step), variables
    finally:
        manager.close()
    raise UserError(f"no checkpoint in {directory} can be read (see the warnings above); train "
                    "the run again in a new --workdir")
