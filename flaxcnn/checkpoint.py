"""Checkpoints with Orbax: saved asynchronously, resumed from the newest good one, never lost.

A checkpoint holds one host pytree, `state`: a `training.RunState` as its `to_tree()` (parameters,
batch statistics, optimizer state, step, rng keys, the running sums of a half-finished epoch). The
epoch and the step within it follow from the step (steps per epoch cannot change on resume), and
nothing in it depends on the device count, so a checkpoint saved on N devices restores on M.

Damage is expected (a killed save, a truncated copy): a checkpoint that fails to restore is moved
aside to `<workdir>/checkpoints-damaged/` with a warning, never deleted, and the next older one is
tried. Orbax itself only deletes the oldest checkpoint after a newer one is complete.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from flaxcnn import cluster, tree_compare
from flaxcnn.errors import UserError, first_line, warn

TMP_MARKER = ".orbax-checkpoint-tmp"
# Changing one of these on resume would silently make it a different experiment.
FIXED_ON_RESUME = ("model", "model_overrides", "dataset", "idx_dir", "image_size", "batch_size",
                   "seed")


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (a full disk); the previous one is untouched."""


class _OrbaxErrorLogs(logging.Filter):
    """Drops Orbax's own ERROR logs (each with a traceback), and asyncio's "Task exception was never
    retrieved" for Orbax's write tasks (a failed save leaves its other writes' errors unread, and
    asyncio reports them when the tasks are collected, after the run's last line): every failure
    they describe reaches `Checkpoints` as an exception and is reported there in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        orbax = f"{os.sep}orbax{os.sep}"
        return not (record.levelno >= logging.ERROR
                    and (orbax in (record.pathname or "")
                         or record.name == "asyncio" and orbax in record.getMessage()))


def _fold_orbax_error_logs():
    for logger in (logging.getLogger("absl"), logging.getLogger("asyncio")):
        if not any(isinstance(f, _OrbaxErrorLogs) for f in logger.filters):
            logger.addFilter(_OrbaxErrorLogs())
    if not getattr(sys.unraisablehook, "folds_closed_loop_callbacks", False):
        sys.unraisablehook = _without_closed_loop_callbacks(sys.unraisablehook)


def _without_closed_loop_callbacks(previous):
    """After a failed write Orbax closes its event loop while TensorStore still completes the other
    writes of that save; their callbacks then fail with "Event loop is closed", one traceback each.
    That is the failure already reported; other unraisable exceptions go to `previous`."""

    def hook(unraisable):
        value = unraisable.exc_value
        if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
            previous(unraisable)

    hook.folds_closed_loop_callbacks = True
    return hook


class Checkpoints:
    """The `<workdir>/checkpoints` folder of one run."""

    def __init__(self, workdir: str | os.PathLike, *, max_to_keep: int = 3):
        self.directory = Path(workdir).absolute() / "checkpoints"
        self.damaged_directory = Path(workdir).absolute() / "checkpoints-damaged"
        self._manager = None
        self._max_to_keep = max_to_keep
        self._started: set[int] = set()  # steps this process began to save

    @property
    def manager(self) -> ocp.CheckpointManager:
        if self._manager is None:
            _fold_orbax_error_logs()
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

    def __enter__(self):
        return self

    def __exit__(self, error_type, error, traceback):
        """Closes; a failed write is raised, or, when another error is already on its way, only
        warned about."""
        try:
            self.close()
        except UserError as e:
            if error_type is None:
                raise
            warn(str(e))

    def save(self, step: int, tree: dict):
        """Starts writing `tree` (a RunState's `to_tree()`) in the background; returns at once. A
        failed write (a full disk) is raised as a CheckpointWriteError here or by the next save,
        wait or close."""
        self._started.add(step)
        try:
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree)))
        except Exception as e:  # pylint: disable=broad-except  # Orbax raises what it met
            raise self._write_error(e) from None

    def wait(self):
        if self._manager is not None:
            try:
                self._manager.wait_until_finished()
            except Exception as e:  # pylint: disable=broad-except
                raise self._write_error(e) from None

    def close(self):
        if self._manager is not None:
            manager, self._manager, error = self._manager, None, None
            try:
                manager.wait_until_finished()
            except Exception as e:  # pylint: disable=broad-except
                error = self._write_error(e)
            try:
                manager.close()
            except Exception as e:  # pylint: disable=broad-except
                error = error or self._write_error(e)
            if error is not None:
                raise error

    def _write_error(self, error: Exception) -> "CheckpointWriteError":
        """The one-line error for a save that failed; this run's unfinished saves are removed
        (they are this run's own and incomplete: no one can resume from them)."""
        text = str(error)
        if "No space left on device" in text or getattr(error, "errno", None) == errno.ENOSPC:
            reason = "no space left on device"
        else:
            reason = first_line(error)
        for path in self.unfinished():
            if path.name.split(".")[0] in {str(step) for step in self._started}:
                shutil.rmtree(path, ignore_errors=True)
        finished = sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit()) \
            if self.directory.is_dir() else []
        kept = (f"the newest complete checkpoint, {self.directory / str(finished[-1])}, is kept and "
                "resumes" if finished else "there is no complete checkpoint yet")
        return CheckpointWriteError(f"could not write a checkpoint into {self.directory} "
                                    f"({reason}); {kept}: free some space (or fix the cause) and "
                                    "rerun the same command")

    def restore_latest(self, target: dict) -> dict | None:
        """The newest checkpoint's tree that restores into the structure of `target`.

        Damaged checkpoints are reported and set aside; None if no good one. A checkpoint that
        reads but whose tree does not fit `target` (the code of the model changed) is refused with
        a UserError naming the first differing path, and nothing is moved.
        """
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:  # the saved tree's paths and shapes, from its metadata: no array is read
                saved = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")
                saved = getattr(saved, "tree", saved)
            except Exception as e:  # unreadable metadata: damaged like an unreadable array
                self._set_aside(step, e)
                continue
            difference = tree_compare.first_difference(saved, target)
            if difference is not None:
                raise UserError(
                    f"checkpoint {self.directory / str(step)} does not fit the model as the code "
                    f"builds it now: {difference}; resume with the code that saved it, or use a "
                    "new --workdir (the checkpoint is left as it is)")
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target)))
                return restored["state"]
            except Exception as e:  # any failure to read it back means it is unusable
                self._set_aside(step, e)
        return None

    def _set_aside(self, step: int, error: Exception):
        source = self.directory / str(step)
        destination = self.damaged_directory / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:  # the workdir is shared: one process moves it
            self.damaged_directory.mkdir(parents=True, exist_ok=True)
            shutil.move(source, destination)
            reason = first_line(error)
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


