"""flaxcnn: the modern convolutional networks of Dive into Deep Learning, in JAX/Flax.

`flaxcnn.load_run(workdir)` (a finished run's model, variables and input facts; see flaxcnn.runs)
is imported on first use, so that `import flaxcnn` alone imports no JAX (flaxcnn.colab runs
before JAX may be installed).
"""


def __getattr__(name):
    if name == "load_run":
        from flaxcnn.runs import load_run

        return load_run
    raise AttributeError(f"module 'flaxcnn' has no attribute {name!r}")
