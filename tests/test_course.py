"""flaxcnn.course: the notebooks' helpers that the notebook runs do not already show."""
import jupytext
import nbformat

from flaxcnn import course


def test_store_runs_the_markdown_and_writes_its_twin_with_outputs_and_clean_metadata(tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setenv(course.SMOKE_VARIABLE, "1")  # store runs for real: it must drop this
    markdown = tmp_path / "tiny.md"
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# tiny"),
        nbformat.v4.new_code_cell("import os\nprint('smoke', os.environ.get('FLAXCNN_SMOKE'))",
                                  metadata={"tags": ["keep"], "scrolled": True})],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}})
    jupytext.write(notebook, markdown, fmt="md:myst")
    seconds = course.store([markdown], timeout=120)
    assert list(seconds) == [str(markdown)] and seconds[str(markdown)] > 0
    stored = nbformat.read(tmp_path / "tiny.ipynb", as_version=4)
    assert stored.cells[1].outputs[0]["text"] == "smoke None\n"
    assert stored.cells[1].metadata == {"tags": ["keep"]}
    assert set(stored.metadata) <= {"kernelspec", "jupytext"}


def test_new_workdirs_never_reuse_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = course.new_workdir("vgg"), course.new_workdir("vgg")
    assert first != second and first.is_dir() and second.is_dir()
    assert first.parent.name == "runs" and first.name.startswith("notebook-vgg-")
