"""flaxcnn.plots: the PNGs are written at their fixed size and show what they should."""
import numpy as np
import pytest
from PIL import Image

from flaxcnn import plots
from flaxcnn.reference import Band

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def epoch_records(num_epochs):
    return [{"epoch": e, "step": 100 * e, "train_loss": 1.0 / e, "train_accuracy": 0.7 + 0.02 * e,
             "test_accuracy": 0.65 + 0.02 * e} for e in range(1, num_epochs + 1)]


def assert_png(path, size):
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == size
        image.load()  # decodes the whole file: fails on a truncated PNG


@pytest.mark.parametrize("num_epochs", [1, 5])
@pytest.mark.parametrize("reference", [None, Band(0.518, 0.853, 0.892)])
def test_curves(tmp_path, num_epochs, reference):
    records = epoch_records(num_epochs)
    drawn_all = plots.curves(records, tmp_path / "curves.png", reference=reference, title="t")
    lines = [item for item in drawn_all if isinstance(item, plots.Line)]
    spans = [item for item in drawn_all if isinstance(item, plots.Span)]

    assert_png(tmp_path / "curves.png", plots.CURVES_SIZE)
    drawn = {line.label: line for line in lines}
    epochs = np.arange(1, num_epochs + 1)
    for label, key in (("train loss", "train_loss"), ("train acc", "train_accuracy"),
                       ("test acc", "test_accuracy")):
        np.testing.assert_array_equal(drawn[label].x, epochs)
        np.testing.assert_allclose(drawn[label].y, [r[key] for r in records])
    references = [line for line in lines if line.label.startswith("d2l")]
    if reference is None:
        assert references == [] and spans == []
    else:
        [median] = references
        assert median.label == "d2l median 0.853"
        assert median.linestyle == "--"
        np.testing.assert_allclose(median.y, 0.853)
        [band] = spans
        assert band.label == "d2l test acc 0.518–0.892"
        assert band.low == pytest.approx(0.518) and band.high == pytest.approx(0.892)
    assert list(tmp_path.iterdir()) == [tmp_path / "curves.png"]  # no temporary file left behind


def test_curves_rewritten_every_epoch_keeps_size_and_leaves_no_figures(tmp_path):
    import matplotlib.pyplot as plt
    for num_epochs in range(1, 4):
        plots.curves(epoch_records(num_epochs), tmp_path / "curves.png")
        assert_png(tmp_path / "curves.png", plots.CURVES_SIZE)
    assert plt.get_fignums() == []
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_predictions_title_with_class_names_and_mark_mistakes(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 28, 28, 1), dtype=np.uint8)
    labels = np.arange(20) % 10
    preds = labels.copy()
    preds[[1, 4]] = [6, 2]  # Trouser -> Shirt, Coat -> Pullover

    titles = plots.predictions(images, labels, preds, CLASS_NAMES, tmp_path / "predictions.png")

    assert_png(tmp_path / "predictions.png", plots.PREDICTIONS_SIZE)
    assert len(titles) == 18
    assert titles[1] == "true: Trouser\n✗ pred: Shirt"
    assert titles[4] == "true: Coat\n✗ pred: Pullover"
    assert titles[9] == "true: Ankle boot\npred: Ankle boot"
    assert [i for i, title in enumerate(titles) if plots.MISTAKE_MARK in title] == [1, 4]


def test_predictions_show_every_class_of_a_test_set_sorted_by_class():
    labels = np.repeat([0, 1, 2], [30, 2, 30])  # an image folder's order; class 1 has 2 images
    indices = plots.spread_over_classes(labels, 7, 3)
    assert labels[indices].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert indices.tolist() == [0, 30, 32, 1, 31, 33, 2]  # each class's first, in test order
    # 6 candidates a class: class 1's 2 images leave 14 to show, not 18
    assert sorted(plots.spread_over_classes(labels, 18, 3).tolist()) == [
        *range(6), 30, 31, *range(32, 38)]


def test_predictions_rgb_and_fewer_images_than_count(tmp_path):
    images = np.full((3, 32, 32, 3), 200, np.uint8)
    titles = plots.predictions(images, [0, 1, 2], [0, 1, 3], ["cat", "dog", "ship", "truck"],
                               tmp_path / "p.png")
    assert titles == ["true: cat\npred: cat", "true: dog\npred: dog", "true: ship\n✗ pred: truck"]
    assert_png(tmp_path / "p.png", plots.PREDICTIONS_SIZE)


def test_confusion_matrix_counts():
    labels = np.array([0, 0, 1, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 2, 0])
    matrix = plots.confusion_matrix(labels, preds, 3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0],
                                           [0, 2, 1],
                                           [1, 0, 1]])
    assert np.issubdtype(matrix.dtype, np.integer)
    with pytest.raises(ValueError):
        plots.confusion_matrix([0, 3], [0, 0], 3)


def test_confusion_plot(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 500)
    preds = np.where(rng.random(500) < 0.8, labels, rng.integers(0, 10, 500))

    matrix = plots.confusion(labels, preds, CLASS_NAMES, tmp_path / "confusion.png")

    assert_png(tmp_path / "confusion.png", plots.CONFUSION_SIZE)
    assert matrix.shape == (10, 10)
    assert matrix.sum() == 500
    assert np.trace(matrix) == np.sum(labels == preds)
    np.testing.assert_array_equal(matrix.sum(axis=1), np.bincount(labels, minlength=10))  # rows: true
    np.testing.assert_array_equal(matrix.sum(axis=0), np.bincount(preds, minlength=10))
