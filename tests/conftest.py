"""Shared test setup: four fake CPU devices (so every run tests the multi-device code), and the helpers
and shared runs that the test files use.

Trained runs are the suite's expensive part, so there is one reference run per test session
(`reference_run`, shared by the pytest-xdist workers through a file lock): tests that only read a
finished run read it, and tests that continue or damage a run start from a copy of it, cut back to
an earlier epoch where they need one (`copy_run`). Real `train.py` processes (`launch_train`) are
kept for what needs a process boundary: signals, kills, locks, exit codes and several processes.
"""
import contextlib
import fcntl
import importlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Must happen before jax is imported anywhere in the test session (subprocesses inherit it too).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Runs of the same config compile the same programs: compile each once per machine.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "flaxcnn-tests-jax-cache"))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from flaxcnn import runtime  # noqa: E402

runtime.reserve_cpu_threads_for_collectives()  # 4 devices on a 2-core CI machine (see its docstring)
runtime.use_xla_cpu_convolutions()  # as train.py computes
runtime.use_compilation_cache(os.environ["JAX_COMPILATION_CACHE_DIR"])

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every config but the shared default, and of those the chapter's sections (one each), which train
# Fashion-MNIST (configs/finetune.py is d2l 14.2's experiment on an image folder).
CONFIG_NAMES = sorted(p.stem for p in Path(REPO, "configs").glob("*.py")
                      if p.stem not in ("__init__", "default"))
CHAPTER_CONFIGS = [name for name in CONFIG_NAMES
                   if importlib.import_module(f"configs.{name}").get_config().dataset
                   == "fashion_mnist"]

# The reference run: configs/batchnorm.py (LeNet-BN) on the bundled sample at 28x28, batch 32, so
# 32 steps an epoch (the last of 11 examples) of about a second. Enough epochs for the kill soak's
# plan (test_robustness).
RUN = {"dataset": "fashion_mnist_sample", "batch_size": 32, "learning_rate": 0.1, "num_epochs": 5,
       "max_checkpoints": 5}
STEPS_PER_EPOCH = -(-1003 // RUN["batch_size"])
TIMING_FIELDS = ("examples_per_sec", "epoch_seconds")

# torchvision's larger networks, which the chapter does not train: a check that compiles one of them
# takes seconds to minutes, so it is slow (pytest.ini), or heavy in float64 (test_model_gradients)
LARGER_NETWORKS = frozenset({"vgg13", "vgg16", "vgg19", "resnet34", "tv_resnet34", "resnet50",
                             "resnext50", "inception_v3"})


def slow_for_larger_networks(names) -> list:
    """`names` as pytest parameters, those of LARGER_NETWORKS marked slow."""
    return [pytest.param(name, marks=pytest.mark.slow) if name in LARGER_NETWORKS else name
            for name in names]


# The test files whose modules or classes take longest, longest first (--durations on two cores,
# cold): pytest-xdist hands each module or class to a worker in collection order (pytest.ini), so
# these start first and the short ones fill in around them.
LONGEST_FIRST = ("test_cluster.py", "test_model_gradients.py", "test_readme.py", "test_models.py",
                 "test_notebook.py", "test_export.py", "test_trainer.py", "test_training.py",
                 "test_pretrained.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: LONGEST_FIRST.index(item.path.name)
               if item.path.name in LONGEST_FIRST else len(LONGEST_FIRST))


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """A tfds data_dir for the session: the bundled sample is prepared in it once."""
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))


def config_of(name, tfds_dir, **overrides):
    """configs/<name>.py with quiet, offline defaults and `overrides`."""
    config = importlib.import_module(f"configs.{name}").get_config()
    config.data_dir = tfds_dir
    config.progress = False
    for key, value in overrides.items():
        config[key] = value
    return config


@pytest.fixture
def make_config(tfds_dir):
    """make_config('batchnorm', num_epochs=2, ...): a chapter config with quiet, offline defaults."""
    return lambda name, **overrides: config_of(name, tfds_dir, **overrides)


