"""Nothing lost, nothing confusing: two runs in one workdir, a full disk, changed code, a kill soak.

The runs here are the session's reference run (conftest.py: LeNet-BN on the bundled sample at
28x28, batch 32, 32 steps an epoch of about a second) or copies of it cut back to an earlier epoch.
"""
import collections
import errno
import json
import os
import random
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from flaxcnn import trainer
from flaxcnn.errors import UserError
from flaxcnn.workdir_lock import LOCK_NAME, WorkdirLock
from tests.conftest import (RUN, STEPS_PER_EPOCH, assert_bit_identical, checkpoint_steps,
                            copy_run, finish, latest, launch_train, metrics_without_timing,
                            train_to_end, wait_for_epochs)


# --- two runs, one workdir -------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_on_a_live_workdir_is_refused_and_a_killed_one_blocks_nothing(
        tfds_dir, tmp_path, run_config):
    first = launch_train(tmp_path, tfds_dir, "--config.num_epochs=50")
    wait_for_epochs(tmp_path, 1, first)
    t0 = time.monotonic()
    second = launch_train(tmp_path, tfds_dir)
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
    epochs = int(latest(tmp_path)["step"]) // STEPS_PER_EPOCH + 1
    train_to_end(run_config(num_epochs=epochs), tmp_path)
    assert [m["epoch"] for m in metrics_without_timing(tmp_path)] == list(range(1, epochs + 1))
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released at the end


@pytest.mark.slow
def test_the_lock_is_held_for_the_whole_run_and_in_process_too(reference_run, run_config,
                                                               tmp_path):
    copy_run(reference_run, tmp_path, epochs=1)
    held = WorkdirLock.acquire(tmp_path)
    with pytest.raises(UserError, match=rf"in use by another run \(pid {os.getpid()} on host "):
        trainer.train_and_evaluate(run_config(num_epochs=2), tmp_path)
    assert checkpoint_steps(tmp_path) == [STEPS_PER_EPOCH]
    held.release()
    train_to_end(run_config(num_epochs=2), tmp_path)
    WorkdirLock.acquire(tmp_path).release()  # the finished run let go


# --- resuming code that changed --------------------------------------------------------------


def _snapshot(directory):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(directory).rglob("*")}


@pytest.mark.parametrize("change,message", [
    pytest.param("wider", "params/BatchNorm_2/bias has shape (120,) in the checkpoint, (128,) now",
                 marks=pytest.mark.slow),
    ("deeper", "params/Dense_2/bias has shape (10,) in the checkpoint, (84,) now"),
    pytest.param("shallower",
                 "the checkpoint's params/Dense_2/bias (shape (10,)) is not in the model any more",
                 marks=pytest.mark.slow),
])
def test_a_checkpoint_that_no_longer_fits_the_code_is_refused_and_left_alone(
        change, message, reference_run, run_config, tmp_path, monkeypatch):
    from flaxcnn.models import batchnorm

    copy_run(reference_run, tmp_path, epochs=1)
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
        trainer.train_and_evaluate(run_config(num_epochs=2), tmp_path)
    assert str(error.value) == (
        f"checkpoint {tmp_path / 'checkpoints' / str(STEPS_PER_EPOCH)} does not fit the model as "
        f"the code builds it now: {message}; resume with the code that saved it, or use a new "
        "--workdir (the checkpoint is left as it is)")
    assert _snapshot(tmp_path / "checkpoints") == checkpoints
    assert not (tmp_path / "checkpoints-damaged").exists()
    monkeypatch.undo()  # the code that saved it resumes it
    train_to_end(run_config(num_epochs=2), tmp_path)
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


@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_one_line_and_the_last_checkpoint_resumes(
        small_disk, tfds_dir, reference_run, run_config):
    workdir = copy_run(reference_run, small_disk / "run", epochs=1)
    fill(small_disk, leave=100 << 10)  # room for the metrics and curves.png, not a checkpoint
    code, out, err = finish(launch_train(workdir, tfds_dir, "--config.num_epochs=2"))
    checkpoints = workdir / "checkpoints"
    assert code == 1 and "epoch 2/2" in out
    assert err.strip().splitlines()[-1] == (
        f"error: could not write a checkpoint into {checkpoints} (no space left on device); the "
        f"newest complete checkpoint, {checkpoints / str(STEPS_PER_EPOCH)}, is kept and resumes: "
        "free some space (or fix the cause) and rerun the same command")
    assert "Traceback" not in err  # Orbax's own error logs are folded into that line
    # its unfinished save removed
    assert sorted(p.name for p in checkpoints.iterdir()) == [str(STEPS_PER_EPOCH)]
    assert [m["epoch"] for m in read_lines(workdir / "metrics.jsonl")] == [1, 2]  # no torn line

    (small_disk / "filler").unlink()  # space freed: the same command resumes, exactly
    train_to_end(run_config(), workdir)
    assert metrics_without_timing(workdir) == metrics_without_timing(reference_run)
    assert_bit_identical(latest(workdir), latest(reference_run))


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


def test_a_failed_metrics_write_leaves_no_torn_line(reference_run, run_config, tmp_path,
                                                    monkeypatch):
    copy_run(reference_run, tmp_path, epochs=1)
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
        trainer.train_and_evaluate(run_config(num_epochs=2), tmp_path)
    monkeypatch.undo()
    assert metrics.read_bytes() == before
    assert checkpoint_steps(tmp_path) == [STEPS_PER_EPOCH]
    train_to_end(run_config(num_epochs=2), tmp_path)
    assert [m["epoch"] for m in read_lines(metrics)] == [1, 2]


