"""What the chapter's notebooks (notebooks/<section>.md) do around their section's code.

Each section's notebook builds its blocks, prints its network's shapes, trains the course's
experiment with a plot redrawn every epoch and prints d2l's closing line; the parts that are the
same in all eight live here, so that each notebook shows only what is particular to its section.
Training is `flaxcnn.trainer.train_and_evaluate`, the trainer train.py runs, with its `on_epoch`
hook drawing the plot; `start` makes the process-wide settings train.py makes at start-up
(flaxcnn.runtime).

`REPOSITORY` is the one place that names the repository on GitHub: the notebooks' "Open in Colab"
badges and install cells, and the book, use it (tests/test_notebook.py checks that they agree).
With FLAXCNN_SMOKE=1 in the environment every experiment is shrunk to the first SMOKE_IMAGES
training and test images of the bundled sample, one epoch (two where the experiment asks for
more), at the network's smallest input (at least 16 pixels), without the run's pictures (the
notebook's own plot is drawn), so that the test suite runs every notebook top to bottom quickly;
the shapes printed before training are unchanged.
"""
from __future__ import annotations

import datetime
import functools
import importlib
import inspect
import os
import platform
import tempfile
import time
from pathlib import Path

REPOSITORY = "YOUR-ACCOUNT/flaxcnn"  # owner/name on GitHub; a placeholder until it is published
SMOKE_VARIABLE = "FLAXCNN_SMOKE"
SMOKE_IMAGES = 64
SAMPLE_DESCRIPTION = "the bundled 1,003-image Fashion-MNIST sample"
FULL_DESCRIPTION = "the full Fashion-MNIST (60,000 training, 10,000 test images)"


def smoke() -> bool:
    """Whether FLAXCNN_SMOKE=1 asks for the shrunk experiments (see the module docstring)."""
    return os.environ.get(SMOKE_VARIABLE) == "1"


def on_colab() -> bool:
    """Whether this process is a Colab runtime, where the full Fashion-MNIST downloads."""
    try:
        importlib.import_module("google.colab")
    except ImportError:
        return False
    return True


def start(config_name: str, full_data: bool | None = None, variant: str | None = None) -> "Section":
    """The process-wide settings train.py makes before the devices start (flaxcnn.runtime: XLA's
    threads and CPU convolutions, the compilation cache), then one line saying when, where and on
    what data this notebook runs. `config_name`: the section's file in configs/; `full_data`: the
    notebook's switch (None: the full Fashion-MNIST on Colab, else the bundled sample);
    `variant`: the config's variant for the full data, e.g. "concise"."""
    start_runtime()
    section = Section(config_name, on_colab() if full_data is None else bool(full_data), variant)
    import jax

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{now}; {machine()}; jax {jax.__version__}, {devices()}\n"
          f"data: {section.data_description}" + ("; FLAXCNN_SMOKE=1: shrunk" if smoke() else ""))
    return section


def start_runtime():
    """What train.py does before the devices start (flaxcnn.runtime): XLA:CPU's threads for
    collectives and its own convolutions, and the compilation cache in its default folder."""
    from flaxcnn import runtime

    runtime.reserve_cpu_threads_for_collectives()
    runtime.use_xla_cpu_convolutions()
    runtime.use_compilation_cache(runtime.default_compilation_cache())


