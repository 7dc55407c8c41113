"""Runs a script as `python SCRIPT ARGS` would, with TensorFlow hidden as where it is not installed
(every import and find_spec of it fails), so a whole run shows it needs none:

    python tests/without_tensorflow.py train.py <train.py's arguments>
"""
import os
import runpy
import sys


class NoTensorFlow:
    """Wraps an import finder so that it finds no TensorFlow."""

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            return None
        return self.finder.find_spec(name, path, target)

    def invalidate_caches(self):
        getattr(self.finder, "invalidate_caches", lambda: None)()


if __name__ == "__main__":
    sys.meta_path[:] = [NoTensorFlow(finder) for finder in sys.meta_path]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
    runpy.run_path(sys.argv[0], run_name="__main__")
