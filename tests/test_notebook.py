"""The notebooks run top to bottom on a CPU: the quickstart on the bundled sample, and each section's
notebook in its short mode (FLAXCNN_SMOKE=1, flaxcnn.course), printing its shapes and a test
accuracy; each section's notebook is the jupytext pair of its reviewed MyST markdown, with the
outputs of a real run stored and its metadata clean."""
import base64
import io
import os
import re
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient
from PIL import Image

from flaxcnn import course
from tests.conftest import REPO

NOTEBOOKS = Path(REPO) / "notebooks"
SECTIONS = sorted(path.stem for path in NOTEBOOKS.glob("*.md"))


def scratch_checkout(tmp_path):
    """A checkout that links to this one, so that the runs' workdirs land in tmp_path."""
    for name in ("train.py", "configs", "flaxcnn", "requirements.txt"):
        (tmp_path / name).symlink_to(Path(REPO) / name)
    (tmp_path / "notebooks").mkdir()
    return tmp_path / "notebooks"


def execute(notebook, tmp_path):
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(scratch_checkout(tmp_path))}}).execute()
    return notebook


def printed(notebook) -> str:
    return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.outputs)


def pictures(notebook) -> list:
    return [Image.open(io.BytesIO(base64.b64decode(output["data"]["image/png"])))
            for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
            if "image/png" in output.get("data", {})]


def test_colab_quickstart_runs_top_to_bottom(tmp_path, tfds_dir, monkeypatch):
    notebook = nbformat.read(NOTEBOOKS / "colab_quickstart.ipynb", as_version=4)
    assert f'"https://github.com/{course.REPOSITORY}.git"' in notebook.cells[1].source
    monkeypatch.setenv("TFDS_DATA_DIR", tfds_dir)  # the kernel inherits it
    text = printed(execute(notebook, tmp_path))
    assert f"working in {tmp_path}" in text
    assert "$ pip" not in text  # inside a checkout the install cell installs nothing
    assert "config: configs/batchnorm.py --config.dataset=fashion_mnist_sample" in text
    assert "epoch 10/10" in text and "after 10 epochs: test accuracy 0." in text
    assert [p.format for p in pictures(notebook)] == ["PNG"] * 3
    assert (tmp_path / "runs" / "quickstart-cpu" / "checkpoints").is_dir()


def test_there_is_a_notebook_for_every_section_of_the_chapter():
    assert SECTIONS == ["alexnet", "batch-norm", "densenet", "googlenet", "nin", "regnet",
                        "resnet", "vgg"]


@pytest.mark.parametrize("section", SECTIONS)
def test_section_notebook_is_the_pair_of_its_markdown_with_a_real_run_stored(section):
    markdown = jupytext.read(NOTEBOOKS / f"{section}.md")
    stored = nbformat.read(NOTEBOOKS / f"{section}.ipynb", as_version=4)
    assert [(c.cell_type, c.source) for c in stored.cells] == \
        [(c.cell_type, c.source) for c in markdown.cells], \
        f"out of sync: run `jupytext --sync notebooks/{section}.md` (or --to ipynb) and re-run it"
    code = [cell for cell in stored.cells if cell.cell_type == "code"]
    assert all(cell.outputs for cell in code), "store the outputs of a real run"
    assert "data: " in printed(nbformat.v4.new_notebook(cells=code[:1]))  # where, when, what data
    assert "FLAXCNN_SMOKE" not in printed(stored)  # a real run, not the short mode
    assert all(set(cell.metadata) <= {"tags"} for cell in stored.cells)  # metadata cleaned
    badge = f"https://colab.research.google.com/github/{course.REPOSITORY}/blob/main/notebooks/"
    assert badge + f"{section}.ipynb" in stored.cells[0].source
    assert f'REPO_URL = "https://github.com/{course.REPOSITORY}.git"' in code[0].source


def runs_top_to_bottom_in_its_short_mode(section, tmp_path, monkeypatch):
    monkeypatch.setenv(course.SMOKE_VARIABLE, "1")  # the kernel inherits it
    # One CPU device, as on a learner's laptop (the suite's four fake ones are for the multi-device
    # code, which the other tests check), and XLA:CPU without its backend optimizations: the short
    # mode's two steps are not worth them (a RegNet training: 11 s instead of 14, mostly compiling).
    monkeypatch.setenv("XLA_FLAGS", os.environ["XLA_FLAGS"].replace(
        "--xla_force_host_platform_device_count=4", "--xla_backend_optimization_level=0"))
    notebook = execute(jupytext.read(NOTEBOOKS / f"{section}.md"), tmp_path)
    text = printed(notebook)
    assert "data: the bundled 1,003-image Fashion-MNIST sample" in text
    assert re.search(r"^output +output shape: \(1, 10\)$", text, flags=re.M)  # the network
    assert re.search(r"python train\.py --config configs/\S+\.py:sample", text)
    accuracies = re.findall(r"^loss \d\.\d{3}, train acc (\d\.\d{3}), test acc (\d\.\d{3})$", text,
                            flags=re.M)
    assert accuracies, text[-2000:]
    assert re.search(r"^\d[\d.]* examples/sec on 1 x cpu \(cpu\)$", text, flags=re.M)
    assert "d2l printed no test accuracy" in text or "d2l's builds printed test acc 0." in text
    assert pictures(notebook) and all(p.format == "PNG" for p in pictures(notebook))  # the plot
    # a new workdir per training, unless the notebook continues a run on purpose
    trainings = re.findall(r"^training .*; workdir (runs/\S+)$", text, flags=re.M)
    assert {f"runs/{path.name}" for path in (tmp_path / "runs").iterdir()} == set(trainings)
    assert len(set(trainings)) == len(trainings) - text.count("resuming from checkpoint")


def short_mode_test(section):
    """A class of one test per notebook: pytest.ini's --dist loadscope keeps a module's functions
    on one xdist worker but spreads classes, and each notebook's run takes tens of seconds."""

    def test_section_notebook_runs_top_to_bottom_in_its_short_mode(self, tmp_path, monkeypatch):
        runs_top_to_bottom_in_its_short_mode(section, tmp_path, monkeypatch)

    name = "TestShortMode" + "".join(part.title() for part in section.split("-"))
    return type(name, (), {"test_section_notebook_runs_top_to_bottom_in_its_short_mode":
                           test_section_notebook_runs_top_to_bottom_in_its_short_mode})


for _section in SECTIONS:
    _test_class = short_mode_test(_section)
    globals()[_test_class.__name__] = _test_class
