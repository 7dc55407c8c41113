"""Checkpoints: exact resume after SIGKILL, SIGTERM/Ctrl-C, device-count changes, damage, refusals."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from flaxcnn import checkpoint, trainer
from flaxcnn.errors import UserError
from tests.conftest import REPO, train_to_end, uninterrupted_run

# LeNet-BN on the bundled sample at 56x56, batch 16: 62 steps, a few seconds an epoch. Runs that
# get killed are subprocesses; the rest run in this process (4 fake devices, like the subprocesses).
RUN = {"dataset": "fashion_mnist_sample", "image_size": 56, "batch_size": 16, "num_epochs": 3}
RUN_ARGS = ["--config", "configs/batchnorm.py", "--config.progress=false",
            *(f"--config.{k}={v}" for k, v in RUN.items())]
TIMING_FIELDS = ("examples_per_sec", "epoch_seconds")


def start(workdir, tfds_dir, *extra, devices=4):
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.Popen(
        [sys.executable, "train.py", *RUN_ARGS, f"--config.data_dir={tfds_dir}",
         f"--workdir={workdir}", *extra], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def finish(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def wait_for_epochs(workdir, count, process, timeout=240):
    metrics = Path(workdir) / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= count:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise TimeoutError(f"no epoch {count} in {workdir}")


def wait_for_checkpoint(path, process, timeout=120):
    """Until checkpoint `path` is complete: Orbax writes it in the background, in a temporary
    folder that it renames to the step once everything is written."""
    deadline = time.time() + timeout
    while not path.is_dir():
        assert process.poll() is None and time.time() < deadline, f"no checkpoint {path}"
        time.sleep(0.05)


def metrics_without_timing(workdir):
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS} for line in lines]


def latest(workdir):
    """(state, meta) of the newest checkpoint, read back without a target structure."""
    manager = checkpoint.Checkpoints(workdir)
    step = manager.manager.latest_step()
    restored = manager.manager.restore(step)
    manager.close()
    return restored["state"], dict(restored["meta"])


def assert_bit_identical(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture
def run_here(make_config):
    """Runs RUN (with overrides) in this process, like `start` would in a subprocess."""

    def run(workdir, **overrides):
        return train_to_end(make_config("batchnorm", **{**RUN, **overrides}), Path(workdir))

    return run


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tfds_dir):
    """The uninterrupted run every interrupted one must reproduce bit for bit."""
    return uninterrupted_run(tmp_path_factory.mktemp("reference"), tfds_dir, RUN)


def test_sigkill_mid_epoch_then_resume_is_bit_identical(reference_run, tfds_dir, tmp_path,
                                                        run_here, capsys):
    process = start(tmp_path, tfds_dir)
    wait_for_epochs(tmp_path, 1, process)
    wait_for_checkpoint(tmp_path / "checkpoints" / "62", process)  # written while epoch 2 trains
    time.sleep(0.3)  # into epoch 2
    process.kill()
    process.wait()
    assert len(metrics_without_timing(tmp_path)) == 1, "the kill came too late to be mid-epoch"

    run_here(tmp_path)
    out = capsys.readouterr().out
    assert "resuming from checkpoint" in out and "epoch 1" in out
    assert metrics_without_timing(tmp_path) == metrics_without_timing(reference_run)
    assert_bit_identical(latest(tmp_path)[0]["params"], latest(reference_run)[0]["params"])


def test_sigterm_saves_mid_epoch_and_resumes_bit_identical(reference_run, tfds_dir, tmp_path,
                                                           run_here, capsys):
    process = start(tmp_path, tfds_dir)
    wait_for_epochs(tmp_path, 1, process)
    wait_for_checkpoint(tmp_path / "checkpoints" / "62", process)  # so epoch 2 has begun
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    code, out, err = finish(process)
    assert code == 128 + signal.SIGTERM, err
    assert "saved a checkpoint at step" in out and f"--workdir {tmp_path}" in out
    state, meta = latest(tmp_path)
    assert meta["epoch"] == 1 and 0 < meta["step_in_epoch"] < 62
    assert int(state["step"]) == 62 + meta["step_in_epoch"]

    run_here(tmp_path)
    assert f"+ {meta['step_in_epoch']} steps" in capsys.readouterr().out
    assert metrics_without_timing(tmp_path) == metrics_without_timing(reference_run)
    assert_bit_identical(latest(tmp_path)[0], latest(reference_run)[0])


def test_second_ctrl_c_exits_at_once_and_keeps_complete_checkpoints(tfds_dir, tmp_path, run_here,
                                                                   capsys):
    process = start(tmp_path, tfds_dir)
    wait_for_epochs(tmp_path, 1, process)
    wait_for_checkpoint(tmp_path / "checkpoints" / "62", process)  # epoch 1's, complete
    process.send_signal(signal.SIGINT)
    # A person presses Ctrl-C again after seeing the first one acknowledged (two signals that
    # arrive before Python runs its handler count as one).
    acknowledged = process.stderr.readline()
    while acknowledged and "finishing the current steps" not in acknowledged:
        acknowledged = process.stderr.readline()
    process.send_signal(signal.SIGINT)
    code, out, err = finish(process)
    assert code == 130 and "second Ctrl-C" in err
    run_here(tmp_path)
    assert "resuming from checkpoint" in capsys.readouterr().out
    assert [m["epoch"] for m in metrics_without_timing(tmp_path)] == [1, 2, 3]


def test_checkpoints_move_between_device_counts(tfds_dir, tmp_path, run_here):
    run_here(tmp_path, num_epochs=1)  # saved with 4 devices
    code, out, err = finish(start(tmp_path, tfds_dir, "--config.num_epochs=2", devices=1))
    assert code == 0, err  # restored on 1, saved with 1
    assert latest(tmp_path)[1] == {"epoch": 2, "step_in_epoch": 0, "devices": 1}
    run_here(tmp_path)  # restored on 4
    assert latest(tmp_path)[1] == {"epoch": 3, "step_in_epoch": 0, "devices": 4}
    assert [m["epoch"] for m in metrics_without_timing(tmp_path)] == [1, 2, 3]


# In-process runs (the 4 fake devices of conftest.py) for the rest.


@pytest.fixture
def sample_config(make_config):
    def make(**overrides):
        return make_config("batchnorm", dataset="fashion_mnist_sample", batch_size=32,
                           **overrides)
    return make


def test_damaged_latest_checkpoint_is_set_aside_and_an_older_one_used(sample_config, tmp_path,
                                                                       capsys):
    train_to_end(sample_config(num_epochs=2), tmp_path)
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["31", "62"]
    for path in (checkpoints / "62").rglob("*"):
        if path.is_file() and path.stat().st_size > 100:
            path.write_bytes(path.read_bytes()[:20])  # truncated
    unfinished = checkpoints / "93.orbax-checkpoint-tmp-1234"
    unfinished.mkdir()
    capsys.readouterr()

    train_to_end(sample_config(num_epochs=3), tmp_path)
    err = capsys.readouterr()
    assert f"skipping the unfinished checkpoint {unfinished}" in err.err
    assert f"checkpoint {checkpoints / '62'} is damaged" in err.err
    assert "resuming from checkpoint" in err.out and "step 31, epoch 1" in err.out
    assert len(list((tmp_path / "checkpoints-damaged").iterdir())) == 1  # kept, not deleted
    assert unfinished.is_dir()
    assert [json.loads(line)["epoch"] for line in
            (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_resuming_with_a_different_experiment_is_refused_and_writes_nothing(sample_config,
                                                                            tmp_path):
    train_to_end(sample_config(num_epochs=1), tmp_path)
    # Every file but the workdir lock, which records the last run that opened the workdir.
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.name != ".flaxcnn-lock"}
    with pytest.raises(UserError) as error:
        trainer.train_and_evaluate(sample_config(num_epochs=2, image_size=32, model="lenet_bn_scratch"), tmp_path)
    assert "model (saved 'lenet_bn', now 'lenet_bn_scratch')" in str(error.value)
    assert "image_size (saved 28, now 32)" in str(error.value)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")
            if p.name != ".flaxcnn-lock"} == before
    # Training longer is a safe change.
    train_to_end(sample_config(num_epochs=2), tmp_path)


def test_restore_false_refuses_a_workdir_with_checkpoints(sample_config, tmp_path):
    train_to_end(sample_config(num_epochs=1), tmp_path)
    with pytest.raises(UserError, match="already holds checkpoints and --config.restore=false"):
        trainer.train_and_evaluate(sample_config(num_epochs=2, restore=False), tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["31"]


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(sample_config, tmp_path):
    train_to_end(sample_config(num_epochs=1), tmp_path)
    with pytest.raises(UserError, match=r"NaN or infinite at step 3\d .*lower --config.learning_rate"):
        trainer.train_and_evaluate(sample_config(num_epochs=2, learning_rate=1e30), tmp_path)
    assert checkpoint.Checkpoints(tmp_path).manager.latest_step() == 31


def test_eval_only_evaluates_the_latest_checkpoint(sample_config, tmp_path, capsys):
    train_to_end(sample_config(num_epochs=1), tmp_path)
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    capsys.readouterr()
    train_to_end(sample_config(num_epochs=1, eval_only=True), tmp_path)
    assert "test acc" in capsys.readouterr().out
    (record,) = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert record["test_accuracy"] == last["test_accuracy"]
    assert record["test_examples"] == 1003 and record["step"] == 31
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["31"]


def test_eval_only_needs_checkpoints(sample_config, tmp_path):
    with pytest.raises(UserError, match="eval_only=true needs a workdir with checkpoints"):
        trainer.train_and_evaluate(sample_config(eval_only=True), tmp_path)


def test_only_an_unfinished_save_starts_afresh_and_keeps_it(sample_config, tmp_path, capsys):
    unfinished = tmp_path / "checkpoints" / "31.orbax-checkpoint-tmp-99"
    unfinished.mkdir(parents=True)
    train_to_end(sample_config(num_epochs=1), tmp_path)
    captured = capsys.readouterr()
    assert f"skipping the unfinished checkpoint {unfinished}" in captured.err
    assert "resuming" not in captured.out
    assert unfinished.is_dir() and (tmp_path / "checkpoints" / "31").is_dir()


def test_rerunning_a_finished_run_trains_nothing_and_returns_its_last_epoch(sample_config,
                                                                           tmp_path):
    first = train_to_end(sample_config(num_epochs=1), tmp_path)
    again = train_to_end(sample_config(num_epochs=1), tmp_path)
    assert again == first  # the last epoch's record, read back from metrics.jsonl
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["31"]
