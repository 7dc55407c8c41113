"""Test helpers: IDX files written by an independent writer, a local HTTP server of a folder (IDX
files, torchvision's weights), and a small tfds dataset that prepares offline."""
import gzip
import hashlib
import http.server
import os
import struct
import threading

import numpy as np

from flaxcnn.datasets import idx as idx_lib


def write_idx(path, array):
    """An independent IDX writer (not flaxcnn.idx's), gzipped."""
    array = np.asarray(array, np.uint8)
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(f">I{array.ndim}I", 0x800 | array.ndim, *array.shape) + array.tobytes())


def write_idx_dir(directory, seed, n_train=50, n_test=20, size=(28, 28)):
    """The four official files of a random dataset in `directory`; returns its arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train": (rng.integers(0, 256, (n_train, *size), dtype=np.uint8),
                  rng.integers(0, 10, n_train, dtype=np.uint8)),
        "test": (rng.integers(0, 256, (n_test, *size), dtype=np.uint8),
                 rng.integers(0, 10, n_test, dtype=np.uint8)),
    }
    os.makedirs(directory, exist_ok=True)
    for split, (images_name, labels_name) in idx_lib.FILES.items():
        write_idx(os.path.join(directory, images_name), arrays[split][0])
        write_idx(os.path.join(directory, labels_name), arrays[split][1])
    return arrays


def checksums(directory):
    """{file: (size, sha256)} of the IDX files in `directory`, as download.SOURCES holds them."""
    out = {}
    for name in idx_lib.ALL_FILES:
        data = open(os.path.join(directory, name), "rb").read()
        out[name] = (len(data), hashlib.sha256(data).hexdigest())
    return out


class FileServer:
    """Serves the files of a folder on 127.0.0.1; `cut` names files whose body stops half-way
    (the connection closes), `requests` lists the paths asked for."""

    def __init__(self, directory):
        self.directory, self.cut, self.requests = str(directory), set(), []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append(name)
                path = os.path.join(server.directory, name)
                if not os.path.isfile(path):
                    self.send_error(404)
                    return
                data = open(path, "rb").read()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if name in server.cut else data)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


TFDS_TEST_NAME = "flaxcnn_test_digits"
TFDS_TEST_IMAGES = np.random.default_rng(0).integers(0, 256, (20, 28, 28, 1), dtype=np.uint8)


def tfds_test_builder():
    """The tfds builder class of `flaxcnn_test_digits` (registered in tfds under that name on the
    first call): 20 train and the same 20 test examples, image i = TFDS_TEST_IMAGES[i], label
    i % 10, prepared without a network."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import registered

    tfds.disable_progress_bar()
    known = registered._DATASET_REGISTRY  # pylint: disable=protected-access
    if TFDS_TEST_NAME in known:
        return known[TFDS_TEST_NAME]

    class FlaxcnnTestDigits(tfds.testing.DummyMnist, skip_registration=False):
        name = TFDS_TEST_NAME

        def _generate_examples(self):
            for i, image in enumerate(TFDS_TEST_IMAGES):
                yield i, {"image": image, "label": i % 10}

    return FlaxcnnTestDigits
