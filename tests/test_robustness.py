"""Nothing lost, nothing confusing: two runs in one workdir, a full disk, changed code, a kill soak.

Subprocess helpers and the reference run come from test_checkpoint.py.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flaxcnn import trainer
from flaxcnn.errors import UserError
from flaxcnn.workdir_lock import LOCK_NAME, WorkdirLock
from tests.conftest import REPO, train_to_end
from tests.test_checkpoint import (RUN, assert_bit_identical, finish, latest,
                                   metrics_without_timing, start, wait_for_epochs)


@pytest.fixture
def sample_config(make_config):
    def make(**overrides):
        return make_config("batchnorm", dataset="fashion_mnist_sample", batch_size=32,
                           **overrides)
    return make


# --- two runs, one workdir -------------------------------------------------------------------


def test_a_second_run_on_a_live_workdir_is_refused_and_a_killed_one_blocks_nothing(
        tfds_dir, tmp_path, make_config):
    first = start(tmp_path, tfds_dir, "--config.num_epochs=20")
    wait_for_epochs(tmp_path, 1, first)
    t0 = time.monotonic()
    second = start(tmp_path, tfds_dir)
    code, out, err = finish(second)
    assert code == 1 and time.monotonic() - t0 < 60
    assert err.strip().splitlines() == [
        f"error: workdir {tmp_path} is in use by another run (pid {first.pid} on host "
        f"{socket.gethostname()}, started " + err.split(", started ")[1].split(")")[0]
        + "); wait for it to finish or stop it, or pass another --workdir"]
    assert first.poll() is None  # the first run goes on, untouched
    first.kill()  # a stale lock: the file still names the dead process
    first.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == first.pid
    epochs = latest(tmp_path)[1]["epoch"] + 1
    train_to_end(make_config("batchnorm", **{**RUN, "num_epochs": epochs}), tmp_path)
    assert [m["epoch"] for m in metrics_without_timing(tmp_path)] == list(range(1, epochs + 1))
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released at the end


def test_the_lock_is_held_for_the_whole_run_and_in_process_too(sample_config, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    held = WorkdirLock.acquire(tmp_path)
    with pytest.raises(UserError, match=rf"in use by another run \(pid {os.getpid()} on host "):
        trainer.train_and_evaluate(sample_config(num_epochs=1), tmp_path)
    assert not (tmp_path / "checkpoints").exists()
    held.release()
    train_to_end(sample_config(num_epochs=1), tmp_path)
    WorkdirLock.acquire(tmp_path).release()  # the finished run let go


# --- resuming code that changed --------------------------------------------------------------


def _snapshot(directory):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(directory).rglob("*")}


@pytest.mark.parametrize("change,message", [
    ("wider", "params/BatchNorm_2/bias has shape (120,) in the checkpoint, (128,) now"),
    ("deeper", "params/Dense_2/bias has shape (10,) in the checkpoint, (84,) now"),
    ("shallower", "the checkpoint's params/Dense_2/bias (shape (10,)) is not in the model any more"),
])
def test_a_checkpoint_that_no_longer_fits_the_code_is_refused_and_left_alone(
        change, message, sample_config, tmp_path, monkeypatch):
    from flaxcnn.models import batchnorm

    train_to_end(sample_config(num_epochs=1), tmp_path)
    checkpoints = _snapshot(tmp_path / "checkpoints")
    dense = batchnorm.dense  # the code changes; the config stays the same

    def changed(x, features, **kwargs):
        if change == "wider" and features == 120:
            features = 128
        if change == "deeper" and features == 84:
            x = dense(x, 84, **kwargs)
        if change == "shallower" and features == 10:
            return x[:, :10]
        return dense(x, features, **kwargs)

    monkeypatch.setattr(batchnorm, "dense", changed)
    with pytest.raises(UserError) as error:
        trainer.train_and_evaluate(sample_config(num_epochs=2), tmp_path)
    assert str(error.value) == (
        f"checkpoint {tmp_path / 'checkpoints' / '31'} does not fit the model as the code builds "
        f"it now: {message}; resume with the code that saved it, or use a new --workdir (the "
        "checkpoint is left as it is)")
    assert _snapshot(tmp_path / "checkpoints") == checkpoints
    assert not (tmp_path / "checkpoints-damaged").exists()
    monkeypatch.undo()  # the code that saved it resumes it
    train_to_end(sample_config(num_epochs=2), tmp_path)
    assert [m["epoch"] for m in metrics_without_timing(tmp_path)] == [1, 2]
