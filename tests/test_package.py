"""pyproject.toml: `pip install .` gives an importable flaxcnn with its bundled sample, from anywhere."""
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import REPO

SAMPLE_FILES = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]


def source_copy(tmp_path) -> Path:
    """What the package is built from, copied, so the build leaves nothing in the checkout."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(Path(REPO) / name, source / name)
    shutil.copytree(Path(REPO) / "flaxcnn", source / "flaxcnn",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return source


def pip_install(*args):
    # Offline: no dependencies, and the build backend from this environment when it has one.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet",
                             "--disable-pip-version-check", *isolation, *args],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_installed_package_imports_from_outside_the_checkout_with_its_sample(tmp_path):
    target = tmp_path / "site"
    pip_install("--target", str(target), str(source_copy(tmp_path)))
    assert sorted(p.name for p in (target / "flaxcnn" / "sample_data").iterdir()) == SAMPLE_FILES
    assert not (target / "tests").exists() and not (target / "configs").exists()

    code = ("import flaxcnn, flaxcnn.models, flaxcnn.datasets.idx, flaxcnn.summary\n"
            "from pathlib import Path\n"
            "print(Path(flaxcnn.__file__).parent)\n"
            "print(','.join(flaxcnn.models.names()))\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The installed copy, then this environment's site-packages for the dependencies: not the
    # checkout (nor an editable install of it, which PYTHONPATH comes before).
    env = dict(os.environ, PYTHONPATH=str(target))
    result = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    location, names = result.stdout.split()
    assert Path(location) == target / "flaxcnn"
    assert {"lenet_bn", "resnet18", "googlenet", "alexnet"} <= set(names.split(","))


def test_dependency_ranges_admit_the_pinned_lock():
    """requirements.txt (the README's exact lock) must satisfy pyproject.toml's ranges."""
    from packaging.requirements import Requirement

    pins = {}
    for line in (Path(REPO) / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    project = tomllib.loads((Path(REPO) / "pyproject.toml").read_text())["project"]
    checked = 0
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is a dependency but not pinned in requirements.txt"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} not in {spec}"
        checked += 1
    assert checked >= 10
