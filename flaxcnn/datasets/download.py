"""Downloading the official IDX files of Fashion-MNIST and MNIST, with plain HTTP and no tfds.

The URLs, sizes and sha256 checksums are the ones tfds's own builders download and check
(tensorflow_datasets 4.9.10: ``image_classification/mnist.py`` for the URLs,
``url_checksums/fashion_mnist.txt`` and ``url_checksums/mnist.txt`` for sizes and checksums).
Each file goes to a temporary name beside its final one and is renamed only once its size and
checksum match, so a file under its final name is always a complete, checked copy; a failed or
interrupted download leaves nothing behind. `fetch_file` also downloads torchvision's weights
(flaxcnn.pretrained), whose files carry a prefix of their sha256 in their names.
"""
from __future__ import annotations

import glob
import hashlib
import http.client
import os
import tempfile
import urllib.request

from flaxcnn.datasets.catalog import DataError

# name -> (base URL, {file: (size in bytes, sha256)})
SOURCES = {
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        "train-images-idx3-ubyte.gz":
            (26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        "train-labels-idx1-ubyte.gz":
            (29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        "t10k-images-idx3-ubyte.gz":
            (4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        "t10k-labels-idx1-ubyte.gz":
            (5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    }),
    "mnist": ("https://storage.googleapis.com/cvdf-datasets/mnist/", {
        "train-images-idx3-ubyte.gz":
            (9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        "train-labels-idx1-ubyte.gz":
            (28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        "t10k-images-idx3-ubyte.gz":
            (1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        "t10k-labels-idx1-ubyte.gz":
            (4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    }),
}
TIMEOUT_SECONDS = 30
PARTIAL_SUFFIX = ".part"


def missing(name: str, folder: str) -> list[str]:
    """The files of `name` not yet downloaded into `folder`."""
    return [f for f in SOURCES[name][1] if not os.path.isfile(os.path.join(folder, f))]


def fetch(name: str, folder: str) -> None:
    """Downloads every missing file of `name` into `folder`, each checked before it is kept."""
    base_url, files = SOURCES[name]
    os.makedirs(folder, exist_ok=True)
    for filename in missing(name, folder):
        size, sha256 = files[filename]
        fetch_file(base_url + filename, os.path.join(folder, filename), size, sha256)


def fetch_file(url: str, path: str, size: int | None, sha256: str, *,
               kept: str = "nothing was kept; run again, or put the official files in a folder "
                           "DIR and pass --config.idx_dir=DIR") -> None:
    """`url` -> `path`, through a temporary file renamed only when its size (unless None) and its
    sha256 (or a prefix of it, as torch.hub's file names carry) match. A failure is one DataError
    line ending with `kept`, what was kept and what to do."""
    folder, filename = os.path.split(path)
    for stale in glob.glob(os.path.join(glob.escape(folder), f".{filename}.*{PARTIAL_SUFFIX}")):
        os.remove(stale)  # left by a download that was killed
    fd, partial = tempfile.mkstemp(dir=folder, prefix=f".{filename}.", suffix=PARTIAL_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as out:
            received, digest = _copy(url, out)
        if size is not None and received != size:
            raise DataError(f"the download of {url} stopped after {received} of {size} bytes; "
                            f"{kept}")
        if not digest.startswith(sha256):
            raise DataError(f"the download of {url} ({filename}) has sha256 {digest}, expected "
                            f"{sha256}{'' if len(sha256) == 64 else '...'}; {kept}")
        os.replace(partial, path)
    except (OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e.__class__.__name__ + (f": {e}" if str(e) else "")
        raise DataError(f"the download of {url} failed ({reason}); {kept}") from e
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _copy(url: str, out) -> tuple[int, str]:
    """Streams `url` into `out`; (bytes received, their sha256)."""
    digest, received = hashlib.sha256(), 0
    with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
        while chunk := response.read(1 << 20):
            out.write(chunk)
            digest.update(chunk)
            received += len(chunk)
    return received, digest.hexdigest()
