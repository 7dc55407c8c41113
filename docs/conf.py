"""Sphinx configuration of flaxcnn's book: the guides in docs/, the chapter's notebooks with
their stored outputs (nothing is executed at build time), and an API reference read from the
public modules' docstrings.

    python -m sphinx -W -b html docs docs/_build/html

The notebooks live in notebooks/ (paired with their MyST markdown by jupytext); the build copies
the .ipynb files into docs/notebooks/ (git-ignored) so that Sphinx finds them under docs/.
"""
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(REPO))

from flaxcnn import course  # noqa: E402  (after the path: the checkout's flaxcnn)

project = "flaxcnn"
author = "the flaxcnn authors"
extensions = ["myst_nb", "sphinx.ext.autodoc"]
exclude_patterns = ["_build", "notebooks/*.md"]
nb_execution_mode = "off"  # the notebooks' stored outputs, from a real run
html_theme = "alabaster"
html_title = "flaxcnn"
myst_enable_extensions = ["substitution"]
myst_substitutions = {"repository": course.REPOSITORY}
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the docstrings say what the arguments are

shutil.rmtree(DOCS / "notebooks", ignore_errors=True)
(DOCS / "notebooks").mkdir()
for notebook in sorted((REPO / "notebooks").glob("*.ipynb")):
    shutil.copy2(notebook, DOCS / "notebooks" / notebook.name)


def docstring_as_written(app, what, name, obj, options, lines):
    """flaxcnn's docstrings are plain text, not reStructuredText: shown as written."""
    if lines:
        lines[:] = ["::", ""] + [f"    {line}" for line in lines] + [""]


def setup(app):
    app.connect("autodoc-process-docstring", docstring_as_written)