def decide_resume(config, workdir: Path, checkpoints: Checkpoints) -> bool:
    """The resume policy: whether this run resumes from `checkpoints` (True) or starts afresh.

    Refuses (UserError, no file touched) checkpoints with ``restore=false``, ``eval_only`` without
    checkpoints, and a saved config that differs in a field of FIXED_ON_RESUME. It reads only the
    workdir, never the data, so these refusals are instant. Unfinished saves are skipped with a
    warning.
    """
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
    return resuming


def restore_newest(checkpoints: Checkpoints, fresh):
    """`fresh` (a RunState) with the values of the newest good checkpoint; a UserError if none is
    usable (damaged ones are set aside with a warning)."""
    tree = checkpoints.restore_latest(fresh.to_tree())
    if tree is None:
        raise UserError(f"no usable checkpoint in {checkpoints.directory} (see the warnings "
                        "above); use a new --workdir to start afresh")
    return fresh.from_tree(tree)


def compare_with_saved(config, saved: dict):
    """Refuses to resume a run whose saved config differs in a field that defines the experiment."""
    current = json.loads(config.to_json())
    differing = [f"{k} (saved {saved.get(k)!r}, now {current.get(k)!r})"
                 for k in FIXED_ON_RESUME if saved.get(k) != current.get(k)]
    if differing:
        raise UserError("this workdir holds a run with a different config: " + "; ".join(differing)
                        + ". Use a new --workdir, or the saved values")


# What a rerun may set differently without it being news: how the run is shown and what it is
# asked to do this time, not how it trains.
NOT_SETTINGS = ("progress", "plots", "tensorboard", "eval_only", "restore")


def changed_settings(config, workdir: Path) -> list[str]:
    """The fields (a new learning rate, more epochs) in which `config` differs from the config
    saved in `workdir`, as "name saved -> now"; the resumed run takes them from now on."""
    path = workdir / "config.json"
    if not path.exists():
        return []
    saved, current = json.loads(path.read_text()), json.loads(config.to_json())
    return [f"{k} {saved.get(k)!r} -> {current[k]!r}"
            + (" (ignored: the checkpoint holds the weights)" if k == "init_from" else "")
            for k in sorted(current) if k not in NOT_SETTINGS and saved.get(k) != current[k]]
