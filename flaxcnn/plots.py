"""The pictures train.py writes into a run's workdir: learning curves, a grid of test predictions and
the confusion matrix, as PNGs of a fixed pixel size.

Figures are built with matplotlib's object API and rendered by the Agg canvas, so nothing goes through
pyplot: no display is needed, no global backend is switched, and no figure stays open after a call.
Every PNG is written atomically (a temporary file in the same folder, then os.replace), so a viewer
never sees a half-written curves.png while it is rewritten after each epoch. matplotlib is imported
only when a picture is drawn, so a run with --config.plots=false needs none (a GPU machine without
it can train).
"""
from __future__ import annotations

import collections
import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from flaxcnn.reference import Band

DPI = 100
CURVES_SIZE = (640, 440)        # PNG width, height in pixels
PREDICTIONS_SIZE = (1200, 780)
CONFUSION_SIZE = (820, 760)

MARKERS_UP_TO = 20              # epochs; longer curves are drawn without a dot per epoch
MISTAKE_MARK = "✗"
PREDICTION_COLUMNS = 6
PREDICTION_IMAGES = 18          # test images in predictions.png
ANNOTATE_CELLS_UP_TO = 20       # classes; beyond that the confusion matrix shows colours only
LABEL_TICKS_UP_TO = 40          # classes; beyond that the axes show indices


class Line(NamedTuple):
    """One line as it was drawn in the axes, read back from matplotlib."""
    label: str
    linestyle: str
    x: np.ndarray
    y: np.ndarray


class Span(NamedTuple):
    """One horizontal band as it was drawn in the axes (from `low` to `high` in data units)."""
    label: str
    low: float
    high: float


def horizontal_spans(axes) -> list[Span]:
    """The labelled axhspan bands of `axes`, read back from their patches' vertices."""
    spans = []
    for patch in axes.patches:
        y = patch.get_patch_transform().transform(patch.get_path().vertices)[:, 1]
        spans.append(Span(patch.get_label(), float(y.min()), float(y.max())))
    return spans


def new_figure(size_pixels: tuple[int, int]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = size_pixels
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure, path) -> None:
    """Renders `figure` at its own size and dpi into `path`, atomically."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # print_png, unlike savefig, ignores savefig.* rcParams (e.g. bbox "tight"): the size stays fixed.
        figure.canvas.print_png(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def epoch_marker(epochs) -> str | None:
    """A dot per epoch on short curves (a 1-epoch curve is a single dot), none on long ones."""
    return "o" if len(epochs) <= MARKERS_UP_TO else None


def epoch_axis(axes, epochs) -> None:
    """x axis labelled "epoch", from the first to the last of `epochs`, with integer ticks."""
    from matplotlib.ticker import MaxNLocator

    axes.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axes.set_xlabel("epoch")


def curves(records: list[dict], path, *, reference: Band | None = None,
           title: str = "") -> list[Line | Span]:
    """d2l's training plot: train loss, train accuracy and test accuracy against the epoch; with
    `reference`, d2l's printed test accuracies as a shaded band (lowest to highest build) and a
    dashed line at their median. `records` are metrics.jsonl's rows. Writes a PNG of CURVES_SIZE
    and returns the lines drawn, then the band."""
    if not records:
        raise ValueError("curves needs at least one epoch's record")
    epochs = [r["epoch"] for r in records]
    figure = new_figure(CURVES_SIZE)
    axes = figure.add_subplot()
    marker = epoch_marker(epochs)
    for key, label, style in (("train_loss", "train loss", "-"),
                              ("train_accuracy", "train acc", "--"),
                              ("test_accuracy", "test acc", "-.")):
        axes.plot(epochs, [r[key] for r in records], linestyle=style, marker=marker, markersize=3,
                  label=label)
    if reference is not None:
        axes.axhspan(reference.low, reference.high, color="grey", alpha=0.2,
                     label=f"d2l test acc {reference.low:.3f}–{reference.high:.3f}")
        axes.axhline(reference.median, color="grey", linestyle="--", linewidth=1,
                     label=f"d2l median {reference.median:.3f}")
    epoch_axis(axes, epochs)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    if title:
        axes.set_title(title)
    save_png(figure, path)
    lines = [Line(line.get_label(), line.get_linestyle(), np.asarray(line.get_xdata(), float),
                  np.asarray(line.get_ydata(), float)) for line in axes.get_lines()]
    return lines + horizontal_spans(axes)


def prediction_title(label: int, pred: int, class_names) -> str:
    mark = "" if label == pred else f"{MISTAKE_MARK} "
    return f"true: {class_names[label]}\n{mark}pred: {class_names[pred]}"


def spread_over_classes(labels, count: int, num_classes: int) -> np.ndarray:
    """Indices of up to `count` examples for predictions.png: the first example of every class,
    class by class, then every class's second, and so on (each class's first
    ceil(count / num_classes) examples are the candidates; a class with fewer gives fewer). A test
    set sorted by class, as an image folder's is, then shows every class, not only the first."""
    labels = np.asarray(labels)
    per_class = math.ceil(count / max(num_classes, 1))
    ranks = np.zeros(len(labels), np.int64)
    seen = collections.Counter()
    for i, label in enumerate(labels.tolist()):
        ranks[i], seen[label] = seen[label], seen[label] + 1
    candidates = np.flatnonzero(ranks < per_class)
    order = np.lexsort((labels[candidates], ranks[candidates]))  # by rank, then class
    return candidates[order][:count]


