"""Installing flaxcnn into a Colab runtime (or any notebook) without disturbing what it preinstalled.

Colab's runtimes come with jax, flax, optax, orbax, numpy and tfds; its GPU runtime also has a
full TensorFlow, its TPU runtime none. Installing flaxcnn's requirements on top of them could upgrade
jax without its jaxlib and CUDA/TPU plugin, or move the runtime's TensorFlow or numpy.
So the notebook installs from a plan instead:

* the runtime's jax stays if it is recent enough for flaxcnn (pyproject.toml's floor) and jax,
  jaxlib and the runtime's plugin (CUDA on a GPU, libtpu on a TPU) are one release; otherwise they are
  installed together, `jax[cuda12]==X` / `jax[tpu]==X` / `jax==X`, never one of them alone;
* TensorFlow is never installed (only the tf.data stream needs it, pyproject.toml's `stream` extra;
  the TPU runtime has none and trains without it); one that is there is pinned so pip cannot move it;
* of the other requirements, only those missing or older than pyproject.toml's floor are installed,
  with the runtime's jax, jaxlib, TensorFlow and numpy pinned so pip's resolver cannot move them;
  a preinstalled release newer than the tested range is kept (with a note), not downgraded;
* flaxcnn itself: `pip install --no-deps -e .`.

`install_plan` is the pure part (the runtime and the installed versions in, pip argument lists out);
`install` detects, plans, runs pip with its output streamed, and says when the runtime must restart.
Only the standard library and `packaging` (pip's own copy where it is not installed) are imported.
"""
from __future__ import annotations

import glob
import importlib
import importlib.metadata
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Callable, Iterable, Mapping

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:  # pragma: no cover - every pip carries it
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import Version

RUNTIMES = ("cpu", "gpu", "tpu")
# Distributions that provide the `tensorflow` package: at most one may be installed.
TENSORFLOW_DISTS = ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel",
                    "tensorflow-macos", "tensorflow-aarch64", "intel-tensorflow", "tf-nightly",
                    "tf-nightly-cpu")
CUDA_PLUGINS = ("jax-cuda12-plugin", "jax-cuda13-plugin")
TPU_PLUGINS = ("libtpu", "libtpu-nightly")
# Moved together with jax when it must be upgraded: flax, optax and orbax track jax's releases.
JAX_COMPANIONS = ("flax", "optax", "orbax-checkpoint")


def detect_runtime(environ: Mapping[str, str] | None = None,
                   which: Callable[[str], str | None] = shutil.which,
                   paths: Callable[[str], list[str]] = glob.glob) -> str:
    """'tpu', 'gpu' or 'cpu', without importing jax (which may be about to be replaced).

    A TPU: Colab's or a TPU VM's environment variables, or its device files (/dev/accel* on v2-v4,
    /dev/vfio/<n> on v5e and later). A GPU: nvidia-smi on PATH or an NVIDIA device file.
    """
    env = os.environ if environ is None else environ
    if any(env.get(k) for k in ("COLAB_TPU_ADDR", "TPU_NAME", "TPU_ACCELERATOR_TYPE")) or \
            paths("/dev/accel*") or [p for p in paths("/dev/vfio/*") if p.rsplit("/", 1)[-1].isdigit()]:
        return "tpu"
    if which("nvidia-smi") or paths("/dev/nvidia[0-9]*"):
        return "gpu"
    return "cpu"


def installed_versions() -> dict[str, str]:
    """{canonical distribution name: version} of everything this interpreter can import from."""
    versions = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and canonicalize_name(name) not in versions:
            versions[canonicalize_name(name)] = dist.version
    return versions


