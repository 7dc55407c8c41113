"""Several processes as one run (flaxcnn.cluster), with real processes on this machine.

2 processes x 2 CPU devices against 1 process x 4 devices, same config and global batch, LeNet-BN
on the bundled sample. Collectives between the processes go through gloo, as on CPU clusters.
Select with `pytest -m multihost`.
"""
import collections
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.conftest import (REPO, assert_bit_identical, checkpoint_steps, config_of, copy_run,
                            finish, free_port, latest, launch_train, max_abs_difference,
                            metrics_without_timing, train_to_end)

pytestmark = pytest.mark.multihost

BATCH = 16  # global batch: 4 per device either way; 63 steps per epoch on the 1,003 examples
STEPS = math.ceil(1003 / BATCH)  # the last one with 11 real examples: 8 of process 0, 3 of 1
TOLERANCE = 1e-5  # float32 round-off: the sums over devices are added in another order
SETTINGS = {"batch_size": BATCH, "learning_rate": 0.1, "num_epochs": 2, "plots": False,
            "tensorboard": False}


def launch(workdir, tfds_dir, processes: int, *extra, per_process=None, heartbeat=5):
    """train.py as `processes` processes of one cluster, 4 devices in all."""
    port = free_port()
    settings = [f"--config.{k}={str(v).lower() if isinstance(v, bool) else v}"
                for k, v in SETTINGS.items()]
    return [launch_train(workdir, tfds_dir, *settings, f"--coordinator_address=localhost:{port}",
                         f"--num_processes={processes}", f"--process_id={i}",
                         f"--heartbeat_timeout_seconds={heartbeat}", "--initialization_timeout=60",
                         *extra, *((per_process or {}).get(i, [])), devices=4 // processes)
            for i in range(processes)]


def finish_all(procs, timeout=240) -> list[tuple[int, str, str]]:
    return [finish(p, timeout) for p in procs]


def run(workdir, tfds_dir, processes, *extra, **kwargs) -> list[tuple[int, str, str]]:
    results = finish_all(launch(workdir, tfds_dir, processes, *extra, **kwargs))
    for rc, out, err in results:
        assert rc == 0, f"exit {rc}\n{out}\n{err}"
    return results


def run_here(workdir, tfds_dir, **overrides):
    """The same run as one process with this process's 4 devices."""
    return train_to_end(config_of("batchnorm", tfds_dir, dataset="fashion_mnist_sample",
                                  **{**SETTINGS, **overrides}), workdir)


def records(workdir) -> list[dict]:
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def final_state(workdir) -> tuple[int, dict]:
    manager = ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints")
    step = manager.latest_step()
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return step, state["state"]


def assert_same_run(workdir, reference, *, from_epoch=1):
    """The same epochs, steps and example counts, metrics and final state to round-off."""
    got, want = records(workdir), records(reference)
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    for g, w in zip(got, want):
        if g["epoch"] < from_epoch:
            continue
        assert g["step"] == w["step"] and g["test_examples"] == w["test_examples"] == 1003
        for key in ("train_loss", "test_loss"):
            assert abs(g[key] - w[key]) <= TOLERANCE * max(1.0, abs(w[key])), (key, g, w)
        for key in ("train_accuracy", "test_accuracy"):  # counts; a flipped argmax is one example
            assert abs(g[key] - w[key]) <= 1.5 / 1003, (key, g, w)
    (step, state), (want_step, want_state) = final_state(workdir), final_state(reference)
    assert step == want_step
    differences = {k: max_abs_difference(state[k], want_state[k]) for k in ("params", "batch_stats")}
    print(f"max |difference| against {Path(reference).name}: {differences}")
    assert max(differences.values()) <= TOLERANCE, differences
    return differences


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def one_process(tfds_dir, tmp_path_factory):
    """The reference: 2 epochs in one process with 4 devices (this one)."""
    workdir = tmp_path_factory.mktemp("cluster") / "one"
    run_here(workdir, tfds_dir)
    return workdir


@pytest.fixture(scope="module")
def two_processes(tfds_dir, tmp_path_factory):
    """2 processes x 2 devices; SIGTERM reaches process 1 only, in epoch 2; then resumed.

    Returns (the workdir after the resumed run, a copy of it as the signal left it, the results
    of the interrupted run).
    """
    root = tmp_path_factory.mktemp("cluster")
    workdir = root / "two"
    procs = launch(workdir, tfds_dir, 2)
    wait_for(lambda: STEPS in checkpoint_steps(workdir), 240, "the checkpoint of epoch 1")
    procs[1].send_signal(signal.SIGTERM)
    interrupted = finish_all(procs)
    stopped = root / "two-stopped"
    shutil.copytree(workdir, stopped)
    run(workdir, tfds_dir, 2)
    return workdir, stopped, interrupted


@pytest.mark.slow
def test_two_processes_train_as_one(one_process, two_processes):
    """Per-epoch metrics and final parameters and BatchNorm statistics agree to round-off; every
    test example is evaluated once (test_examples == 1003); only process 0 prints."""
    workdir, _, _ = two_processes
    assert [r["epoch"] for r in records(workdir)] == [1, 2]
    assert_same_run(workdir, one_process)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_all_at_the_same_step(two_processes):
    """The signal reached process 1 only: both saved the same step and exited cleanly, and
    only process 0 printed (the resume hint); the resumed run finished the epochs."""
    workdir, stopped, interrupted = two_processes
    (rc0, out0, err0), (rc1, out1, err1) = interrupted
    said = (out0, err0, out1, err1)
    assert rc0 == rc1 == 128 + signal.SIGTERM, said
    assert "SIGTERM" in err1 and "SIGTERM" not in err0, said
    assert "resume with: python train.py" in out0 and out1 == "", said
    assert "Traceback" not in err0 + err1, said
    saved = checkpoint_steps(stopped)[-1]
    assert STEPS < saved <= 2 * STEPS, (saved, said)
    assert f"saved a checkpoint at step {saved} " in out0
    assert [r["epoch"] for r in records(stopped)] == [1]
    assert records(workdir)[-1]["step"] == 2 * STEPS


@pytest.mark.slow
def test_checkpoint_moves_between_two_processes_and_one(one_process, two_processes, tfds_dir,
                                                        tmp_path, capsys):
    """The 2-process run's mid-epoch checkpoint continues in 1 process, and the 1-process
    run's epoch-1 checkpoint in 2 processes, as the 1-process run went on."""
    _, stopped, _ = two_processes
    two_to_one = tmp_path / "two-to-one"
    shutil.copytree(stopped, two_to_one)
    run_here(two_to_one, tfds_dir)
    assert f"resuming from checkpoint {two_to_one.absolute() / 'checkpoints'}" in \
        capsys.readouterr().out
    assert_same_run(two_to_one, one_process)

    one_to_two = copy_run(one_process, tmp_path / "one-to-two", epochs=1)
    results = run(one_to_two, tfds_dir, 2)
    assert "resuming from checkpoint" in results[0][1] and results[1][1] == ""
    # Epoch 1 is the 1-process run's own: epoch 2 differs from it by the order of the sums only.
    assert_same_run(one_to_two, one_process)


@pytest.mark.slow
def test_shards_are_disjoint_and_cover_the_data(tfds_dir, tmp_path):
    """Each global batch is split between the processes' devices, the epoch's batches are those
    of one process; the test split is sharded so that every example is evaluated once."""
    port, outs = free_port(), [tmp_path / f"p{i}.npz" for i in range(2)]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env.pop("PJRT_NPROC", None)
    procs = [subprocess.Popen([sys.executable, "tests/cluster_worker.py", str(outs[i]), tfds_dir,
                               f"localhost:{port}", "2", str(i)],
                              cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for i in range(2)]
    for rc, out, err in finish_all(procs):
        assert rc == 0, err
    p0, p1 = (np.load(o) for o in outs)
    steps = int(p0["steps"])
    assert steps == STEPS
    for epoch in ("train_epoch0", "train_epoch1"):
        a, b = p0[epoch].tolist(), p1[epoch].tolist()
        assert (len(a), len(b)) == ((steps - 1) * BATCH // 2 + 8, (steps - 1) * BATCH // 2 + 3)
        assert sorted(a + b) == list(range(1003))  # every example once, the last batch's too
    assert set(p0["train_epoch0"].tolist()) != set(p0["train_epoch1"].tolist())
    assert len(p0["test"]) + len(p1["test"]) == 1003 and abs(len(p0["test"]) - len(p1["test"])) <= 1
    assert (collections.Counter(p0["test"].tolist()) + collections.Counter(p1["test"].tolist())
            == collections.Counter(p0["whole_test"].tolist()))


@pytest.mark.slow
def test_a_killed_process_stops_the_others(tfds_dir, tmp_path, capsys):
    """SIGKILL to process 1: process 0 stops within the heartbeat timeout with one line naming
    process 1; the last complete checkpoint restores."""
    workdir = tmp_path / "killed"
    procs = launch(workdir, tfds_dir, 2, "--config.num_epochs=3")
    wait_for(lambda: STEPS in checkpoint_steps(workdir), 240, "the checkpoint of epoch 1")
    procs[1].kill()
    killed_at = time.monotonic()
    (rc0, out0, err0), _ = finish_all(procs, timeout=60)
    took = time.monotonic() - killed_at
    assert rc0 != 0 and took < 30, (took, err0)
    errors = [line for line in err0.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: lost process 1 of the cluster"), err0
    assert "Traceback" not in err0 and "Check failure" not in err0, err0
    run_here(workdir, tfds_dir)
    assert "resuming from checkpoint" in capsys.readouterr().out
    assert records(workdir)[-1]["step"] == 2 * STEPS


def one_line_error(results) -> list[str]:
    lines = []
    for rc, out, err in results:
        assert rc != 0 and "Traceback" not in err, err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, err
        lines.append(errors[0])
    return lines


@pytest.mark.slow
def test_process_id_out_of_range(tfds_dir, tmp_path):
    results = finish_all([launch_train(tmp_path, tfds_dir, "--coordinator_address=localhost:1",
                                       "--num_processes=2", "--process_id=2")])
    assert one_line_error(results)[0].startswith("error: --process_id=2 is out of range")


@pytest.mark.slow
def test_unreachable_coordinator_fails_within_seconds(tfds_dir, tmp_path):
    t0 = time.monotonic()
    results = finish_all([launch_train(tmp_path, tfds_dir,
                                       f"--coordinator_address=localhost:{free_port()}",
                                       "--num_processes=2", "--process_id=1",
                                       "--initialization_timeout=3")])
    assert time.monotonic() - t0 < 60
    assert one_line_error(results)[0].startswith("error: could not join the cluster at localhost:")


@pytest.mark.slow
def test_batch_not_divisible_by_all_devices(tfds_dir, tmp_path):
    lines = one_line_error(finish_all(launch(tmp_path / "w", tfds_dir, 2, "--config.batch_size=6")))
    assert lines[0] == lines[1] and "not divisible by the 4 devices" in lines[0]


@pytest.mark.slow
def test_processes_with_different_configs_refuse_to_start(tfds_dir, tmp_path):
    lines = one_line_error(finish_all(launch(tmp_path / "w", tfds_dir, 2,
                                         per_process={1: ["--config.learning_rate=0.05"]})))
    assert lines[0] == lines[1]
    assert lines[0].startswith("error: process 1 started with a different config than process 0:")
    assert "learning_rate (0.1 vs 0.05)" in lines[0]


def test_a_lone_process_joins_nothing_unless_asked(monkeypatch):
    """No coordinator on a laptop; srun with several tasks, a cluster flag or --distributed
    join; --nodistributed never does."""
    from flaxcnn import cluster

    for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert not cluster.requested(None, None, None, None)
    monkeypatch.setenv("SLURM_NTASKS", "4")  # an salloc shell: not a launch of 4 processes
    assert not cluster.requested(None, None, None, None)
    for name, value in (("SLURM_JOB_ID", "7"), ("SLURM_STEP_NODELIST", "node[1-4]"),
                        ("SLURM_PROCID", "0"), ("SLURM_LOCALID", "0")):
        monkeypatch.setenv(name, value)
    assert cluster.requested(None, None, None, None)
    assert not cluster.requested(False, None, None, None)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert not cluster.requested(None, None, None, None)
    assert cluster.requested(True, None, None, None)
    assert cluster.requested(None, "localhost:1234", 2, 0)


def test_explicit_cluster_flags_come_together():
    from flaxcnn import cluster
    from flaxcnn.errors import UserError

    with pytest.raises(UserError, match="--coordinator_address needs --num_processes and "
                                        "--process_id too"):
        cluster.join(coordinator_address="localhost:1234")
    with pytest.raises(UserError, match="must be HOST:PORT"):
        cluster.join(coordinator_address="localhost", num_processes=2, process_id=0)


GLOO = b"[Gloo] Rank 1 is connected to 1 peer ranks. Expected number of connected peer ranks is : 1"


def filtered(*chunks: bytes, others="process 1") -> tuple[bytes, bytes]:
    """What the output filter lets through of `chunks` written to one of its pipes: (out, err)."""
    from flaxcnn import cluster

    (source_read, source_write), (out_read, out_write), (err_read, err_write) = (
        os.pipe(), os.pipe(), os.pipe())
    for chunk in chunks:
        os.write(source_write, chunk)
    os.close(source_write)
    cluster._run_filter({source_read: out_write}, err_write, "not joined", others)
    os.close(out_write)
    os.close(err_write)
    with os.fdopen(out_read, "rb") as out, os.fdopen(err_read, "rb") as err:
        return out.read(), err.read()


@pytest.mark.parametrize("chunks", [
    (GLOO + b"\n",),
    (GLOO + b"\n", GLOO + b"\n"),
    # two threads' pieces in one line, then both their newlines: nothing of them may show
    (b"[Gloo] Rank 1", b"[Gloo] Rank 1", b" is connected to 1 peer ranks. ",
     b" is connected to 1 peer ranks. ", b"Expected number of connected peer ranks is : ",
     b"Expected number of connected peer ranks is : ", b"1", b"1", b"\n", b"\n"),
    # one thread's newline split its neighbour's message
    (b"[Gloo] Rank 1 is connected to 1 peer ranks. ", GLOO + b"\n",
     b"Expected number of connected peer ranks is : 1\n"),
])
def test_output_filter_drops_gloos_lines_however_its_threads_interleave_them(chunks):
    assert filtered(b"before\n", *chunks, b"after\n") == (b"before\nafter\n", b"")


def test_output_filter_keeps_blank_lines_of_its_own():
    """Only the newlines gloo still owes are dropped (the SIGTERM message starts with one)."""
    assert filtered(GLOO + b"\n", b"\n", b"SIGTERM: finishing\n") == (
        b"\nSIGTERM: finishing\n", b"")
    assert filtered(b"epoch 1\n", b"\n", b"\n") == (b"epoch 1\n\n\n", b"")


def test_output_filter_turns_the_runtimes_abort_into_one_line():
    out, err = filtered(b"epoch 1\n", b"F1128 04:52:50.2 1 coordination_service.cc:1] Task 1 "
                        b"heartbeat timeout\n", b"*** Check failure stack trace: ***\n")
    assert out == b"epoch 1\n"
    assert err.decode().startswith("error: lost process 1 of the cluster") and err.count(b"\n") == 1


# What process 0 of two printed in CI (2026-12-07) when process 1 was killed during a collective:
# gloo threw from its own thread before the heartbeat timeout, and C++ terminated the process.
GLOO_ABORT = (b"terminate called after throwing an instance of 'gloo::EnforceNotMet'\n"
              b"  what():  [enforce fail at external/gloo/gloo/transport/tcp/pair.cc:459] "
              b"op.preamble.length <= op.nbytes. 8 vs 4. Received data size doesn't match expected "
              b"size. Is there a distributed collective mismatch in your code?\n"
              b"Fatal Python error: Aborted\n\n"
              b"Thread 0x00007fdf1c675b80 (most recent call first):\n"
              b'  File "flaxcnn/pipelines.py", line 77 in timed_chunks\n')


@pytest.mark.parametrize("others", ["process 1", "another process"])
def test_output_filter_turns_gloos_abort_into_one_line(others):
    out, err = filtered(b"epoch 1\n", GLOO_ABORT, others=others)
    assert out == b"epoch 1\n" and err.count(b"\n") == 1
    assert err.decode().startswith(f"error: lost {others} of the cluster (killed, crashed or "
                                   "unreachable: a collective with it broke off)"), err


def test_a_process_that_gloo_aborts_prints_one_line():
    """The whole route: a process with the filter in front of its output writes gloo's message and
    aborts as C++'s terminate does; what reaches the terminal is its stdout and the one line."""
    script = ("import os, sys\n"
              "from flaxcnn import cluster\n"
              "cluster._filter_output('not joined', 'process 1')\n"
              "print('epoch 1', flush=True)\n"
              f"os.write(2, {GLOO_ABORT!r})\n"
              "os.abort()\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          timeout=60)
    assert done.returncode == -signal.SIGABRT
    assert done.stdout == b"epoch 1\n"
    assert done.stderr.decode().startswith("error: lost process 1 of the cluster (killed, "
                                           "crashed or unreachable: a collective with it broke "
                                           "off)") and done.stderr.count(b"\n") == 1, done.stderr


def test_the_lost_process_is_named_by_the_cluster_flags(monkeypatch):
    """join hands the filter the one other process of a cluster of two, from the flags."""
    import jax

    from flaxcnn import cluster

    handed = []
    monkeypatch.setattr(cluster, "_filter_output", lambda *args: handed.append(args[1]))
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: None)
    for process_id, num_processes in [(0, 2), (1, 2), (1, 3)]:
        cluster.join(coordinator_address="localhost:1234", num_processes=num_processes,
                     process_id=process_id)
    cluster.join()
    assert handed == ["process 1", "process 0", "another process", "another process"]


# --- an image folder streamed from its cache (the host stream), with TensorFlow hidden -----------

FOLDER_STEPS = math.ceil(123 / BATCH)  # 3 classes x 41 training images: the last step holds 11


@pytest.fixture(scope="module")
def streamed_folder(tmp_path_factory):
    """An image folder of 123 training and 12 test images (PNG and JPEG) in three classes."""
    from image_folders import make_folder, sample_images

    return make_folder(tmp_path_factory.mktemp("stream") / "pictures",
                       sample_images(per_class=41), per_class=(41, 4))


def stream_settings(folder) -> dict:
    """LeNet-BN on the folder, streamed: a device budget of 0 MiB holds nothing on the devices."""
    return {"dataset": f"folder:{folder}", "folder_store_size": 28, "batch_size": BATCH,
            "learning_rate": 0.1, "num_epochs": 1, "device_data_budget_mb": 0, "plots": False,
            "tensorboard": False}


def stream_flags(folder) -> list[str]:
    return [f"--config.{k}={str(v).lower() if isinstance(v, bool) else v}"
            for k, v in stream_settings(folder).items()]


@pytest.fixture(scope="module")
def streamed_here(streamed_folder, tfds_dir, tmp_path_factory):
    """The reference: the streamed folder in one process with 4 devices (this one)."""
    workdir = tmp_path_factory.mktemp("stream") / "one"
    train_to_end(config_of("batchnorm", tfds_dir, **stream_settings(streamed_folder)), workdir)
    return workdir


@pytest.mark.slow
def test_a_streamed_folder_resumes_bit_for_bit_after_sigterm_mid_epoch_without_tensorflow(
        streamed_folder, streamed_here, tfds_dir, tmp_path, capsys):
    process = launch_train(tmp_path, tfds_dir, *stream_flags(streamed_folder), phases=True,
                           hide_tensorflow=True)
    for line in process.stderr:  # the first chunks are single steps: it stops after one or two
        if line.strip() == "flaxcnn-phase: train begin":
            process.send_signal(signal.SIGTERM)
            break
    code, out, err = finish(process)
    assert code == 128 + signal.SIGTERM, err
    assert "input: host stream (grain; --config.input_pipeline" not in out
    assert "input: host stream (grain; 0.3 MiB of uint8 is over the device budget of 0.0 MiB" \
        in out, out
    (step,) = checkpoint_steps(tmp_path)
    assert 0 < step < FOLDER_STEPS, step
    capsys.readouterr()
    train_to_end(config_of("batchnorm", tfds_dir, **stream_settings(streamed_folder)), tmp_path)
    assert f"step {step}, epoch 0 + {step} steps" in capsys.readouterr().out
    assert metrics_without_timing(tmp_path) == metrics_without_timing(streamed_here)
    assert_bit_identical(latest(tmp_path), latest(streamed_here))


@pytest.mark.slow
def test_a_streamed_folder_trains_alike_in_two_processes_without_tensorflow(
        streamed_folder, streamed_here, tfds_dir, tmp_path):
    """2 processes x 2 devices, each reading its devices' part of each step from the cache, train
    as 1 x 4 did, to round-off."""
    port, workdir = free_port(), tmp_path / "two"
    procs = [launch_train(workdir, tfds_dir, *stream_flags(streamed_folder),
                          f"--coordinator_address=localhost:{port}", "--num_processes=2",
                          f"--process_id={i}", "--initialization_timeout=60", devices=2,
                          hide_tensorflow=True) for i in range(2)]
    for rc, out, err in finish_all(procs):
        assert rc == 0, f"exit {rc}\n{out}\n{err}"
    got, want = records(workdir), records(streamed_here)
    assert [(r["epoch"], r["step"], r["test_examples"]) for r in got] == [
        (r["epoch"], r["step"], r["test_examples"]) for r in want] == [(1, FOLDER_STEPS, 12)]
    for g, w in zip(got, want):
        for key in ("train_loss", "test_loss"):
            assert abs(g[key] - w[key]) <= TOLERANCE * max(1.0, abs(w[key])), (key, g, w)
    (step, state), (_, want_state) = final_state(workdir), final_state(streamed_here)
    assert step == FOLDER_STEPS
    differences = [max_abs_difference(state[k], want_state[k]) for k in ("params", "batch_stats")]
    print(f"max |difference| against one process: {differences}")
    assert max(differences) <= TOLERANCE