def test_pictures_and_tensorboard_that_fail_to_write_only_warn(reference_run, run_config,
                                                                tmp_path, monkeypatch, capsys):
    from flaxcnn import events, plots

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    for name in ("curves", "predictions", "confusion"):
        monkeypatch.setattr(plots, name, full_disk)
    monkeypatch.setattr(events.ScalarWriter, "add_scalars", full_disk)
    copy_run(reference_run, tmp_path, epochs=1)
    train_to_end(run_config(num_epochs=2), tmp_path)
    err = capsys.readouterr().err
    for what in ("draw " + str(tmp_path / "curves.png"), "draw " + str(tmp_path / "predictions.png"),
                 "draw " + str(tmp_path / "confusion.png"),
                 f"write the TensorBoard scalars into {tmp_path}"):
        assert (f"warning: could not {what} (OSError: [Errno 28] No space left on device); "
                "training goes on") in err
    assert [m["epoch"] for m in read_lines(tmp_path / "metrics.jsonl")] == [1, 2]
    assert int(latest(tmp_path)["step"]) == 2 * STEPS_PER_EPOCH


# --- the kill soak ---------------------------------------------------------------------------

# In this order: a kill in the steps or the evaluation of an epoch loses that epoch (the run resumes
# before it), a kill while drawing or checkpointing may come after the epoch's checkpoint is
# complete. So the run moves on by at most one epoch per kill of the last two, and the plan fits
# RUN's epochs with room for MAX_KILLS - 4 kills that miss their phase and are tried again.
PHASES = ("train", "eval", "plot", "checkpoint")
MAX_KILLS = RUN["num_epochs"] + 1
# How long after a phase's marker the kill comes, at most (seconds; an epoch here trains ~1 s,
# evaluates ~0.3 s, draws ~0.2 s). A checkpoint is killed just after its save began (its "end"
# marker), while Orbax writes it in the background.
KILL_DELAY = {"train": 0.6, "eval": 0.1, "plot": 0.05, "checkpoint": 0.01}
MARKER = re.compile(r"flaxcnn-phase: (\w+) (begin|end)")  # tests/phase_markers.py's lines


def unfinished_saves(workdir):
    directory = Path(workdir) / "checkpoints"
    return {p.name for p in directory.iterdir() if ".orbax-checkpoint-tmp" in p.name} \
        if directory.is_dir() else set()


def kill_in_phase(workdir, tfds_dir, target, delay):
    """Starts the run, SIGKILLs it `delay` s after the first marker of `target` and returns the
    phases the process was in when it died (None if it finished first): those that began and did
    not end, and the checkpoint if a save was left unfinished."""
    process = launch_train(workdir, tfds_dir, phases=True, stdout=subprocess.DEVNULL)
    trigger = f"flaxcnn-phase: {target} {'end' if target == 'checkpoint' else 'begin'}"
    unfinished_before, markers = unfinished_saves(workdir), []
    for line in process.stderr:
        markers += MARKER.findall(line)
        if line.strip() == trigger:
            time.sleep(delay)
            process.kill()
            break
    else:
        assert process.wait() == 0
        return None
    markers += MARKER.findall(process.stderr.read())
    process.wait()
    open_phases = collections.Counter()  # the pictures are drawn in a thread of their own:
    for name, edge in markers:           # phases overlap, so count what began and did not end
        open_phases[name] += 1 if edge == "begin" else -1
    hit = {name for name, count in open_phases.items() if count > 0}
    if unfinished_saves(workdir) - unfinished_before:  # a save that never finished
        hit.add("checkpoint")
    return hit


@pytest.mark.slow
def test_kill_soak_resumes_bit_identical_after_sigkill_in_every_phase(
        reference_run, tfds_dir, tmp_path, run_config):
    """SIGKILL in each phase (a kill that missed its phase is tried again), then the same command
    resumes: no complete checkpoint is ever lost, and the run ends bit for bit where the
    uninterrupted reference ended. The seed sets when, within its phase, each kill comes."""
    seed = int(os.environ.get("FLAXCNN_SOAK_SEED", time.time_ns() % 100_000))
    print(f"kill soak seed {seed} (replay with FLAXCNN_SOAK_SEED={seed})")
    rng = random.Random(seed)
    plan, hits, kills = list(PHASES), set(), 0
    while plan:
        assert kills < MAX_KILLS, f"phases never hit: {set(PHASES) - hits} (seed {seed})"
        target = plan.pop(0)
        delay = rng.uniform(0, KILL_DELAY[target])
        before = set(checkpoint_steps(tmp_path))
        hit = kill_in_phase(tmp_path, tfds_dir, target, delay)
        kills += 1
        print(f"kill {kills}: {target} + {delay:.3f} s -> in {sorted(hit or [])}, "
              f"checkpoints {checkpoint_steps(tmp_path)}")
        assert hit is not None, "the run finished before the kill"
        assert before <= set(checkpoint_steps(tmp_path)), "a complete checkpoint was lost"
        hits |= hit
        if not plan:
            plan = [p for p in PHASES if p not in hits]  # a kill that missed its phase: again

    train_to_end(run_config(), tmp_path)
    assert metrics_without_timing(tmp_path) == metrics_without_timing(reference_run)
    assert_bit_identical(latest(tmp_path), latest(reference_run))
