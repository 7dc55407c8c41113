"""Resolving a dataset name once, into a Dataset; no TensorFlow and no tfds on the common routes.

In order:

* ``folder:PATH``: an image folder, PATH/train/<class>/* and PATH/test/<class>/* (or valid/)
  (:mod:`flaxcnn.datasets.folder`), decoded once into a memory-mapped cache
  (:mod:`flaxcnn.datasets.folder_cache`);
* ``idx_dir=DIR`` (for ``fashion_mnist`` or ``mnist``): the four official IDX files in DIR;
* ``fashion_mnist_sample``: the bundled sample (``flaxcnn/sample_data/``, the same IDX files);
* ``fashion_mnist`` / ``mnist`` that tfds has prepared in ``data_dir``: read as tfds stored them
  (:mod:`flaxcnn.datasets.tfds_route`);
* ``fashion_mnist`` / ``mnist`` otherwise: the official IDX files, downloaded once into
  ``<data_dir>/flaxcnn_idx/<name>/`` (:mod:`flaxcnn.datasets.download`);
* any other name: a tfds dataset (:mod:`flaxcnn.datasets.tfds_route`, which imports tfds).

The first five are read with numpy (images with Pillow) (:mod:`flaxcnn.datasets.idx`) into an
:class:`~flaxcnn.datasets.dataset.ArrayDataset`. Downloads happen only when the network is up: the
offline probe answers within seconds, and the error names the two routes that work without a
network (the bundled sample, ``idx_dir``).
"""
from __future__ import annotations

import glob
import os
import socket
import threading
import time
import urllib.parse
import urllib.request

from flaxcnn.datasets import download
from flaxcnn.datasets import idx as idx_lib
from flaxcnn.datasets.catalog import (IDX_DATASETS, SAMPLE_DIR, SAMPLE_NAME, DataError,
                                      default_data_dir, folder_path)
from flaxcnn.datasets.dataset import ArrayDataset

IDX_SUBDIR = "flaxcnn_idx"
DOWNLOAD_HOST = ("storage.googleapis.com", 443)
OFFLINE_ROUTES = (
    f"to work offline use --config.dataset={SAMPLE_NAME} (the bundled Fashion-MNIST sample), or put "
    f"the four official IDX gz files ({', '.join(idx_lib.ALL_FILES)}) in a folder DIR and pass "
    "--config.idx_dir=DIR (with --config.dataset=fashion_mnist or mnist)"
)


