"""Checkpoints with Orbax: saved asynchronously, resumed from the newest good one, never lost.

A checkpoint holds a host pytree (`state`: parameters, batch statistics, optimizer state, step, rng
keys, the running sums of a half-finished epoch) and a small JSON `meta` (epoch, step in the epoch,
the device count it was saved with). Nothing in it depends on the device count, so a checkpoint
saved on N devices restores on M.

Damage is expected (a killed save, a truncated copy): a checkpoint that fails to restore is moved
aside to `<workdir>/checkpoints-damaged/` with a warning, never deleted, and the next older one is
tried. Orbax itself only deletes the oldest checkpoint after a newer one is complete.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import orbax.checkpoint as ocp

from flaxcnn import cluster
from flaxcnn.errors import UserError

TMP_MARKER = ".orbax-checkpoint-tmp"
# Changing one of these on resume would silently make it a different experiment.
FIXED_ON_RESUME = ("model", "model_overrides", "dataset", "idx_dir", "image_size", "batch_size",
                   "seed")


def warn(message: str):
    print(f"warning: {message}", file=sys.stderr, flush=True)


class Checkpoints:
    """The `<workdir>/checkpoints` folder of one run."""

    def __init__(self, workdir: str | os.PathLike, *, max_to_keep: int = 3):
        self.directory = Path(workdir).absolute() / "checkpoints"
        self.damaged_directory = Path(workdir).absolute() / "checkpoints-damaged"
        self._manager = None
        self._max_to_keep = max_to_keep

    @property
    def manager(self) -> ocp.CheckpointManager:
        if self._manager is None:
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep,
                                                     enable_async_checkpointing=True))
        return self._manager

    def exists(self) -> bool:
        """Whether the folder holds a finished checkpoint (a folder named by its step; an
        interrupted save leaves a temporary folder instead, which does not count)."""
        return self.directory.is_dir() and any(p.name.isdigit() for p in self.directory.iterdir())

    def unfinished(self) -> list[Path]:
        """Temporary folders of saves that never finished (the process died while writing)."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if TMP_MARKER in p.name)

    def save(self, step: int, state, meta: dict):
        """Starts writing in the background; returns at once."""
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)))

    def wait(self):
        if self._manager is not None:
            self._manager.wait_until_finished()

    def close(self):
        if self._manager is not None:
            self._manager.wait_until_finished()
            self._manager.close()
            self._manager = None

    def restore_latest(self, target) -> tuple[object, dict] | None:
        """The newest checkpoint that restores into the structure of `target`, as (state, meta).

        Damaged checkpoints are reported and set aside; None if no good one.
        """
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
                return restored["state"], dict(restored["meta"])
            except Exception as e:  # any failure to read it back means it is unusable
                self._set_aside(step, e)
        return None

    def _set_aside(self, step: int, error: Exception):
        source = self.directory / str(step)
        destination = self.damaged_directory / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:  # the workdir is shared: one process moves it
            self.damaged_directory.mkdir(parents=True, exist_ok=True)
            shutil.move(source, destination)
            reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            warn(f"checkpoint {source} is damaged ({reason}); moved it to {destination} and "
                 "trying an older one")
        cluster.sync(f"set aside {step}")
        self.manager.reload()



def require_writable(workdir: Path):
    """Creates `workdir` if needed; a clear error if it cannot be written."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to workdir {workdir} ({e.strerror}); "
                        "pass --workdir=DIR with a folder you can write to") from None


@dataclasses.dataclass(frozen=True)
class Start:
    """Where a run starts: its checkpoints, the state tree, and the position in training."""
    checkpoints: Checkpoints
    tree: dict
    epoch: int = 0
    step_in_epoch: int = 0
    restored_step: int | None = None  # the checkpoint's step, None for a fresh start


def restore_or_start(config, workdir: Path, fresh: Callable[[], dict]) -> Start:
    """The resume policy: the newest good checkpoint in `workdir`, or a fresh start from `fresh()`.

    Refuses (UserError, no file touched) a workdir that cannot be written, checkpoints with
    ``restore=false``, ``eval_only`` without checkpoints, and a saved config that differs in a field
    of FIXED_ON_RESUME. These refusals come before `fresh` is called (it reads the data and builds
    the model), so they are instant; `fresh()` gives the tree that checkpoints restore into.
    """
    require_writable(workdir)
    checkpoints = Checkpoints(workdir, max_to_keep=config.max_checkpoints)
    for path in checkpoints.unfinished():
        warn(f"skipping the unfinished checkpoint {path} (a save was interrupted)")
    resuming = checkpoints.exists()
    if resuming and not config.restore:
        raise UserError(f"{workdir} already holds checkpoints and --config.restore=false; "
                        "use a new --workdir, or drop restore=false to resume")
    if config.eval_only and not resuming:
        raise UserError(f"--config.eval_only=true needs a workdir with checkpoints; {workdir} "
                        "has none")
    saved_config = workdir / "config.json"
    if resuming and saved_config.exists():
        compare_with_saved(config, json.loads(saved_config.read_text()))
    tree = fresh()
    if not resuming:
        return Start(checkpoints, tree)
    restored = checkpoints.restore_latest(tree)
    if restored is None:
        raise UserError(f"no usable checkpoint in {checkpoints.directory} (see the warnings "
                        "above); use a new --workdir to start afresh")
    tree, meta = restored
    start = Start(checkpoints, tree, epoch=int(meta["epoch"]),
                  step_in_epoch=int(meta["step_in_epoch"]), restored_step=int(tree["step"]))
    if jax.process_index() == 0:
        print(f"resuming from checkpoint {checkpoints.directory / str(start.restored_step)}: step "
              f"{start.restored_step}, epoch {start.epoch}"
              + (f" + {start.step_in_epoch} steps" if start.step_in_epoch else ""), flush=True)
    return start


def compare_with_saved(config, saved: dict):
    """Refuses to resume a run whose saved config differs in a field that defines the experiment."""
    current = json.loads(config.to_json())
    differing = [f"{k} (saved {saved.get(k)!r}, now {current.get(k)!r})"
                 for k in FIXED_ON_RESUME if saved.get(k) != current.get(k)]
    if differing:
        raise UserError("this workdir holds a run with a different config: " + "; ".join(differing)
                        + ". Use a new --workdir, or the saved values")
