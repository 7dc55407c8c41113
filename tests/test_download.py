"""flaxcnn.datasets.download: fashion_mnist fetched as IDX files from a local HTTP server, checked,
kept, and never left half-written."""
import importlib.util
import os
import time

import numpy as np
import pytest

from flaxcnn import datasets
from flaxcnn.datasets import download, resolution
from tests.data_helpers import FileServer, checksums, write_idx_dir


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server of four small IDX files, and their arrays."""
    directory = tmp_path_factory.mktemp("served")
    arrays = write_idx_dir(directory, seed=11, n_train=40, n_test=12)
    with FileServer(directory) as server:
        yield server, arrays, checksums(directory)


@pytest.fixture
def source(served, monkeypatch):
    """fashion_mnist's download pointed at the local server, with the network up."""
    server, arrays, files = served
    server.cut.clear()
    server.requests.clear()
    files = dict(files)
    monkeypatch.setitem(download.SOURCES, "fashion_mnist", (server.url, files))
    monkeypatch.setattr(resolution, "network_available", lambda timeout=3.0: True)
    return server, arrays, files


def _leftovers(folder):
    return sorted(f for f in os.listdir(folder) if f.startswith(".")) if os.path.isdir(folder) else []


def test_download_checks_keeps_and_reuses_the_files(source, tmp_path):
    server, arrays, files = source
    dataset = datasets.resolve("fashion_mnist", data_dir=str(tmp_path))
    assert (dataset.info.num_train, dataset.info.num_test) == (40, 12)
    assert dataset.info.class_names == datasets.FASHION_MNIST_CLASSES
    for split in ("train", "test"):
        x, y = dataset.load_arrays(split)
        np.testing.assert_array_equal(x[..., 0], arrays[split][0])
        np.testing.assert_array_equal(y, arrays[split][1].astype(np.int32))
    folder = tmp_path / datasets.IDX_SUBDIR / "fashion_mnist"
    assert sorted(os.listdir(folder)) == sorted(files)  # the four files, no temporary ones
    assert sorted(server.requests) == sorted(files)
    assert datasets.is_prepared("fashion_mnist", data_dir=str(tmp_path))
    server.requests.clear()
    again = datasets.resolve("fashion_mnist", data_dir=str(tmp_path))
    assert server.requests == [] and again.info.num_train == 40  # kept: not downloaded again


def test_checksum_mismatch_is_one_line_and_keeps_nothing(source, tmp_path):
    server, arrays, files = source
    size, _ = files["t10k-images-idx3-ubyte.gz"]
    files["t10k-images-idx3-ubyte.gz"] = (size, "0" * 64)
    with pytest.raises(datasets.DataError, match=(
            r"the download of http://127.0.0.1:\d+/t10k-images-idx3-ubyte.gz "
            r"\(t10k-images-idx3-ubyte.gz\) has sha256 [0-9a-f]{64}, expected 0{64}; nothing was "
            "kept; run again")) as error:
        datasets.resolve("fashion_mnist", data_dir=str(tmp_path))
    assert "\n" not in str(error.value)
    folder = str(tmp_path / datasets.IDX_SUBDIR / "fashion_mnist")
    assert "t10k-images-idx3-ubyte.gz" not in os.listdir(folder) and _leftovers(folder) == []


def test_an_interrupted_download_leaves_nothing_and_the_next_run_succeeds(source, tmp_path):
    server, arrays, _ = source
    server.cut.add("train-images-idx3-ubyte.gz")
    with pytest.raises(datasets.DataError, match=(
            r"the download of http://127.0.0.1:\d+/train-images-idx3-ubyte.gz (failed|stopped) "
            r".*nothing was kept; run again")) as error:
        datasets.resolve("fashion_mnist", data_dir=str(tmp_path))
    assert "\n" not in str(error.value)
    folder = str(tmp_path / datasets.IDX_SUBDIR / "fashion_mnist")
    assert "train-images-idx3-ubyte.gz" not in os.listdir(folder) and _leftovers(folder) == []
    server.cut.clear()
    x, _ = datasets.resolve("fashion_mnist", data_dir=str(tmp_path)).load_arrays("train")
    np.testing.assert_array_equal(x[..., 0], arrays["train"][0])


def test_a_partial_file_of_a_killed_download_is_removed_and_never_read(source, tmp_path):
    server, arrays, _ = source
    folder = tmp_path / datasets.IDX_SUBDIR / "fashion_mnist"
    folder.mkdir(parents=True)
    stale = folder / f".train-images-idx3-ubyte.gz.abc{download.PARTIAL_SUFFIX}"
    stale.write_bytes(b"\x1f\x8b half a file")
    x, _ = datasets.resolve("fashion_mnist", data_dir=str(tmp_path)).load_arrays("train")
    np.testing.assert_array_equal(x[..., 0], arrays["train"][0])
    assert _leftovers(folder) == []


def test_no_network_and_no_local_copy_is_fast_and_names_the_offline_routes(source, tmp_path,
                                                                          monkeypatch):
    server, _, _ = source
    monkeypatch.setattr(resolution, "network_available", lambda timeout=3.0: False)
    start = time.monotonic()
    with pytest.raises(datasets.DataError) as error:
        datasets.resolve("mnist", data_dir=str(tmp_path))
    assert time.monotonic() - start < 5
    message = str(error.value)
    assert "\n" not in message and "'mnist' is not in" in message
    assert "--config.dataset=fashion_mnist_sample" in message and "--config.idx_dir=" in message
    assert server.requests == [] and not os.listdir(tmp_path)


def test_the_sources_are_tfds_own_urls_and_checksums():
    tfds_dir = importlib.util.find_spec("tensorflow_datasets").submodule_search_locations[0]
    for name, (base_url, files) in download.SOURCES.items():
        with open(os.path.join(tfds_dir, "url_checksums", f"{name}.txt")) as f:
            listed = {line.split("\t")[0]: tuple(line.split("\t")[1:3]) for line in f if line.strip()}
        assert {base_url + file: (str(size), sha) for file, (size, sha) in files.items()} == listed