@pytest.fixture
def run_config(tfds_dir):
    """run_config(num_epochs=2, ...): the reference run's config with overrides."""
    return lambda **overrides: config_of("batchnorm", tfds_dir, **{**RUN, **overrides})


def train_to_end(config, workdir, **kwargs) -> dict:
    """trainer.train_and_evaluate, checking that it returned the run's last recorded line."""
    from flaxcnn import trainer

    record = trainer.train_and_evaluate(config, workdir, **kwargs)
    log = Path(workdir) / ("eval.jsonl" if config.eval_only else "metrics.jsonl")
    assert record == json.loads(log.read_text().splitlines()[-1])
    return record


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """RUN trained to the end, once for all test processes: the run that interrupted ones must
    reproduce bit for bit, and the finished run that tests read. Never write into it: copy_run."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # this session's folder, the same for every xdist worker
    workdir = shared / "reference-run"
    with open(shared / "reference-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (workdir / "done").exists():
            shutil.rmtree(workdir, ignore_errors=True)
            train_to_end(config_of("batchnorm", str(shared / "reference-tfds"), **RUN), workdir)
            (workdir / "done").write_text("")
    return workdir


def copy_run(source, destination, *, epochs=None):
    """A copy of a finished run's workdir; with `epochs`, as it was after that many epochs (its
    later checkpoints and metrics lines dropped). Returns the destination."""
    destination = Path(destination)
    shutil.copytree(source, destination, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("done", ".flaxcnn-lock"))
    if epochs is not None:
        kept = [record for record in metrics(destination) if record["epoch"] <= epochs]
        for step in checkpoint_steps(destination):
            if step > kept[-1]["step"]:
                shutil.rmtree(destination / "checkpoints" / str(step))
        (destination / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    return destination


# --- train.py in this process, and as a process -------------------------------------------


def train_here(argv: list[str], monkeypatch) -> tuple[int, str, str]:
    """`python train.py ARGS` in this process: train.py's own flag parsing and main, without a
    second start-up of JAX; returns (exit code, stdout, stderr) as the process would have them
    (a sys.exit message is printed on stderr, as Python does)."""
    import train

    for name in [name for name in train.FLAGS if name.startswith("config.")]:
        delattr(train.FLAGS, name)  # ml_collections defines one per config field at each parse
    train.FLAGS.unparse_flags()
    monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads the --config.* overrides here
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = train.main(train.parse_flags(argv))
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
            if isinstance(exit.code, str):
                print(exit.code, file=sys.stderr)
    return code, out.getvalue(), err.getvalue()



def launch_train(workdir, tfds_dir, *extra, devices=4, phases=False, hide_tensorflow=False,
                 stderr=subprocess.PIPE, **popen):
    """`python train.py` on RUN (--config.* overrides in `extra`) as a process of its own, with
    `devices` fake CPU devices. With `phases`, through tests/phase_markers.py, which prints where
    the run is on stderr; with `hide_tensorflow`, through tests/without_tensorflow.py."""
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.pop("PJRT_NPROC", None)  # each process sizes XLA's threads for its own devices
    program = ["tests/phase_markers.py"] if phases else ["train.py"]
    if hide_tensorflow:
        program = ["tests/without_tensorflow.py", *program]
    return subprocess.Popen(
        [sys.executable, *program, "--config", "configs/batchnorm.py", "--config.progress=false",
         *(f"--config.{k}={v}" for k, v in RUN.items()), f"--config.data_dir={tfds_dir}",
         f"--workdir={workdir}", *extra], cwd=REPO, env=env, text=True,
        stdout=popen.pop("stdout", subprocess.PIPE), stderr=stderr, **popen)


def finish(process, timeout=300):
    """(exit code, stdout, stderr) of a launched process, once it ended."""
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def wait_for_epochs(workdir, count, process, timeout=240):
    """Until `count` epochs are in the run's metrics.jsonl (the process must stay alive)."""
    metrics = Path(workdir) / "metrics.jsonl"
    deadline = time.time() + timeout
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= count):
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, f"no epoch {count} in {workdir}"
        time.sleep(0.05)


