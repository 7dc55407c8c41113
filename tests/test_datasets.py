"""flaxcnn.datasets: the bundled sample, the IDX route, offline errors, shards, the tfds route
(mock_data, data sources, damaged folders), streaming, and no TensorFlow on the array routes."""
import dataclasses
import gzip
import os
import socket
import struct
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from flaxcnn import datasets
from flaxcnn.datasets import idx as idx_lib
from flaxcnn.datasets import resolution
from tests.data_helpers import (TFDS_TEST_IMAGES, TFDS_TEST_NAME, tfds_test_builder, write_idx,
                                write_idx_dir)

SAMPLE = datasets.SAMPLE_NAME
TRAIN_COUNTS = [107, 105, 88, 92, 95, 100, 100, 115, 102, 99]
TEST_COUNTS = [108, 105, 111, 94, 115, 88, 97, 95, 95, 95]


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    """A data_dir for the module; the sample is read in place and writes nothing into it."""
    root = str(tmp_path_factory.mktemp("tfds"))
    datasets.resolve(SAMPLE, data_dir=root).info
    assert os.listdir(root) == []
    return root


@pytest.fixture(scope="module")
def sample_test(sample_dir):
    return datasets.resolve(SAMPLE, data_dir=sample_dir).load_arrays("test")




# --- the bundled sample ----------------------------------------------------------------------


def test_sample_info(sample_dir):
    info = datasets.resolve(SAMPLE, data_dir=sample_dir).info
    assert info.name == SAMPLE
    assert (info.num_train, info.num_test) == (1003, 1003)
    assert info.image_shape == (28, 28, 1) and info.channels == 1
    assert info.num_classes == 10
    # Fashion-MNIST's names, as tfds' own fashion_mnist builder has them (no download needed).
    assert info.class_names == tuple(tfds.builder("fashion_mnist").info.features["label"].names)
    assert info.nbytes_in_memory == 2006 * (28 * 28 + 4)
    assert dataclasses.replace(info, image_shape=None).nbytes_in_memory is None


def test_sample_arrays(sample_dir, sample_test):
    images, labels = datasets.resolve(SAMPLE, data_dir=sample_dir).load_arrays("train")
    for (x, y), counts in [((images, labels), TRAIN_COUNTS), (sample_test, TEST_COUNTS)]:
        assert x.dtype == np.uint8 and x.shape == (1003, 28, 28, 1)
        assert y.dtype == np.int32 and y.shape == (1003,)
        assert np.bincount(y, minlength=10).tolist() == counts
    # Example 0 is the first image of the official file, byte for byte.
    with gzip.open(os.path.join(datasets.SAMPLE_DIR, "train-images-idx3-ubyte.gz")) as f:
        raw = f.read()
    assert struct.unpack(">4I", raw[:16]) == (0x803, 1003, 28, 28)
    np.testing.assert_array_equal(images[0, :, :, 0], np.frombuffer(raw[16 : 16 + 784], np.uint8).reshape(28, 28))
    with gzip.open(os.path.join(datasets.SAMPLE_DIR, "t10k-labels-idx1-ubyte.gz")) as f:
        np.testing.assert_array_equal(sample_test[1], np.frombuffer(f.read()[8:], np.uint8))


# --- the idx_dir route -----------------------------------------------------------------------


def test_idx_route_exact_arrays_and_no_shadowing(tmp_path, sample_dir):
    arrays = write_idx_dir(tmp_path / "idx", seed=0)
    root = tmp_path / "tfds"
    info = datasets.resolve("fashion_mnist", data_dir=str(root), idx_dir=str(tmp_path / "idx")).info
    assert (info.name, info.num_train, info.num_test) == ("fashion_mnist", 50, 20)
    assert info.class_names == datasets.FASHION_MNIST_CLASSES and info.image_shape == (28, 28, 1)
    for split in ("train", "test"):
        x, y = datasets.resolve("fashion_mnist", data_dir=str(root), idx_dir=str(tmp_path / "idx")).load_arrays(split)
        np.testing.assert_array_equal(x[..., 0], arrays[split][0])
        np.testing.assert_array_equal(y, arrays[split][1].astype(np.int32))
        assert x.dtype == np.uint8 and y.dtype == np.int32
    assert not root.exists()  # read in place: nothing prepared or copied into data_dir