def machine() -> str:
    """The host: its CPU model and core count."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores of {model}"


def devices() -> str:
    """The devices a run trains on, e.g. "1 x NVIDIA H100 80GB HBM3 (gpu)"."""
    import jax

    found = jax.devices()
    return f"{len(found)} x {found[0].device_kind} ({found[0].platform})"


class Section:
    """One section's experiment: its config (the course's on the full data, `:sample` on the
    bundled sample), the equivalent command, and its training runs."""

    def __init__(self, config_name: str, full_data: bool, variant: str | None = None):
        self.config_name, self.full_data, self.variant = config_name, full_data, variant
        self.module = importlib.import_module(f"configs.{config_name}")
        self.config_variant = variant if full_data else "sample"
        self.data_description = (FULL_DESCRIPTION if full_data else SAMPLE_DESCRIPTION) + \
            f" (configs/{self.config_file_argument})"

    @property
    def num_epochs(self) -> int:
        """The experiment's epochs (as its config has them, whatever FLAXCNN_SMOKE does)."""
        return self.module.get_config(*([self.config_variant] if self.config_variant else [])
                                      ).num_epochs

    @property
    def config_file_argument(self) -> str:
        return f"{self.config_name}.py" + (f":{self.config_variant}" if self.config_variant else "")

    def course_config(self):
        """The course's config: d2l's settings on the full Fashion-MNIST, with d2l's band."""
        return self.module.get_config(*([self.variant] if self.variant else []))

    def config(self, **overrides):
        """The experiment's config with `overrides` (config fields; `model_overrides` a dict),
        quiet (no progress bar), shrunk under FLAXCNN_SMOKE=1."""
        config = self.module.get_config(*([self.config_variant] if self.config_variant else []))
        longer = overrides.get("num_epochs", 0) > config.num_epochs
        config.progress = False
        for key, value in overrides.items():
            if key == "model_overrides":
                config.model_overrides.update(value)
            else:
                config[key] = value
        if smoke():
            from flaxcnn import models

            config.num_epochs = 2 if longer else 1
            config.dataset, config.idx_dir = "fashion_mnist", smoke_data()
            config.plots = False  # the notebook draws its own curves; the run's pictures take seconds
            model = models.create(config.model, **config.model_overrides.to_dict())
            config.image_size = max(model.min_input_size, 16)
        return config

    def command(self, **overrides) -> str:
        """The same experiment as a train.py command (without FLAXCNN_SMOKE's shrinking);
        `overrides`: config fields that take a plain value."""
        flags = [f"--config.{key}={str(value).lower() if isinstance(value, bool) else value}"
                 for key, value in overrides.items()]
        return " ".join(["python train.py --config", f"configs/{self.config_file_argument}", *flags])

    def train(self, config=None, *, plot: bool = True, resume: dict | None = None) -> dict:
        """Trains `config` (default: the experiment's) with train.py's trainer in a new workdir under
        runs/, redrawing the learning curves after every epoch when `plot`; prints d2l's closing
        line and d2l's printed band; returns the last epoch's record (metrics.jsonl's row, and
        its "workdir"). `resume`: a record this returned, whose run to continue instead (to train
        it for more epochs, as train.py resumes a workdir)."""
        from flaxcnn import reference, trainer

        config = config or self.config()
        workdir = Path(resume["workdir"]) if resume else new_workdir(self.config_name)
        print(f"training {config.model} for {config.num_epochs} epochs at {config.image_size}x"
              f"{config.image_size}, lr {config.learning_rate}, batch {config.batch_size}; "
              f"workdir {workdir}", flush=True)
        live = LivePlot(f"{config.model} on {config.dataset}", reference.for_run(config)) \
            if plot else None
        record = trainer.train_and_evaluate(config, workdir, on_epoch=live)
        record["workdir"] = str(workdir)
        print(d2l_line(record))
        print(self.band_line())
        return record

    def band_line(self) -> str:
        """d2l's printed test accuracy for this section's experiment, and what it was measured on."""
        from flaxcnn import reference

        course = self.course_config()
        band = reference.band(course.reference_accuracy)
        settings = (f"{course.num_epochs} epochs at {course.image_size}x{course.image_size}, lr "
                    f"{course.learning_rate}, batch {course.batch_size}")
        if band is None:
            return f"d2l printed no test accuracy for this experiment ({settings})"
        where = "" if self.full_data else "; this run is on the sample, not comparable"
        return (f"d2l's builds printed test acc {band.describe()} on the full Fashion-MNIST "
                f"({settings}){where}")


def smoke_data() -> str:
    """A folder (made once per process) holding the first SMOKE_IMAGES training and test images of
    the bundled sample as the four official IDX files, for --config.idx_dir."""
    global _smoke_folder
    if _smoke_folder is None:
        import gzip

        import numpy as np

        from flaxcnn.datasets import catalog, idx

        folder = tempfile.mkdtemp(prefix="flaxcnn-smoke-")
        for split, names in idx.FILES.items():
            for array, name in zip(idx.read_split(catalog.SAMPLE_DIR, split), names):
                array = np.ascontiguousarray(array[:SMOKE_IMAGES], np.uint8)
                magic = idx.IMAGES_MAGIC if array.ndim == 3 else idx.LABELS_MAGIC
                with gzip.open(os.path.join(folder, name), "wb") as f:
                    f.write(magic.to_bytes(4, "big") + b"".join(
                        n.to_bytes(4, "big") for n in array.shape) + array.tobytes())
        _smoke_folder = folder
    return _smoke_folder


_smoke_folder = None


