"""Every command in README.md and in the book's pages (docs/*.md) runs, at tiny sizes, so neither
can rot.

Each ```bash block is a test: its commands run in order in a scratch folder that links to the
checkout (so `runs/...` land there); train.py commands go through train.py's own flag parsing and
main in this process (conftest.train_here), shrunk to one or two epochs on the bundled sample
at each model's smallest image size, the benchmark to two steps, `pip install` to a dry run and
`tensorboard` to its start. The README's test command is what CI runs; it is checked, not re-run.
"""
import importlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flaxcnn import models
from tests.conftest import REPO, free_port, train_here

SETUP = "python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt && "
TEST_COMMAND = "python -m pytest -q -n 2"


def readme_blocks(pages=("README.md", *sorted(f"docs/{p.name}" for p in Path(REPO, "docs").glob("*.md")))
                  ) -> list[list[str]]:
    """The ```bash blocks of README.md and the book's pages, each a list of its commands."""
    blocks = []
    for page in pages:
        text = (Path(REPO) / page).read_text()
        blocks += re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [[line.strip() for line in block.splitlines() if line.strip()] for block in blocks]


def config_model(command: str) -> str:
    name, variant = re.search(r"--config configs/(\w+)\.py(?::(\w+))?", command).groups()
    override = re.search(r"--config\.model=(\w+)", command)
    if override:
        return override.group(1)
    config = importlib.import_module(f"configs.{name}")
    return (config.get_config(variant) if variant else config.get_config()).model


def tiny(command: str, tfds_dir: str, scratch: Path) -> list[str]:
    """The command as it runs here: the same program and flags, shrunk."""
    args = shlex.split(command)
    if args[:2] == ["python", "train.py"]:
        size = max(models.create(config_model(command)).min_input_size, 16)
        shrunk = [f"--config.image_size={size}", "--config.batch_size=128",
                  f"--config.data_dir={tfds_dir}",
                  # a command that trains longer than another (resuming) gets one epoch more
                  f"--config.num_epochs={2 if '--config.num_epochs=' in command else 1}"]
        if "--config.idx_dir=" not in command:
            shrunk.append("--config.dataset=fashion_mnist_sample")
        return [sys.executable, "train.py", *args[2:], *shrunk]
    if args[:3] == ["python", "-m", "flaxcnn.bench"]:
        return [sys.executable, *args[1:], "--steps=2", "--image-size=32", "--batch-size=32",
                "--train-examples=256", f"--json={scratch / 'bench.json'}"]
    if args[:2] == ["pip", "install"]:
        return [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", *args[2:]]
    if args[0] == "python":
        return [sys.executable, *args[1:]]
    return args


def test_the_readme_test_command_is_what_ci_runs():
    assert [SETUP + TEST_COMMAND] in readme_blocks(pages=("README.md",))
    ci = (Path(REPO) / ".ci" / "run").read_text()
    assert SETUP + TEST_COMMAND in ci.splitlines()


RUNNABLE = [block for block in readme_blocks() if block != [SETUP + TEST_COMMAND]]


def test_the_readme_is_short_and_points_into_the_book():
    text = (Path(REPO) / "README.md").read_text()
    assert len(text.encode()) < 10_000
    for page in set(Path(REPO, "docs").glob("*.md")) - {Path(REPO, "docs", "index.md")}:
        assert f"`docs/{page.name}`" in text, page.name


def test_the_readme_and_the_book_show_every_tool():
    commands = " ".join(line for block in RUNNABLE for line in block)
    for tool in ("train.py", "flaxcnn.compare", "flaxcnn.summary", "flaxcnn.bench", "tensorboard",
                 "jax[cuda12]", "jax[tpu]", "eval_only", "idx_dir"):
        assert tool in commands


# a block that appears twice (README.md and the book's getting started) runs once
RUNNABLE = [block for i, block in enumerate(RUNNABLE) if block not in RUNNABLE[:i]]


def is_slow(block) -> bool:
    """Whether a block trains more than once, or trains or summarises a network bigger than
    LeNet-BN: seconds of compiling each, even shrunk, so slow (pytest.ini)."""
    trainings = [command for command in block if command.startswith("python train.py")]
    networks = [config_model(command) for command in trainings] + \
        re.findall(r"--models? (\w+)", " ".join(block))
    return len(trainings) > 1 or any(name not in ("lenet_bn", "lenet_bn_scratch") for name in networks)


@pytest.mark.parametrize("block", [
    pytest.param(block, id=block[0].removeprefix(SETUP)[:60],
                 marks=[pytest.mark.slow] if is_slow(block) else [])
    for block in RUNNABLE])
def test_readme_block_runs(block, tmp_path, tfds_dir, monkeypatch):
    for name in ("train.py", "configs", "flaxcnn", "requirements.txt"):
        (tmp_path / name).symlink_to(Path(REPO) / name)
    monkeypatch.chdir(tmp_path)
    for command in block:
        args = tiny(command.removeprefix(SETUP), tfds_dir, tmp_path)
        if args[0] == "tensorboard":
            run_tensorboard(args, tmp_path)
        elif args[1] == "train.py":
            code, out, err = train_here(args[1:], monkeypatch)
            assert code == 0, f"{command}\n{out}\n{err}"
            assert "epoch " in out or "evaluated" in out, out
        else:
            result = subprocess.run(args, capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
            assert "does not provide the extra" not in result.stderr, command
    for workdir in re.findall(r"--workdir (\S+)", " ".join(block)):
        assert (tmp_path / workdir / "metrics.jsonl").exists(), workdir
    if any("flaxcnn.compare" in command for command in block):
        assert (tmp_path / "compare" / "compare.md").read_text().count("\n") >= 4
    if any("eval_only=true" in command for command in block):
        assert (tmp_path / "runs" / "lenet" / "eval.jsonl").exists()
        assert '"epoch": 2' in (tmp_path / "runs" / "lenet" / "metrics.jsonl").read_text()


def run_tensorboard(args, cwd):
    """tensorboard serves the runs: it starts on a free local port, and is stopped."""
    command = [sys.executable, "-m", "tensorboard.main", *args[1:], f"--port={free_port()}",
               "--host=localhost"]
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        deadline, output = time.time() + 120, ""
        while time.time() < deadline and "http://" not in output:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            output += line
        assert "http://" in output, output
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:  # its output drained, so that a full pipe cannot hold up its exit
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # seen once in CI with both cores busy: stop it outright
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