def test_idx_route_changed_files_give_new_data(tmp_path):
    directory, root = str(tmp_path / "idx"), str(tmp_path / "tfds")
    write_idx_dir(directory, seed=1)
    first = datasets.resolve("fashion_mnist", data_dir=root, idx_dir=directory).load_arrays("train")
    changed = write_idx_dir(directory, seed=2, n_train=30)
    second = datasets.resolve("fashion_mnist", data_dir=root, idx_dir=directory).load_arrays("train")
    assert len(first[0]) == 50
    np.testing.assert_array_equal(second[0][..., 0], changed["train"][0])
    assert not os.path.exists(root)  # no stale copy that could be served instead


def test_idx_route_reads_the_files_once(tmp_path, monkeypatch):
    directory = tmp_path / "idx"
    arrays = write_idx_dir(directory, seed=5)
    reads = []
    monkeypatch.setattr(idx_lib, "read", lambda path, magic, read=idx_lib.read: reads.append(path)
                        or read(path, magic))
    datasets.resolve("fashion_mnist", data_dir=str(tmp_path / "tfds"), idx_dir=str(directory))
    reads.clear()
    dataset = datasets.resolve("fashion_mnist", data_dir=str(tmp_path / "tfds"),
                               idx_dir=str(directory))
    assert len(reads) == 4  # once each, into memory
    for epoch in range(2):  # every epoch and evaluation reads the arrays, not the files
        assert len(list(dataset.stream_train(batch_size=10, image_size=28, seed=0,
                                             epoch=epoch))) == 5
        assert sum(b["mask"].sum() for b in dataset.stream_eval(batch_size=8, image_size=28)) == 20
    np.testing.assert_array_equal(dataset.load_arrays("test")[0][..., 0], arrays["test"][0])
    assert len(reads) == 4


def test_idx_route_default_data_dir_is_not_shadowed(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "default"))  # tfds' own default data_dir
    write_idx_dir(tmp_path / "idx", seed=3, n_train=12, n_test=5, size=(8, 6))
    info = datasets.resolve("mnist", idx_dir=str(tmp_path / "idx")).info
    assert info.class_names == tuple("0123456789") and info.image_shape == (8, 6, 1)
    assert not (tmp_path / "default").exists()
    # tfds' own fashion_mnist/mnist in the default data_dir stay unprepared.
    assert not tfds.builder("mnist", data_dir=str(tmp_path / "default")).is_prepared()


def test_idx_route_bad_files(tmp_path):
    directory = tmp_path / "idx"
    write_idx_dir(directory, seed=4)
    labels = directory / "train-labels-idx1-ubyte.gz"
    images = directory / "t10k-images-idx3-ubyte.gz"
    good_images = images.read_bytes()
    with gzip.open(images, "wb") as f:  # an images file with the labels' magic number
        f.write(struct.pack(">II", 0x801, 20) + bytes(20))
    with pytest.raises(datasets.DataError, match="t10k-images-idx3-ubyte.gz.*magic"):
        datasets.resolve("fashion_mnist", data_dir=str(tmp_path / "tfds"), idx_dir=str(directory)).info
    with gzip.open(images, "wb") as f:  # truncated data
        f.write(gzip.decompress(good_images)[:-10])
    with pytest.raises(datasets.DataError, match="t10k-images-idx3-ubyte.gz"):
        datasets.resolve("fashion_mnist", data_dir=str(tmp_path / "tfds"), idx_dir=str(directory)).info
    images.write_bytes(good_images)
    labels.unlink()
    with pytest.raises(datasets.DataError, match="missing IDX file .*train-labels-idx1-ubyte.gz"):
        datasets.resolve("fashion_mnist", data_dir=str(tmp_path / "tfds"), idx_dir=str(directory)).load_arrays("train")
    with pytest.raises(datasets.DataError, match="idx_dir"):
        datasets.resolve("cifar10", data_dir=str(tmp_path / "tfds"), idx_dir=str(directory)).info
    assert not (tmp_path / "tfds").exists()