def new_workdir(name: str) -> Path:
    """A workdir under runs/ that did not exist before (so a notebook never resumes an old run by
    accident): runs/notebook-<name>-<UTC time>[-<n>]."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    Path("runs").mkdir(exist_ok=True)
    for attempt in range(1000):
        path = Path("runs") / (f"notebook-{name}-{stamp}" + (f"-{attempt}" if attempt else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"no free workdir name under runs/ for {name}")


def d2l_line(record: dict) -> str:
    """d2l's train_ch6 closing line: loss, train acc, test acc, then examples/sec on the devices
    (here the last epoch's training speed)."""
    return (f"loss {record['train_loss']:.3f}, train acc {record['train_accuracy']:.3f}, "
            f"test acc {record['test_accuracy']:.3f}\n"
            f"{record['examples_per_sec']:.1f} examples/sec on {devices()}")


class LivePlot:
    """The learning curves (train loss, train accuracy, test accuracy; d2l's band on the full
    data), one figure in the notebook, redrawn after every epoch: the trainer's on_epoch hook."""

    def __init__(self, title: str, band=None):
        self.title, self.band, self.handle = title, band, None
        self.path = Path(tempfile.mkdtemp(prefix="flaxcnn-plot-")) / "curves.png"

    def __call__(self, records: list[dict]):
        from IPython.display import Image, display

        from flaxcnn import plots

        plots.curves(records, self.path, reference=self.band, title=self.title)
        image = Image(filename=str(self.path))
        if self.handle is None:
            self.handle = display(image, display_id=True)
        else:
            self.handle.update(image)


def layer_shapes(model, image_size: int, channels: int = 1) -> list[tuple[str, tuple]]:
    """The output shape of each of `model`'s top-level layers and blocks for one image (batch 1,
    NHWC), in the order they run, as d2l prints its networks; printed and returned. Computed on
    shapes only (jax.eval_shape), so it is instant for any size. Functions between the modules
    (pooling, activations, flattening) show in the next module's input."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    shapes = []

    def record_top_level(call, args, kwargs, context):
        output = call(*args, **kwargs)
        if context.method_name == "__call__" and len(context.module.path) == 1:
            shapes.append((context.module.name, tuple(output.shape)))
        return output

    def run(x):
        variables = model.init(jax.random.key(0), x, train=False)
        shapes.clear()  # init ran every layer once already
        with nn.intercept_methods(record_top_level):
            return model.apply(variables, x, train=False)

    image = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
    shapes.append(("output", tuple(jax.eval_shape(run, image).shape)))
    width = max(len(name) for name, _ in shapes)
    for name, shape in shapes:
        print(f"{name:<{width}}  output shape: {shape}")
    return shapes


def output_shape(block, input_shape: tuple, seed: int = 0) -> tuple:
    """Builds `block` on its own for a random input of `input_shape` (init, then apply in training
    mode, BatchNorm statistics mutable), prints and returns its output shape."""
    import jax

    x = jax.random.normal(jax.random.key(seed), input_shape)
    # one compiled program each, rather than an XLA program for every operation run eagerly
    variables = jax.jit(block.init)(jax.random.key(seed + 1), x)
    y, _ = jax.jit(functools.partial(block.apply, mutable=["batch_stats"]))(variables, x)
    print(f"{type(block).__name__}: {tuple(input_shape)} -> {tuple(y.shape)}")
    return tuple(y.shape)


def show_source(*objects):
    """Displays the library's own source of each of `objects` (classes, functions, modules)."""
    from IPython.display import Code, display

    for thing in objects:
        display(Code(inspect.getsource(thing), language="python"))


def store(markdown_paths, timeout: int = 3600) -> dict:
    """Runs each notebook's MyST markdown (notebooks/<name>.md) top to bottom for real (without
    FLAXCNN_SMOKE) and writes its .ipynb twin with the outputs, cell metadata removed and only the
    kernel's and jupytext's notebook metadata kept; returns {path: seconds}. Needs the test extra's
    nbclient, ipykernel and jupytext:

        python -m flaxcnn.course notebooks/alexnet.md [notebooks/vgg.md ...]
    """
    import jupytext
    from nbclient import NotebookClient

    os.environ.pop(SMOKE_VARIABLE, None)
    seconds = {}
    for path in map(Path, markdown_paths):
        notebook = jupytext.read(path)
        started = time.perf_counter()
        NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        seconds[str(path)] = time.perf_counter() - started
        for cell in notebook.cells:
            cell.metadata = {key: value for key, value in cell.metadata.items() if key == "tags"}
        notebook.metadata = {key: value for key, value in notebook.metadata.items()
                             if key in ("kernelspec", "jupytext")}
        jupytext.write(notebook, path.with_suffix(".ipynb"))
        print(f"{path.with_suffix('.ipynb')}: run and stored in {seconds[str(path)]:.0f} s",
              flush=True)
    return seconds


if __name__ == "__main__":
    import sys

    store(sys.argv[1:])