def resolve(name, *, data_dir=None, idx_dir=None, process_index: int = 0,
            process_count: int = 1, folder_store_size: int = 256, folder_skip_bad: bool = False,
            progress: bool = True):
    """The dataset `name` (this process's shard of it): an ArrayDataset, or for tfds datasets
    that must stay on disk a TfdsDataset; a one-line DataError when it cannot be had.
    ``folder:PATH`` is an image folder (flaxcnn.datasets.folder), decoded once into squares of
    `folder_store_size` pixels (with `folder_skip_bad`, unreadable files are skipped)."""
    if not (process_count >= 1 and 0 <= process_index < process_count):
        raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, "
                         f"{process_count}")
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"no dataset given ({name!r}); try --config.dataset=fashion_mnist or "
                        f"{SAMPLE_NAME}")
    name = name.strip()
    data_dir = os.path.expanduser(data_dir) if data_dir else default_data_dir()
    shard = {"process_index": process_index, "process_count": process_count}
    images_folder = folder_path(name)
    if images_folder:
        from flaxcnn.datasets import folder_cache  # Pillow, needed for image folders only

        data = folder_cache.load_folder(images_folder, data_dir=data_dir, store_size=folder_store_size,
                                  skip_bad=folder_skip_bad, progress=progress)
        return ArrayDataset.from_arrays(
            f"folder:{images_folder}", data.class_names, (data.train_images, data.train_labels),
            (data.test_images, data.test_labels),
            storage=f"memory-mapped from {data.cache_dir} ({data.nbytes / 2**30:.2f} GiB on disk)",
            **shard)
    if idx_dir:
        if name not in IDX_DATASETS:
            raise DataError(
                f"--config.idx_dir only stands in for {' or '.join(IDX_DATASETS)}, not {name!r}; "
                "drop idx_dir or set --config.dataset=fashion_mnist")
        directory = os.path.abspath(os.path.expanduser(idx_dir))
        return _from_idx(name, directory, "--config.idx_dir must hold the four official files "
                         f"{', '.join(idx_lib.ALL_FILES)}", **shard)
    if name == SAMPLE_NAME:
        return _from_idx(SAMPLE_NAME, SAMPLE_DIR, "the bundled sample is damaged: reinstall "
                         "flaxcnn", class_names=IDX_DATASETS["fashion_mnist"], **shard)
    if name in IDX_DATASETS and not _prepared_by_tfds(name, data_dir):
        directory = os.path.join(data_dir, IDX_SUBDIR, name)
        if download.missing(name, directory):
            if not network_available():
                raise DataError(
                    f"dataset {name!r} is not in {directory} and cannot be downloaded (no "
                    f"network); {OFFLINE_ROUTES}")
            download.fetch(name, directory)
        return _from_idx(name, directory, f"delete {directory} and run again to download it afresh",
                         **shard)
    from flaxcnn.datasets import tfds_route  # imports tfds

    return tfds_route.resolve(name, data_dir=data_dir, can_download=network_available,
                              offline_message=OFFLINE_ROUTES, **shard)


def is_prepared(name, *, data_dir=None) -> bool:
    """Whether `name` can be loaded from data_dir without downloading (the sample always can)."""
    if name == SAMPLE_NAME:
        return True
    data_dir = os.path.expanduser(data_dir) if data_dir else default_data_dir()
    if name in IDX_DATASETS:
        return _prepared_by_tfds(name, data_dir) or not download.missing(
            name, os.path.join(data_dir, IDX_SUBDIR, name))
    from flaxcnn.datasets import tfds_route

    return tfds_route.is_prepared(name, data_dir)


def network_available(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the tfds download host (or the HTTPS proxy) opens in `timeout` s.

    DNS resolution and connecting both run in a daemon thread, so a hanging resolver cannot
    block the caller for longer than `timeout`.
    """
    host, port = DOWNLOAD_HOST
    proxy = urllib.request.getproxies().get("https")
    if proxy and not urllib.request.proxy_bypass(host):
        parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parsed.hostname:
            host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    deadline = time.monotonic() + timeout
    ok = threading.Event()

    def probe():
        try:
            addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            return
        for family, kind, proto, _, address in addresses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                with socket.socket(family, kind, proto) as s:
                    s.settimeout(remaining)
                    s.connect(address)
                ok.set()
                return
            except OSError:
                continue

    thread = threading.Thread(target=probe, name="flaxcnn-network-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return ok.is_set()


def _from_idx(name: str, folder: str, what_to_do: str, *, class_names=None,
              process_index: int, process_count: int) -> ArrayDataset:
    class_names = class_names or IDX_DATASETS[name]
    try:
        splits = idx_lib.read_all(folder, len(class_names))
    except idx_lib.IdxError as e:
        raise DataError(f"{e}; {what_to_do}") from e
    return ArrayDataset.from_arrays(name, class_names, splits["train"], splits["test"],
                                    process_index=process_index, process_count=process_count)


def _prepared_by_tfds(name: str, data_dir: str) -> bool:
    """Whether tfds has prepared `name` in data_dir (``<name>/<version>/dataset_info.json``, not
    in one of its ``incomplete.*`` folders); asks no tfds, so the IDX routes never import it."""
    pattern = os.path.join(glob.escape(data_dir), name, "[0-9]*", "dataset_info.json")
    return bool(glob.glob(pattern))
