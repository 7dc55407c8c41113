"""Nothing lost, nothing confusing: two runs in one workdir, a full disk, changed code, a kill soak.

The runs here are LeNet-BN on the bundled sample at 28x28, batch 32: 31 steps an epoch, about a
second each, so that a soak of several killed processes stays near a minute.
"""
import errno
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flaxcnn import checkpoint, trainer
from flaxcnn.errors import UserError
from flaxcnn.workdir_lock import LOCK_NAME, WorkdirLock
from tests.conftest import REPO, train_to_end, uninterrupted_run
from tests.test_checkpoint import assert_bit_identical, finish, latest, metrics_without_timing

RUN = {"dataset": "fashion_mnist_sample", "batch_size": 32, "num_epochs": 3}
STEPS_PER_EPOCH = 31


def launch(workdir, tfds_dir, *extra, phases=False):
    """train.py on RUN (with --config.* overrides in `extra`) as a separate process."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **({"FLAXCNN_TEST_PHASES": "1"} if phases else {}))
    return subprocess.Popen(
        [sys.executable, "train.py", "--config", "configs/batchnorm.py", "--config.progress=false",
         *(f"--config.{k}={v}" for k, v in RUN.items()), f"--config.data_dir={tfds_dir}",
         f"--workdir={workdir}", *extra], cwd=REPO, env=env,
        stdout=subprocess.DEVNULL if phases else subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epochs(workdir, count, process, timeout=240):
    metrics = Path(workdir) / "metrics.jsonl"
    deadline = time.time() + timeout
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= count):
        assert process.poll() is None and time.time() < deadline, f"no epoch {count} in {workdir}"
        time.sleep(0.05)


@pytest.fixture
def sample_config(make_config):
    def make(**overrides):
        return make_config("batchnorm", **{**RUN, **overrides})
    return make


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tfds_dir):
    """The uninterrupted run that interrupted ones must reproduce bit for bit."""
    return uninterrupted_run(tmp_path_factory.mktemp("reference"), tfds_dir, RUN)


# --- two runs, one workdir -------------------------------------------------------------------


def test_a_second_run_on_a_live_workdir_is_refused_and_a_killed_one_blocks_nothing(
        tfds_dir, tmp_path, sample_config):
    first = launch(tmp_path, tfds_dir, "--config.num_epochs=50")
    wait_for_epochs(tmp_path, 1, first)
    t0 = time.monotonic()
    second = launch(tmp_path, tfds_dir)
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
    train_to_end(sample_config(num_epochs=epochs), tmp_path)
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


# --- a full disk -----------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A real 16 MiB filesystem (tmpfs), to fill up."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"a real full disk needs a tmpfs mount (root): {mounted.stderr.strip()}; "
                    "test_a_failed_metrics_write_* covers the same code with a patched write")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk, leave: int):
    """Writes a file that leaves `leave` bytes free on `disk`."""
    stat = os.statvfs(disk)
    (disk / "filler").write_bytes(bytes(max(stat.f_bavail * stat.f_frsize - leave, 0)))


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]  # a torn line fails here


def test_a_full_disk_stops_the_run_with_one_line_and_the_last_checkpoint_resumes(
        small_disk, tfds_dir, reference_run, sample_config):
    workdir = small_disk / "run"
    assert finish(launch(workdir, tfds_dir, "--config.num_epochs=1"))[0] == 0
    fill(small_disk, leave=100 << 10)  # room for the metrics and curves.png, not a checkpoint
    code, out, err = finish(launch(workdir, tfds_dir, "--config.num_epochs=2"))
    checkpoints = workdir / "checkpoints"
    assert code == 1 and "epoch 2/2" in out
    assert err.strip().splitlines()[-1] == (
        f"error: could not write a checkpoint into {checkpoints} (no space left on device); the "
        f"newest complete checkpoint, {checkpoints / '31'}, is kept and resumes: free some space "
        "(or fix the cause) and rerun the same command")
    assert "Traceback" not in err  # Orbax's own error logs are folded into that line
    assert sorted(p.name for p in checkpoints.iterdir()) == ["31"]  # its unfinished save removed
    assert [m["epoch"] for m in read_lines(workdir / "metrics.jsonl")] == [1, 2]  # no torn line

    (small_disk / "filler").unlink()  # space freed: the same command resumes, exactly
    train_to_end(sample_config(), workdir)
    assert metrics_without_timing(workdir) == metrics_without_timing(reference_run)
    assert_bit_identical(latest(workdir)[0], latest(reference_run)[0])


def unretrieved_task_error_logs(code_path: str) -> list[str]:
    """asyncio's ERROR logs for a task, with its coroutine defined in `code_path`, that failed and
    whose exception nobody retrieved (what Orbax's other writes leave when a save fails)."""
    import asyncio
    import gc
    import logging

    namespace = {}
    exec(compile("async def write():\n    raise ValueError('RESOURCE_EXHAUSTED: disk full')\n",
                 code_path, "exec"), namespace)
    records = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger().addHandler(handler)
    try:
        loop = asyncio.new_event_loop()
        task = loop.create_task(namespace["write"]())
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.close()
        del task
        gc.collect()
    finally:
        logging.getLogger().removeHandler(handler)
    return [r for r in records if "never retrieved" in r]


def test_orbax_tasks_unretrieved_errors_are_folded_into_the_one_line():
    """Seen on Python 3.13 with orbax 0.12.8: after the full-disk line, asyncio printed the other
    writes' errors with tracebacks. Only Orbax's own tasks are folded; other code's still show."""
    from flaxcnn import checkpoint

    checkpoint._fold_orbax_error_logs()
    orbax_file = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "type_handlers.py")
    assert unretrieved_task_error_logs(orbax_file) == []
    assert len(unretrieved_task_error_logs(os.path.join(os.sep, "somewhere", "mine.py"))) == 1


