"""notebooks/colab_quickstart.ipynb runs top to bottom on CPU with the bundled sample."""
import base64
import io
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from PIL import Image

from tests.conftest import REPO


def test_colab_quickstart_runs_top_to_bottom(tmp_path, tfds_dir, monkeypatch):
    # A scratch checkout (links to this one), so the run's workdir lands in tmp_path.
    for name in ("train.py", "configs", "flaxcnn", "requirements.txt"):
        (tmp_path / name).symlink_to(Path(REPO) / name)
    (tmp_path / "notebooks").mkdir()
    notebook = nbformat.read(Path(REPO) / "notebooks" / "colab_quickstart.ipynb", as_version=4)
    monkeypatch.setenv("TFDS_DATA_DIR", tfds_dir)  # the kernel inherits it
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path / "notebooks")}}).execute()

    text = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.outputs)
    assert f"working in {tmp_path}" in text
    assert "$ pip" not in text  # inside a checkout the install cell installs nothing
    assert "config: configs/batchnorm.py --config.dataset=fashion_mnist_sample" in text
    assert "epoch 10/10" in text and "after 10 epochs: test accuracy 0." in text
    pictures = [Image.open(io.BytesIO(base64.b64decode(output["data"]["image/png"])))
                for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
                if "image/png" in output.get("data", {})]
    assert [p.format for p in pictures] == ["PNG"] * 3
    assert (tmp_path / "runs" / "quickstart-cpu" / "checkpoints").is_dir()