# --- offline and bad names -------------------------------------------------------------------


def test_offline_error_is_fast_and_names_both_routes(tmp_path, monkeypatch):
    monkeypatch.setattr(resolution, "network_available", lambda timeout=3.0: False)
    start = time.monotonic()
    with pytest.raises(datasets.DataError) as error:
        datasets.resolve("fashion_mnist", data_dir=str(tmp_path)).info
    assert time.monotonic() - start < 5
    message = str(error.value)
    assert "\n" not in message
    assert "--config.dataset=fashion_mnist_sample" in message and "--config.idx_dir=" in message
    assert not os.listdir(tmp_path)


def test_network_probe(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setattr(resolution, "DOWNLOAD_HOST", server.getsockname())
        assert resolution.network_available(timeout=2.0) is True
    monkeypatch.setattr(resolution, "DOWNLOAD_HOST", ("host.invalid", 443))
    start = time.monotonic()
    assert resolution.network_available(timeout=1.0) is False
    assert time.monotonic() - start < 1.5


def test_unknown_and_non_image_datasets(tmp_path):
    with pytest.raises(datasets.DataError, match="unknown dataset 'fashion_mnst'.*fashion_mnist_sample"):
        datasets.resolve("fashion_mnst", data_dir=str(tmp_path)).info
    with pytest.raises(datasets.DataError, match="'imdb_reviews' is not an image-classification dataset"):
        datasets.resolve("imdb_reviews", data_dir=str(tmp_path)).info
    assert not os.listdir(tmp_path)


# --- multi-host shards -----------------------------------------------------------------------


def test_shards_partition_the_split(sample_dir, sample_test):
    shards = [datasets.resolve(SAMPLE, data_dir=sample_dir, process_index=i, process_count=3).load_arrays("test") for i in range(3)]
    assert [len(y) for _, y in shards] == [335, 334, 334]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in shards]), sample_test[0])
    np.testing.assert_array_equal(np.concatenate([y for _, y in shards]), sample_test[1])


# --- tfds.testing.mock_data ------------------------------------------------------------------