def predictions(images, labels, preds, class_names, path, *,
                count: int = PREDICTION_IMAGES) -> list[str]:
    """d2l's predict_ch3: the first `count` images, each titled "true: <name>" over "pred: <name>";
    mistakes in red, marked "✗ pred: <name>". `images` are uint8 (N, H, W, C) with C = 1 or 3.
    Writes a PNG of PREDICTIONS_SIZE and returns the titles, in order."""
    images = np.asarray(images)
    count = min(count, len(images))
    if count < 1:
        raise ValueError("predictions needs at least one image")
    columns = min(count, PREDICTION_COLUMNS)
    rows = math.ceil(count / columns)
    figure = new_figure(PREDICTIONS_SIZE)
    titles = []
    for i in range(count):
        label, pred = int(labels[i]), int(preds[i])
        image = images[i]
        axes = figure.add_subplot(rows, columns, i + 1)
        if image.shape[-1] == 1:
            axes.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
        else:
            axes.imshow(image)
        axes.set_axis_off()
        title = prediction_title(label, pred, class_names)
        axes.set_title(title, fontsize=10, color="black" if label == pred else "red")
        titles.append(title)
    save_png(figure, path)
    return titles


def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class): rows are true labels, columns predictions."""
    labels, preds = np.asarray(labels, np.int64).ravel(), np.asarray(preds, np.int64).ravel()
    if labels.shape != preds.shape:
        raise ValueError(f"{labels.size} labels but {preds.size} predictions")
    for name, values in (("label", labels), ("prediction", preds)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"a {name} is outside 0..{num_classes - 1}")
    counts = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def confusion(labels, preds, class_names, path) -> np.ndarray:
    """Draws the confusion matrix as a heatmap, class names on both axes and the counts in the
    cells. Writes a PNG of CONFUSION_SIZE and returns the matrix (see confusion_matrix)."""
    num_classes = len(class_names)
    matrix = confusion_matrix(labels, preds, num_classes)
    figure = new_figure(CONFUSION_SIZE)
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, shrink=0.8)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    total = int(matrix.sum())
    correct = int(np.trace(matrix))
    axes.set_title(f"{correct:,} of {total:,} correct ({correct / max(total, 1):.4f})")
    if num_classes <= LABEL_TICKS_UP_TO:
        ticks = np.arange(num_classes)
        axes.set_xticks(ticks, [str(name) for name in class_names], rotation=45, ha="right",
                        rotation_mode="anchor")
        axes.set_yticks(ticks, [str(name) for name in class_names])
    if num_classes <= ANNOTATE_CELLS_UP_TO:
        dark = matrix > matrix.max() / 2
        for (row, column), count in np.ndenumerate(matrix):
            axes.text(column, row, str(count), ha="center", va="center", fontsize=8,
                      color="white" if dark[row, column] else "black")
    save_png(figure, path)
    return matrix