def test_a_failed_metrics_write_leaves_no_torn_line(sample_config, tmp_path, monkeypatch):
    train_to_end(sample_config(num_epochs=1), tmp_path)
    metrics = tmp_path / "metrics.jsonl"
    before = metrics.read_bytes()
    write = os.write

    def half_a_line_then_a_full_disk(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}") == str(metrics):
            write(fd, data[:len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(fd, data)

    monkeypatch.setattr(os, "write", half_a_line_then_a_full_disk)
    with pytest.raises(UserError, match=rf"could not write {metrics} \(No space left on device\); "
                                        "it keeps its complete lines"):
        trainer.train_and_evaluate(sample_config(num_epochs=2), tmp_path)
    monkeypatch.undo()
    assert metrics.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["31"]
    train_to_end(sample_config(num_epochs=2), tmp_path)
    assert [m["epoch"] for m in read_lines(metrics)] == [1, 2]


def test_pictures_and_tensorboard_that_fail_to_write_only_warn(sample_config, tmp_path,
                                                                monkeypatch, capsys):
    from clu import metric_writers

    from flaxcnn import plots

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    for name in ("curves", "predictions", "confusion"):
        monkeypatch.setattr(plots, name, full_disk)
    monkeypatch.setattr(metric_writers.SummaryWriter, "write_scalars", full_disk)
    train_to_end(sample_config(num_epochs=2), tmp_path)
    err = capsys.readouterr().err
    for what in ("draw " + str(tmp_path / "curves.png"), "draw " + str(tmp_path / "predictions.png"),
                 "draw " + str(tmp_path / "confusion.png"),
                 f"write the TensorBoard scalars into {tmp_path}"):
        assert (f"warning: could not {what} (OSError: [Errno 28] No space left on device); "
                "training goes on") in err
    assert [m["epoch"] for m in read_lines(tmp_path / "metrics.jsonl")] == [1, 2]
    assert latest(tmp_path)[1]["epoch"] == 2


# --- the kill soak ---------------------------------------------------------------------------

PHASES = ("train", "eval", "plot", "checkpoint")
# How long after a phase's marker the kill comes, at most (seconds; an epoch here trains ~1 s,
# evaluates ~0.3 s, draws ~0.2 s). A checkpoint is killed just after its save began (its "end"
# marker), while Orbax writes it in the background.
KILL_DELAY = {"train": 0.6, "eval": 0.1, "plot": 0.05, "checkpoint": 0.01}


def finished_steps(workdir):
    directory = Path(workdir) / "checkpoints"
    return {int(p.name) for p in directory.iterdir() if p.name.isdigit()} if directory.is_dir() \
        else set()


def unfinished_saves(workdir):
    directory = Path(workdir) / "checkpoints"
    return {p.name for p in directory.iterdir() if ".orbax-checkpoint-tmp" in p.name} \
        if directory.is_dir() else set()


def kill_in_phase(workdir, tfds_dir, target, occurrence, delay):
    """Starts the run, SIGKILLs it `delay` s after the `occurrence`-th marker of `target` and
    returns the phases the process was in when it died (None if it finished first)."""
    process = launch(workdir, tfds_dir, phases=True)
    trigger = f"flaxcnn-phase: {target} {'end' if target == 'checkpoint' else 'begin'}"
    unfinished_before, markers, seen = unfinished_saves(workdir), [], 0
    for line in process.stderr:
        if line.startswith("flaxcnn-phase: "):
            markers.append(line.split(": ", 1)[1].split())
        if line.strip() == trigger:
            seen += 1
            if seen == occurrence:
                time.sleep(delay)
                process.kill()
                break
    else:
        assert process.wait() == 0
        return None
    markers += [line.split(": ", 1)[1].split() for line in process.stderr.read().splitlines()
                if line.startswith("flaxcnn-phase: ")]
    process.wait()
    hit = set()
    if markers and markers[-1][1] == "begin":
        hit.add(markers[-1][0])
    if unfinished_saves(workdir) - unfinished_before:  # a save that never finished
        hit.add("checkpoint")
    return hit


def test_kill_soak_resumes_bit_identical_after_sigkill_in_every_phase(
        reference_run, tfds_dir, tmp_path, sample_config):
    seed = int(os.environ.get("FLAXCNN_SOAK_SEED", time.time_ns() % 100_000))
    print(f"kill soak seed {seed} (replay with FLAXCNN_SOAK_SEED={seed})")
    rng = random.Random(seed)
    plan = rng.sample(PHASES, len(PHASES))
    hits, tries = set(), 0
    while plan and tries < 10:
        target = plan.pop(0)
        remaining = RUN["num_epochs"] - max(finished_steps(tmp_path), default=0) // STEPS_PER_EPOCH
        if remaining == 0:
            break
        occurrence = rng.randint(1, min(remaining, 2))
        delay = rng.uniform(0, KILL_DELAY[target])
        before = finished_steps(tmp_path)
        hit = kill_in_phase(tmp_path, tfds_dir, target, occurrence, delay)
        tries += 1
        print(f"kill {tries}: {target} #{occurrence} + {delay:.3f} s -> in {sorted(hit or [])}, "
              f"checkpoints {sorted(finished_steps(tmp_path))}")
        assert hit is not None, "the run finished before the kill"
        assert before <= finished_steps(tmp_path), "a complete checkpoint was lost"
        hits |= hit
        if not plan:
            plan = [p for p in PHASES if p not in hits]  # a kill that missed its phase: again

    train_to_end(sample_config(), tmp_path)
    assert hits == set(PHASES), f"phases never hit: {set(PHASES) - hits} (seed {seed})"
    assert metrics_without_timing(tmp_path) == metrics_without_timing(reference_run)
    assert_bit_identical(latest(tmp_path)[0], latest(reference_run)[0])