def wait_for_checkpoint(path, process, timeout=120):
    """Until checkpoint `path` is complete: Orbax writes it in the background, in a temporary
    folder that it renames to the step once everything is written."""
    deadline = time.time() + timeout
    while not Path(path).is_dir():
        assert process.poll() is None and time.time() < deadline, f"no checkpoint {path}"
        time.sleep(0.05)


def interrupt_twice(process):
    """Ctrl-C, and once the run said it is stopping, Ctrl-C again (two signals that arrive before
    Python runs its handler count as one)."""
    process.send_signal(signal.SIGINT)
    acknowledged = process.stderr.readline()
    while acknowledged and "finishing the current steps" not in acknowledged:
        acknowledged = process.stderr.readline()
    process.send_signal(signal.SIGINT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


# --- what a run left ------------------------------------------------------------------------


def metrics(workdir) -> list[dict]:
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def metrics_without_timing(workdir) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in TIMING_FIELDS}
            for record in metrics(workdir)]


def latest(workdir) -> dict:
    """The state tree of the newest checkpoint, read back without a target structure."""
    from flaxcnn import checkpoint

    with checkpoint.Checkpoints(workdir) as checkpoints:
        step = checkpoints.manager.latest_step()
        return checkpoints.manager.restore(step)["state"]


def checkpoint_steps(workdir) -> list[int]:
    folder = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) \
        if folder.is_dir() else []


def assert_bit_identical(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def max_abs_difference(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


# --- small states and data for the step functions ------------------------------------------


def sample_test_images():
    """The bundled sample's test split as uint8 (N, 28, 28, 1) images and their labels."""
    from flaxcnn.datasets import SAMPLE_DIR, idx

    split = idx.read_split(SAMPLE_DIR, "test")
    return split.images[..., None], split.labels


def images_and_labels(n, seed=0, shape=(12, 12, 1)):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, *shape), dtype=np.uint8),
            rng.integers(0, 10, n).astype(np.int32))


def float64_steps(state, batches, num_devices, sync_batch_stats=True):
    """Train steps of a TrainState (of a float64 model) as the stream pipeline compiles them
    (training.make_train_batch), in float64 (call inside `jax.enable_x64(True)`), on
    `num_devices` devices, augmentation off.
    `batches`: (uint8 images (B, 28, 28, 1), labels (B,), mask (B,)) per step. Returns, after
    each step, (the train state, the step's totals) on the host."""
    import jax.numpy as jnp

    from flaxcnn import replicas, training

    devices = jax.devices()[:num_devices]
    batch = len(batches[0][1])
    cfg = training.StepConfig(image_size=28, dtype=jnp.float64,
                              batch_per_device=batch // num_devices,
                              eval_batch_per_device=batch // num_devices,
                              sync_batch_stats=sync_batch_stats)
    step = training.make_train_batch(cfg, devices)
    state = state.replace(**{part: jax.tree.map(lambda a: np.asarray(a, np.float64),
                                                getattr(state, part))
                             for part in ("params", "batch_stats", "opt_state")})
    run = training.RunState.fresh(state, seed=0)
    results = []
    for arrays in batches:
        run = replicas.replicate(run.replace(totals=training.zero_totals()), devices)
        run = step(run, *(np.reshape(a, (num_devices, -1, *np.shape(a)[1:])) for a in arrays))
        run = replicas.unreplicate(run)
        results.append((run.train, run.totals))
    return results


def lenet_state(lr=0.1, optimizer="momentum", dtype=None, sync_batch_stats=True, freeze="none"):
    """LeNet-BN's TrainState for 28x28 one-channel images (with freeze="backbone", only its final
    classifier trains)."""
    import jax.numpy as jnp

    from flaxcnn import models, optimizers, training

    tx, _ = optimizers.create_optimizer(optimizer=optimizer, learning_rate=lr, freeze=freeze,
                                        head_paths=models.head_paths("lenet_bn"))
    return training.create_train_state("lenet_bn", tx, input_shape=(28, 28, 1),
                                       dtype=dtype or jnp.float32,
                                       sync_batch_stats=sync_batch_stats)
