"""train.py with markers around the phases of a run on stderr, so that a test can kill it inside one.

    python tests/phase_markers.py <train.py's arguments>

prints `flaxcnn-phase: <name> begin` and `flaxcnn-phase: <name> end` around `train` (the steps of an
epoch: the device pipeline's or the host stream's train_chunks), `eval` (its evaluate), `plot` (each picture, drawn in the
picture thread) and `checkpoint` (the start of a save, whose writing then goes on in the
background). tests/test_robustness.py's kill soak reads them. The hook lives here, not in flaxcnn:
it wraps the functions the trainer calls, then runs train.py as `python train.py` would.
"""
import contextlib
import functools
import os
import runpy
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from flaxcnn import checkpoint, pipelines, plots  # noqa: E402


def mark(name: str, edge: str):
    """One marker line in one write: the picture thread's and the main thread's never mix."""
    sys.stderr.flush()
    os.write(2, f"flaxcnn-phase: {name} {edge}\n".encode())


@contextlib.contextmanager
def phase(name: str):
    mark(name, "begin")
    yield
    mark(name, "end")


def marked(name: str, function):
    @functools.wraps(function)
    def call(*args, **kwargs):
        with phase(name):
            return function(*args, **kwargs)

    return call


def marked_generator(name: str, function):
    @functools.wraps(function)
    def call(*args, **kwargs):
        with phase(name):
            yield from function(*args, **kwargs)

    return call


def install():
    for pipeline in (pipelines.DevicePipeline, pipelines.HostStreamPipeline):
        pipeline.train_chunks = marked_generator("train", pipeline.train_chunks)
        pipeline.evaluate = marked("eval", pipeline.evaluate)
    for name in ("curves", "predictions", "confusion"):
        setattr(plots, name, marked("plot", getattr(plots, name)))
    checkpoint.Checkpoints.save = marked("checkpoint", checkpoint.Checkpoints.save)


if __name__ == "__main__":
    install()
    sys.argv = [os.path.join(REPO, "train.py"), *sys.argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