# fashion_mnist and mnist are no longer read through tfds unless tfds prepared them (they are
# downloaded as IDX files: tests/test_download.py), so mock_data tests two tfds-only datasets.
@pytest.mark.parametrize("name, shape", [("kmnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_mock_data(name, shape, tmp_path, monkeypatch):
    monkeypatch.setattr(resolution, "network_available", lambda timeout=3.0: True)
    with tfds.testing.mock_data(num_examples=12):
        dataset = datasets.resolve(name, data_dir=str(tmp_path))
        info = dataset.info
        images, labels = dataset.load_arrays("train")
        batches = list(dataset.stream_eval(batch_size=5, image_size=shape[0]))
    assert (info.num_classes, info.image_shape, info.num_train, info.num_test) == (10, shape, 12, 12)
    assert images.shape == (12, *shape) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and labels.min() >= 0 and labels.max() < 10
    assert [b["mask"].sum() for b in batches] == [5, 5, 2]


# --- streaming -------------------------------------------------------------------------------


def _train(sample_dir, **kwargs):
    kwargs = {"batch_size": 64, "image_size": 28, "seed": 0, "epoch": 0, **kwargs}
    shard = {k: kwargs.pop(k) for k in ("process_index", "process_count") if k in kwargs}
    return list(datasets.resolve(SAMPLE, data_dir=sample_dir, **shard).stream_train(**kwargs))


def test_stream_train_order(sample_dir):
    a, b = _train(sample_dir), _train(sample_dir)
    # ceil(1003 / 64) batches, the last padded to 64 with its 43 examples first
    assert len(a) == 16 == datasets.resolve(SAMPLE, data_dir=sample_dir).train_batches_per_epoch(64)
    assert a[0]["image"].shape == (64, 28, 28, 1) and a[0]["image"].dtype == np.uint8
    assert a[0]["label"].shape == (64,) and a[0]["label"].dtype == np.int32
    assert [b["mask"].sum() for b in a] == [64] * 15 + [43] and a[-1]["mask"][:43].all()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    other_epoch = _train(sample_dir, epoch=1)
    assert not np.array_equal(a[0]["image"], other_epoch[0]["image"])
    skipped = _train(sample_dir, skip_batches=3)
    assert len(skipped) == len(a) - 3
    for x, y in zip(a[3:], skipped):
        np.testing.assert_array_equal(x["image"], y["image"])
    # An epoch holds every example once (it is a shuffle of the split, not a resample).
    labels = np.concatenate([x["label"][x["mask"]] for x in a])
    np.testing.assert_array_equal(np.bincount(labels),
                                  [107, 105, 88, 92, 95, 100, 100, 115, 102, 99])
    flat = np.concatenate([x["image"][x["mask"]].reshape(-1, 28 * 28) for x in a])
    assert len(np.unique(flat, axis=0)) == len(flat) == 1003


def test_stream_train_resizes_and_shards(sample_dir):
    shards = [_train(sample_dir, image_size=32, batch_size=100, process_index=i, process_count=3)
              for i in range(3)]
    # 335, 334 and 334 examples: 4 batches each, the last partial
    assert [[b["mask"].sum() for b in s] for s in shards] == (
        [[100] * 3 + [35]] + [[100] * 3 + [34]] * 2)
    batches = shards[1]
    assert batches[0]["image"].shape == (100, 32, 32, 1) and batches[0]["image"].dtype == np.uint8


def test_stream_eval_covers_every_example_once(sample_dir, sample_test):
    batches = list(datasets.resolve(SAMPLE, data_dir=sample_dir).stream_eval(batch_size=100, image_size=28))
    assert len(batches) == 11
    assert all(b["image"].shape == (100, 28, 28, 1) and b["mask"].dtype == bool for b in batches)
    assert batches[-1]["mask"].sum() == 3 and batches[-1]["mask"][:3].all()
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches])[mask], sample_test[0])
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[mask], sample_test[1])
    # Three processes: 335 / 334 / 334 examples, the same number of batches each.
    shards = [list(datasets.resolve(SAMPLE, data_dir=sample_dir, process_index=i, process_count=3).stream_eval(batch_size=100, image_size=28)) for i in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    labels = np.concatenate([b["label"][b["mask"]] for s in shards for b in s])
    np.testing.assert_array_equal(labels, sample_test[1])


# --- damaged inputs: one line naming the file, and nothing left that poisons the next run -----


@pytest.mark.parametrize("damage,message", [
    ("truncated gzip", r"IDX file .*t10k-images-idx3-ubyte.gz is a damaged gzip file \(.*\); it may "
                       "be truncated: download it again"),
    ("not gzip", r"IDX file .*t10k-images-idx3-ubyte.gz is not gzip-compressed \(and not a plain "
                 r"IDX file either: it starts with 0x3c68746d\); download it again"),
    ("wrong magic", r"IDX file .*t10k-images-idx3-ubyte.gz has magic number 0x00000801, expected "
                    "0x00000803"),
    ("counts disagree", r"IDX file .*t10k-images-idx3-ubyte.gz holds 20 images but "
                        r".*t10k-labels-idx1-ubyte.gz holds 19 labels"),
])
def test_damaged_idx_files_are_one_line_and_good_files_then_work(damage, message, tmp_path):
    directory, root = tmp_path / "idx", tmp_path / "tfds"
    arrays = write_idx_dir(directory, seed=6)
    images = directory / "t10k-images-idx3-ubyte.gz"
    good = {p: p.read_bytes() for p in directory.iterdir()}
    if damage == "truncated gzip":
        images.write_bytes(good[images][: len(good[images]) // 2])
    elif damage == "not gzip":  # e.g. an HTML error page saved under the file's name
        images.write_bytes(b"<html><body>403 Forbidden</body></html>")
    elif damage == "wrong magic":
        write_idx(images, arrays["test"][1])  # a labels file under the images' name
    else:
        write_idx(directory / "t10k-labels-idx1-ubyte.gz", arrays["test"][1][:19])
    with pytest.raises(datasets.DataError, match=message) as error:
        datasets.resolve("fashion_mnist", data_dir=str(root), idx_dir=str(directory))
    assert "\n" not in str(error.value)
    assert not root.exists()  # nothing was prepared from the bad files
    for path, data in good.items():
        path.write_bytes(data)
    x, y = datasets.resolve("fashion_mnist", data_dir=str(root), idx_dir=str(directory)).load_arrays("test")
    np.testing.assert_array_equal(x[..., 0], arrays["test"][0])
    np.testing.assert_array_equal(y, arrays["test"][1])


def test_a_prepared_folder_without_its_data_files_is_one_line_and_recovers(tmp_path, monkeypatch):
    import shutil

    SAMPLE = TFDS_TEST_NAME  # a tfds dataset that prepares offline (the sample is no tfds dataset)
    tfds_test_builder()
    monkeypatch.setattr(resolution, "network_available", lambda timeout=3.0: True)
    root = str(tmp_path / "tfds")
    folder = datasets.resolve(SAMPLE, data_dir=root).builder.data_dir
    train_file = os.path.join(folder, f"{SAMPLE}-train.tfrecord-00000-of-00001")
    test_file = os.path.join(folder, f"{SAMPLE}-test.tfrecord-00000-of-00001")
    data = open(test_file, "rb").read()
    with open(test_file, "wb") as f:  # a copy that stopped half-way
        f.write(data[: len(data) // 2])
    with pytest.raises(datasets.DataError, match=(
            rf"the prepared dataset '{SAMPLE}' in {folder} is damaged: its test files "
            rf"\({SAMPLE}-test.tfrecord-00000-of-00001\) hold {len(data) // 2} bytes, "
            rf"dataset_info.json says {len(data)}; delete {folder} and run again")):
        datasets.resolve(SAMPLE, data_dir=root)
    os.remove(train_file)  # dataset_info.json left without its data
    with pytest.raises(datasets.DataError, match=(
            rf"the prepared dataset '{SAMPLE}' in {folder} is incomplete: its train file "
            rf"{train_file} is missing \(1 of 1 files\); delete {folder} and run again")):
        datasets.resolve(SAMPLE, data_dir=root)
    shutil.rmtree(folder)  # what the message says to do
    assert datasets.resolve(SAMPLE, data_dir=root).info.num_train == 20


# --- datasets tfds prepared here: read as they are ------------------------------------------


@pytest.fixture(scope="module")
def tfds_prepared(tmp_path_factory):
    """data_dirs where tfds prepared flaxcnn_test_digits, as tfrecord and as ArrayRecord."""
    builder = tfds_test_builder()
    roots = {}
    for file_format in ("tfrecord", "array_record"):
        roots[file_format] = str(tmp_path_factory.mktemp(file_format))
        builder(data_dir=roots[file_format], file_format=file_format).download_and_prepare()
    return roots


def assert_test_digits(images, labels):
    """Every example is image j of TFDS_TEST_IMAGES with label j % 10, each j once (tfds stores
    them in its own order)."""
    index = {image.tobytes(): j for j, image in enumerate(TFDS_TEST_IMAGES)}
    found = [index[image.tobytes()] for image in images]
    assert sorted(found) == list(range(20))
    assert labels.dtype == np.int32 and labels.tolist() == [j % 10 for j in found]


def test_a_tfds_array_record_dataset_is_read_through_its_data_source(tfds_prepared):
    dataset = datasets.resolve(TFDS_TEST_NAME, data_dir=tfds_prepared["array_record"])
    assert isinstance(dataset, datasets.ArrayDataset)  # in memory: the device pipeline's arrays
    assert (dataset.info.num_train, dataset.info.num_test, dataset.info.image_shape) == (
        20, 20, (28, 28, 1))
    images, labels = dataset.load_arrays("train")
    assert images.dtype == np.uint8 and images.shape == (20, 28, 28, 1)
    assert_test_digits(images, labels)
    tfrecord = datasets.resolve(TFDS_TEST_NAME, data_dir=tfds_prepared["tfrecord"])
    assert not isinstance(tfrecord, datasets.ArrayDataset)  # read by tf.data
    assert_test_digits(*tfrecord.load_arrays("test"))


def test_fashion_mnist_prepared_by_tfds_is_read_from_tfds(tmp_path, monkeypatch):
    monkeypatch.setattr(resolution, "network_available", lambda timeout=3.0: False)
    killed = tmp_path / "fashion_mnist" / "incomplete.X1Y2_3.0.1"  # a preparation tfds never ended
    killed.mkdir(parents=True)
    (killed / "dataset_info.json").write_text("{}")
    assert not datasets.is_prepared("fashion_mnist", data_dir=str(tmp_path))
    (tmp_path / "fashion_mnist" / "3.0.1").mkdir(parents=True)
    (tmp_path / "fashion_mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    calls = []
    from flaxcnn.datasets import tfds_route

    monkeypatch.setattr(tfds_route, "resolve", lambda name, **kwargs: calls.append(name) or "tfds")
    assert datasets.resolve("fashion_mnist", data_dir=str(tmp_path)) == "tfds"
    assert calls == ["fashion_mnist"] and datasets.is_prepared("fashion_mnist", data_dir=str(tmp_path))
    assert not (tmp_path / datasets.IDX_SUBDIR).exists()  # no download next to tfds' copy


def test_array_dataset_from_arrays_plugs_in_other_readers():
    rng = np.random.default_rng(3)
    train = (rng.integers(0, 256, (7, 5, 4, 3), dtype=np.uint8), np.array([0, 1, 2, 0, 1, 2, 0]))
    test = (rng.integers(0, 256, (3, 5, 4, 3), dtype=np.uint8), np.array([2, 1, 0]))
    dataset = datasets.ArrayDataset.from_arrays("folder:x", ("a", "b", "c"), train, test,
                                                process_index=1, process_count=2)
    assert dataset.info == datasets.DatasetInfo("folder:x", 3, ("a", "b", "c"), (5, 4, 3), 3, 7, 3)
    x, y = dataset.load_arrays("train")  # process 1 of 2: examples 4..6
    np.testing.assert_array_equal(x, train[0][4:])
    np.testing.assert_array_equal(y, [1, 2, 0])
    # shards of 4 and 3 examples: batches of 2 for the larger one, the same count on both
    assert y.dtype == np.int32 and dataset.train_batches_per_epoch(2) == 2
    whole = dataclasses.replace(dataset, process_index=0, process_count=1)
    np.testing.assert_array_equal(whole.load_arrays("test")[0], test[0])
    with pytest.raises(datasets.DataError, match="labels must be in 0..2, got 0..3"):
        datasets.ArrayDataset.from_arrays("folder:x", "abc", train, (test[0], [3, 1, 0]))
    with pytest.raises(datasets.DataError, match="train images of shape .*test images of shape"):
        datasets.ArrayDataset.from_arrays("folder:x", "abc", train, (test[0][:, :4], test[1]))
    with pytest.raises(datasets.DataError, match="images must be uint8"):
        datasets.ArrayDataset.from_arrays("folder:x", "abc", (train[0] * 1.0, train[1]), test)
