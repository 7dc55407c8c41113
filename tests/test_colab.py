"""flaxcnn/colab.py: the notebook's install plan for Colab's GPU, TPU and CPU runtimes.

The plans are computed from this checkout's real pyproject.toml and requirements.txt, so these tests
also check that its floors admit what Colab preinstalls. The last test is opt-in (FLAXCNN_COLAB_VENV,
a prepared Python 3.13 venv emulating Colab's GPU runtime, see its docstring): it runs the notebook's
install cell with pip against the package index, then the whole notebook, in a copy of that venv.
Preparing one (about 1 GB, a few minutes; numpy 2.1 is the oldest with Python 3.13 wheels):

    python3.13 -m venv /work/venv-colab && /work/venv-colab/bin/python -m pip install \
        --prefer-binary --only-binary=numpy,tensorflow,jaxlib "tensorflow==2.20.*" jax==0.7.2 \
        jaxlib==0.7.2 flax==0.11.2 orbax-checkpoint==0.12.4 tensorflow-datasets==4.9.10 optax==0.2.5 \
        "numpy<2.2" "matplotlib<3.11" "tqdm<4.68" "absl-py<2" ipykernel pillow
    FLAXCNN_COLAB_VENV=/work/venv-colab python -m pytest -q -s tests/test_colab.py -k emulated
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement

from flaxcnn import colab
from tests.conftest import REPO

REQUIREMENTS = colab.project_requirements(REPO)
LOCK = colab.lock_versions(REPO)

# What Colab preinstalls (Aug 2026, Python 3.13), in its GPU and its TPU runtime.
COLAB_COMMON = {"jax": "0.7.2", "jaxlib": "0.7.2", "flax": "0.11.2", "optax": "0.2.5",
                "orbax-checkpoint": "0.12.4", "chex": "0.1.90", "numpy": "2.1.3",
                "tensorflow-datasets": "4.9.10", "matplotlib": "3.10.9", "tqdm": "4.67.1",
                "absl-py": "1.4.0", "importlib-resources": "6.5.2", "pip": "25.1"}
COLAB_GPU = {**COLAB_COMMON, "jax-cuda12-plugin": "0.7.2", "jax-cuda12-pjrt": "0.7.2",
             "tensorflow": "2.20.0", "tensorboard": "2.20.0", "keras": "3.10.0"}
COLAB_TPU = {**COLAB_COMMON, "libtpu": "0.0.21"}


def plan(runtime, installed, **kwargs):
    commands, notes = colab.install_plan(runtime, installed, REQUIREMENTS, LOCK, **kwargs)
    return commands, notes


def requested(commands) -> dict:
    """{name: specifier string} over every install command (later ones win)."""
    out = {}
    for command in commands:
        for arg in command[1:]:
            if not arg.startswith("-") and arg != ".":
                r = Requirement(arg)
                out[colab.canonicalize_name(r.name)] = (str(r.specifier), r.extras)
    return out


def assert_sound(commands, installed):
    """The invariants of every plan: one TensorFlow, and jax/jaxlib/plugin in one release."""
    for command in commands:
        names = {colab.canonicalize_name(Requirement(a).name): Requirement(a) for a in command[1:]
                 if not a.startswith("-") and a != "."}
        tf = [n for n in names if n in colab.TENSORFLOW_DISTS]
        present = [n for n in colab.TENSORFLOW_DISTS if n in installed]
        assert not (present and tf and tf != present[:1]), f"a second TensorFlow: {command}"
        if "jaxlib" in names or any(n.startswith("jax-cuda") or n.startswith("libtpu") for n in names):
            assert "jax" in names, f"jaxlib or a plugin without jax: {command}"
        if "jax" in names:
            jax = str(names["jax"].specifier)
            assert jax.startswith("=="), f"jax not pinned to one release: {command}"
            if "jaxlib" in names:
                assert str(names["jaxlib"].specifier) == jax, command
    assert commands[-1] == ["install", "--no-deps", "-e", "."]


def test_colab_gpu_keeps_its_jax_tensorflow_and_numpy_and_adds_only_what_is_missing():
    commands, notes = plan("gpu", COLAB_GPU)
    assert_sound(commands, COLAB_GPU)
    assert len(commands) == 2
    wanted = requested(commands[:1])
    # Missing or below the floor: installed. Nothing of the jax stack, no TensorFlow of any name.
    assert {"ml-collections", "importlib-resources", "absl-py", "matplotlib", "tqdm"} <= set(wanted)
    for name in ("flax", "optax", "orbax-checkpoint", "tensorflow-datasets", "tensorboard",
                 "tensorflow-cpu", "jax-cuda12-plugin"):
        assert name not in wanted, name
    # The runtime's releases are pinned in the same command, so pip's resolver cannot move them.
    assert wanted["jax"][0] == "==0.7.2" and wanted["jaxlib"][0] == "==0.7.2"
    assert wanted["tensorflow"][0] == "==2.20.0" and wanted["numpy"][0] == "==2.1.3"
    assert "keeping the runtime's jax 0.7.2" in notes
    assert "keeping the runtime's tensorflow 2.20.0" in notes


def test_colab_tpu_installs_no_tensorflow_and_keeps_its_jax():
    commands, notes = plan("tpu", COLAB_TPU)
    assert_sound(commands, COLAB_TPU)
    assert len(commands) == 2
    wanted = requested(commands)
    assert not [n for n in wanted if n in colab.TENSORFLOW_DISTS] and "libtpu" not in wanted
    assert "tensorboard" in wanted  # the TensorBoard writer, which needs no TensorFlow
    assert wanted["jax"][0] == "==0.7.2" and wanted["jaxlib"][0] == "==0.7.2"
    assert any(n.startswith("no TensorFlow: installing none") for n in notes)


def test_a_runtimes_tensorflow_of_any_release_is_kept_and_pinned():
    installed = {**COLAB_GPU, "tensorflow": "2.15.1"}
    commands, notes = plan("gpu", installed)
    assert_sound(commands, installed)
    wanted = requested(commands)
    assert wanted["tensorflow"][0] == "==2.15.1" and "tensorflow-cpu" not in wanted
    assert "keeping the runtime's tensorflow 2.15.1" in notes


def test_a_missing_plugin_is_added_at_the_runtimes_own_jax_release():
    for runtime, installed, extra in [
            ("gpu", {k: v for k, v in COLAB_GPU.items() if not k.startswith("jax-cuda")}, "cuda12"),
            ("tpu", {k: v for k, v in COLAB_TPU.items() if k != "libtpu"}, "tpu")]:
        commands, notes = plan(runtime, installed)
        assert_sound(commands, installed)
        assert commands[0] == ["install", f"jax[{extra}]==0.7.2"]  # flax, optax, orbax untouched
        assert requested(commands[1:2])["jax"][0] == "==0.7.2"


def test_a_half_upgraded_jax_is_made_whole_at_jaxs_release():
    for changed in ({"jaxlib": "0.7.1"}, {"jax-cuda12-plugin": "0.7.1"}):
        installed = {**COLAB_GPU, **changed}
        commands, notes = plan("gpu", installed)
        assert_sound(commands, installed)
        assert commands[0] == ["install", "jax[cuda12]==0.7.2"]
        assert any("is not jax 0.7.2's release" in n for n in notes)


@pytest.mark.parametrize("runtime,first", [
    ("gpu", ["jax[cuda12]=={jax}"]), ("tpu", ["jax[tpu]=={jax}"]), ("cpu", ["jax=={jax}", "jaxlib=={jax}"])])
def test_an_old_jax_moves_with_jaxlib_plugin_flax_optax_and_orbax_to_the_lock(runtime, first):
    installed = {**(COLAB_TPU if runtime == "tpu" else COLAB_GPU), "jax": "0.4.33", "jaxlib": "0.4.33",
                 "jax-cuda12-plugin": "0.4.33", "flax": "0.8.5", "optax": "0.2.3"}
    if runtime == "cpu":
        installed = {k: v for k, v in installed.items() if not k.startswith("jax-cuda")}
    commands, notes = plan(runtime, installed)
    assert_sound(commands, installed)
    jax = LOCK["jax"]
    # The runtime's TensorFlow (GPU runtime) is pinned, so the new jax cannot move its numpy away.
    tensorflow = [] if runtime == "tpu" else ["tensorflow==2.20.0"]
    assert commands[0] == ["install", *(f.format(jax=jax) for f in first),
                           f"flax=={LOCK['flax']}", f"optax=={LOCK['optax']}",
                           f"orbax-checkpoint=={LOCK['orbax-checkpoint']}", *tensorflow]
    rest = requested(commands[1:2])
    assert rest["jax"][0] == f"=={jax}" and rest["jaxlib"][0] == f"=={jax}"
    assert "flax" not in rest and "optax" not in rest
    assert "numpy" not in rest  # the new jax may have moved numpy: not pinned back
    assert any("jax 0.4.33 is older than flaxcnn needs" in n for n in notes)


def test_a_bare_machine_gets_the_locks_jax_and_every_requirement():
    installed = {"pip": "25.1"}
    commands, notes = plan("cpu", installed)
    assert_sound(commands, installed)
    assert commands[0][:3] == ["install", f"jax=={LOCK['jax']}", f"jaxlib=={LOCK['jax']}"]
    wanted = requested(commands[1:2])
    expected = {colab.canonicalize_name(Requirement(r).name) for r in REQUIREMENTS
                if Requirement(r).marker is None or Requirement(r).marker.evaluate()}
    assert expected - {"jax", "flax", "optax", "orbax-checkpoint"} <= set(wanted)


def test_the_pinned_lock_needs_nothing_but_flaxcnn_itself():
    installed = {**LOCK, "jaxlib": LOCK["jax"]}
    commands, notes = plan("cpu", installed)
    assert commands == [["install", "--no-deps", "-e", "."]]


def test_older_than_the_floor_is_upgraded_newer_than_tested_is_kept():
    installed = {**COLAB_GPU, "numpy": "1.26.4", "flax": "0.13.1", "clu": "0.0.12",
                 "ml-collections": "1.1.0"}
    commands, notes = plan("gpu", installed)
    wanted = requested(commands)
    assert wanted["numpy"][0].startswith("<2.6,>=2.")  # upgraded, so not pinned at 1.26.4
    assert "flax" not in wanted
    assert any("numpy 1.26.4" in n and n.startswith("upgrading") for n in notes)
    assert any("keeping the runtime's flax 0.13.1, newer than tested" in n for n in notes)


def test_unknown_runtime_is_refused():
    with pytest.raises(ValueError, match="runtime must be one of"):
        plan("ipu", COLAB_GPU)


@pytest.mark.parametrize("environ,commands,devices,expected", [
    ({"COLAB_TPU_ADDR": "10.0.0.2:8470"}, {}, [], "tpu"),
    ({"TPU_ACCELERATOR_TYPE": "v5litepod-1"}, {}, [], "tpu"),
    ({}, {}, ["/dev/accel0"], "tpu"),
    ({}, {}, ["/dev/vfio/0", "/dev/vfio/vfio"], "tpu"),
    ({}, {}, ["/dev/vfio/vfio"], "cpu"),
    ({}, {"nvidia-smi": "/usr/bin/nvidia-smi"}, [], "gpu"),
    ({}, {}, ["/dev/nvidia0"], "gpu"),
    ({"COLAB_GPU": ""}, {}, [], "cpu"),
])
def test_detect_runtime(environ, commands, devices, expected):
    def paths(pattern):
        prefix = pattern.rstrip("*").split("[")[0]
        return [d for d in devices if d.startswith(prefix)]

    assert colab.detect_runtime(environ, which=commands.get, paths=paths) == expected


def test_install_dry_run_in_this_environment_plans_only_flaxcnn(capsys):
    """This environment (the pinned lock, or CI's newest releases) already has every requirement."""
    assert colab.install(REPO, runtime="cpu", dry_run=True) == [["install", "--no-deps", "-e", REPO]]
    out = capsys.readouterr().out
    assert "runtime: cpu" in out and f"$ pip install --no-deps -e {REPO}" in out


def test_pip_output_streams_and_a_failure_raises(capsys):
    colab._run_pip(["list", "--format=freeze"])
    out = capsys.readouterr().out
    assert out.startswith("$ pip list") and "\npytest==" in out
    with pytest.raises(RuntimeError, match="failed"):
        colab._run_pip(["install", "--no-index", "--find-links", os.devnull, "flaxcnn-no-such-package"])


def test_the_notebook_installs_through_the_plan():
    notebook = nbformat.read(Path(REPO) / "notebooks" / "colab_quickstart.ipynb", as_version=4)
    first = notebook.cells[1].source
    assert "colab.install()" in first and "requirements.txt" not in first
    assert "\"pip\"" not in first  # no pip call of its own beside the plan


# --- Opt-in: the install cell and the notebook in an emulated Colab runtime -----------------------

EMULATED = os.environ.get("FLAXCNN_COLAB_VENV")


def venv_python(venv: Path, code: str) -> str:
    result = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True,
                            text=True, env={k: v for k, v in os.environ.items()
                                            if k not in ("PYTHONPATH", "XLA_FLAGS")})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