def project_requirements(root: str | Path = ".") -> list[str]:
    """pyproject.toml's `dependencies`, as written (markers included)."""
    with open(Path(root) / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def lock_versions(root: str | Path = ".") -> dict[str, str]:
    """requirements.txt's exact pins: {canonical name: version}."""
    pins = {}
    for line in (Path(root) / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[canonicalize_name(name.strip())] = version.strip()
    return pins


def too_old(version: str, requirement: Requirement) -> bool:
    """Whether `version` fails one of the requirement's lower bounds (its upper bounds are ignored)."""
    lower = [s for s in requirement.specifier if s.operator in (">=", ">", "==", "~=", "===")]
    return not all(s.contains(version, prereleases=True) for s in lower)


def above_range(version: str, requirement: Requirement) -> bool:
    return not too_old(version, requirement) and not requirement.specifier.contains(
        version, prereleases=True)


def _spec(requirement: Requirement) -> str:
    """name[extras]specifier, without the marker (already evaluated) or spaces."""
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    return f"{requirement.name}{extras}{requirement.specifier}"


def _jax_extra(runtime: str) -> str:
    return {"gpu": "jax[cuda12]", "tpu": "jax[tpu]", "cpu": "jax"}[runtime]


def jax_problem(runtime: str, installed: Mapping[str, str], requirement: Requirement) -> str | None:
    """Why the runtime's jax cannot be kept as it is, or None if it can."""
    jax = installed.get("jax")
    if jax is None:
        return "jax is not installed"
    if too_old(jax, requirement):
        return f"jax {jax} is older than flaxcnn needs ({requirement.specifier})"
    jaxlib = installed.get("jaxlib")
    if jaxlib != jax:
        return f"jaxlib {jaxlib or '(none)'} is not jax {jax}'s release"
    if runtime == "gpu":
        plugins = {name: installed[name] for name in CUDA_PLUGINS if name in installed}
        if not plugins:
            return "no CUDA plugin for jax"
        if any(v != jax for v in plugins.values()):
            return ", ".join(f"{n} {v}" for n, v in plugins.items()) + f" is not jax {jax}'s release"
    if runtime == "tpu" and not any(name in installed for name in TPU_PLUGINS):
        return "no libtpu for jax"
    return None


def install_plan(runtime: str, installed: Mapping[str, str], requirements: Iterable[str],
                 lock: Mapping[str, str], project: str = ".") -> tuple[list[list[str]], list[str]]:
    """The pip commands (argument lists after `python -m pip`) that make flaxcnn run here, and notes.

    runtime: 'cpu', 'gpu' or 'tpu'. installed: {canonical name: version} (see installed_versions).
    requirements: pyproject.toml's dependencies. lock: requirements.txt's pins, the jax stack installed
    when the runtime's must be replaced.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
    installed = {canonicalize_name(k): v for k, v in installed.items()}
    lock = {canonicalize_name(k): v for k, v in lock.items()}
    requirements = [Requirement(r) for r in requirements]
    requirements = [r for r in requirements if r.marker is None or r.marker.evaluate()]
    by_name = {canonicalize_name(r.name): r for r in requirements}
    commands, notes = [], []
    jax_command, jax_pins, new_jax = _plan_jax(runtime, installed, by_name["jax"], lock, notes)
    tf_pins = _plan_tensorflow(installed, notes)
    if jax_command:
        if new_jax:  # the new jax's numpy and ml_dtypes must still suit the runtime's TF
            jax_command += [f"{n}=={v}" for n, v in tf_pins.items()]
        commands.append(jax_command)
    wanted, upgraded = _plan_others(requirements, installed, lock, new_jax, notes)
    if wanted:
        pins = {**jax_pins, **tf_pins}
        if "numpy" in installed and "numpy" not in upgraded and not new_jax:
            pins["numpy"] = installed["numpy"]
        commands.append(["install", *wanted, *(f"{n}=={v}" for n, v in pins.items())])
    if upgraded:
        notes.append("upgrading " + ", ".join(f"{n} {installed[n]}" for n in upgraded))
    commands.append(["install", "--no-deps", "-e", project])  # flaxcnn itself, nothing else
    return commands, notes


def _plan_jax(runtime: str, installed: Mapping[str, str], requirement: Requirement,
              lock: Mapping[str, str], notes: list[str]):
    """jax, jaxlib and the plugin: kept, or moved together. (pip command or None, the pins that
    keep them, whether jax is replaced by the lock's)."""
    problem = jax_problem(runtime, installed, requirement)
    if problem is None:
        notes.append(f"keeping the runtime's jax {installed['jax']}")
        return None, {"jax": installed["jax"], "jaxlib": installed["jaxlib"]}, False
    jax = installed.get("jax")
    new_jax = jax is None or too_old(jax, requirement)
    target = lock["jax"] if new_jax else jax  # else the same release, made whole
    command = ["install", f"{_jax_extra(runtime)}=={target}"]
    if runtime == "cpu":
        command.append(f"jaxlib=={target}")
    if new_jax:  # a new jax needs the flax, optax and orbax of its own time
        command += [f"{name}=={lock[name]}" for name in JAX_COMPANIONS if name in lock]
    notes.append(f"{problem}: installing {' '.join(command[1:])}")
    return command, {"jax": target, "jaxlib": target}, new_jax


def _plan_tensorflow(installed: Mapping[str, str], notes: list[str]) -> dict[str, str]:
    """The runtime's TensorFlow, pinned so that pip cannot move it; none is installed (only the
    tf.data stream needs it: the `stream` extra)."""
    present = [name for name in TENSORFLOW_DISTS if name in installed]
    if len(present) > 1:
        notes.append("several TensorFlow distributions share one tensorflow/ folder: "
                     + ", ".join(f"{n} {installed[n]}" for n in present)
                     + "; uninstall all but one (flaxcnn installs none beside them)")
    if not present:
        notes.append("no TensorFlow: installing none (only tfds datasets stored as tfrecord need "
                     'it: pip install "flaxcnn[stream]")')
        return {}
    notes.append(f"keeping the runtime's {present[0]} {installed[present[0]]}")
    return {present[0]: installed[present[0]]}


def _plan_others(requirements, installed: Mapping[str, str], lock: Mapping[str, str],
                 new_jax: bool, notes: list[str]) -> tuple[list[str], list[str]]:
    """Everything else pyproject.toml asks for: only what is missing or too old (wanted, upgraded)."""
    wanted, upgraded = [], []
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name == "jax" or (new_jax and name in JAX_COMPANIONS and name in lock):
            continue  # installed with jax
        version = installed.get(name)
        if version is None or too_old(version, requirement):
            wanted.append(_spec(requirement))
            if version is not None:
                upgraded.append(name)
        elif above_range(version, requirement):
            notes.append(f"keeping the runtime's {name} {version}, newer than tested "
                         f"({requirement.specifier})")
    return wanted, upgraded


def _run_pip(args: list[str]) -> None:
    """python -m pip ARGS, its output printed line by line as it comes (a notebook shows it live)."""
    quiet = ["--quiet"] if args[:1] == ["install"] else []  # installs: errors and warnings only
    command = [sys.executable, "-m", "pip", *args[:1], *quiet, "--disable-pip-version-check",
               *args[1:]]
    print("$ pip", shlex.join(args), flush=True)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
    if process.returncode:
        raise RuntimeError(f"pip {' '.join(args)} failed (exit code {process.returncode})")


def install(root: str | Path = ".", runtime: str | None = None, dry_run: bool = False) -> list[list[str]]:
    """Detects the runtime, plans the install (install_plan), runs it, and reports what it did."""
    runtime = runtime or detect_runtime()
    before = installed_versions()
    commands, notes = install_plan(runtime, before, project_requirements(root), lock_versions(root),
                                   project=str(root))
    print(f"runtime: {runtime}")
    for note in notes:
        print(" -", note)
    if dry_run:
        for args in commands:
            print("$ pip", shlex.join(args))
        return commands
    for args in commands:
        _run_pip(args)
    importlib.invalidate_caches()
    after = installed_versions()
    changed = sorted(n for n in before if n in after and after[n] != before[n])
    print("installed:", ", ".join(f"{n} {after[n]}" for n in
                                  ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy",
                                   *(d for d in TENSORFLOW_DISTS if d in after),
                                   "tensorflow-datasets") if n in after))
    stale = _imported(changed)
    if stale:
        print(f"RESTART the runtime (Runtime -> Restart session) and run this cell again: "
              f"{', '.join(stale)} changed after this process imported it.")
    return commands


def _imported(dists: Iterable[str]) -> list[str]:
    """Those of these distributions whose top-level modules this process has already imported."""
    modules = {}
    for module, names in importlib.metadata.packages_distributions().items():
        for name in names:
            modules.setdefault(canonicalize_name(name), []).append(module)
    return [d for d in dists if any(m in sys.modules for m in modules.get(d, []))]