VERSIONS = ("import importlib.metadata as m, json\n"
            "print(json.dumps({d.metadata['Name'].lower().replace('_', '-'): d.version"
            " for d in m.distributions()}))")


@pytest.mark.skipif(not EMULATED, reason="opt-in: FLAXCNN_COLAB_VENV=<a venv emulating Colab's "
                    "GPU runtime: Python 3.13, tensorflow 2.20, jax/jaxlib 0.7.2, flax 0.11.2, "
                    "orbax-checkpoint 0.12.4, optax 0.2.5, tensorflow-datasets 4.9.10, ipykernel>")
@pytest.mark.parametrize("without_tensorflow", [False, True],
                         ids=["gpu-runtime", "tpu-runtime-without-tensorflow"])
def test_emulated_colab_runtime_install_cell_then_notebook(tmp_path, monkeypatch, without_tensorflow):
    """A hard-linked copy of the prepared venv (the original stays pristine for the next run), less
    its TensorFlow for the TPU runtime's case; a git repository of this working tree as REPO_URL; the
    notebook from an empty folder, as on Colab: its first cell clones and installs (pip against the
    package index), the rest trains (on the CPU: the plan's accelerator parts are unit-tested)."""
    venv = tmp_path / "venv"
    subprocess.run(["cp", "-al", EMULATED, str(venv)], check=True)
    before = json.loads(venv_python(venv, VERSIONS))
    if without_tensorflow:
        present = [n for n in colab.TENSORFLOW_DISTS if n in before]
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "uninstall", "-q", "-y", *present],
                       check=True)
        before = json.loads(venv_python(venv, VERSIONS))
        assert not [n for n in colab.TENSORFLOW_DISTS if n in before]

    source = tmp_path / "origin"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    for name in filter(None, files):
        if (Path(REPO) / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(REPO) / name, source / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(source)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "snapshot"], check=True)

    kernels = tmp_path / "jupyter" / "kernels" / "colab"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(venv / "bin" / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "emulated Colab", "language": "python"}))
    content = tmp_path / "content"  # Colab's /content
    content.mkdir()
    # The kernel's environment: this one without the test session's jax settings (Colab has none).
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "XLA_FLAGS", "JAX_PLATFORMS", "JAX_COMPILATION_CACHE_DIR")}
    env.update(FLAXCNN_REPO_URL=str(source), TFDS_DATA_DIR=str(tmp_path / "tfds"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    from nbclient import NotebookClient

    notebook = nbformat.read(Path(REPO) / "notebooks" / "colab_quickstart.ipynb", as_version=4)
    NotebookClient(notebook, timeout=1200, kernel_name="colab",
                   resources={"metadata": {"path": str(content)}}).execute(env=env)
    text = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                   for o in c.outputs)
    (tmp_path / "notebook-output.txt").write_text(text)
    print(text)

    after = json.loads(venv_python(venv, VERSIONS))
    tf_dists = [n for n in colab.TENSORFLOW_DISTS if n in after]
    if without_tensorflow:
        assert tf_dists == []  # the chapter's configs train without it
    else:
        assert tf_dists == [d for d in colab.TENSORFLOW_DISTS if d in before] and len(tf_dists) == 1
        assert after[tf_dists[0]] == before[tf_dists[0]]
    for name in ("jax", "jaxlib", "numpy", "flax", "optax", "orbax-checkpoint"):
        assert after[name] == before[name], name
    if tf_dists:
        assert venv_python(venv, "import tensorflow as tf; print(tf.__version__)").strip() == \
            after[tf_dists[0]]
    assert venv_python(venv, "import jax, jaxlib; print(jax.__version__, jaxlib.__version__)"
                       ).split() == [before["jax"], before["jaxlib"]]
    assert "flaxcnn" in after and "ml-collections" in after
    assert f"working in {content / 'flaxcnn'}" in text
    assert "epoch 10/10" in text and "after 10 epochs: test accuracy 0." in text
    assert (content / "flaxcnn" / "runs" / "quickstart-cpu" / "checkpoints").is_dir()
