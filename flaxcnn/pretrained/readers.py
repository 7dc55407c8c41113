"""Checkpoint files -> {torch name: numpy array}: torch's .pth/.pt, .safetensors, and their downloads.

A .pth file (torch.save since torch 1.6) is a zip archive: `<archive>/data.pkl` pickles the state
dict, each tensor as a call of `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
whose storage is a persistent reference to the raw little-endian bytes in `<archive>/data/<key>`.
With torch installed, `torch.load(..., weights_only=True)` reads it; without torch, `_TorchUnpickler`
does, resolving only the handful of names a state dict uses (any other name in the pickle is refused,
so reading a checkpoint runs no code from it) and building numpy arrays. Files in torch's legacy
(pre-1.6) format need torch.

`torchvision:<name>` downloads torchvision's published ImageNet weights as torch.hub does: into
`$TORCH_HOME/hub/checkpoints` (default `~/.cache/torch/hub/checkpoints`, so torch's own downloads
are reused), through a temporary file, and checks that the SHA-256 of the file starts with the hex
digits after the last '-' of its name. `hf-hub:<repo>` fetches the repository's model.safetensors
with huggingface_hub (its own cache).
"""
from __future__ import annotations

import collections
import importlib.util
import os
import pathlib
import pickle
import re
import zipfile

import ml_dtypes
import numpy as np

from flaxcnn.datasets import download
from flaxcnn.errors import UserError, first_line

# torchvision 0.28's IMAGENET1K_V1 weights (torchvision/models/resnet.py, vgg.py, inception.py:
# https://github.com/pytorch/vision/tree/v0.28.0/torchvision/models): torchvision's builder name
# -> (file under TORCHVISION_URL_BASE, the flaxcnn model whose layout it fits)
TORCHVISION_URL_BASE = "https://download.pytorch.org/models/"
TORCHVISION_WEIGHTS = {
    "resnet18": ("resnet18-f37072fd.pth", "tv_resnet18"),
    "resnet34": ("resnet34-b627a593.pth", "tv_resnet34"),
    "resnet50": ("resnet50-0676ba61.pth", "resnet50"),
    "resnext50_32x4d": ("resnext50_32x4d-7cdf4587.pth", "resnext50"),
    "inception_v3": ("inception_v3_google-0cc3c7bd.pth", "inception_v3"),
    "vgg11": ("vgg11-8a719046.pth", "vgg11"),
    "vgg13": ("vgg13-19584684.pth", "vgg13"),
    "vgg16": ("vgg16-397923af.pth", "vgg16"),
    "vgg19": ("vgg19-dcbb9e9d.pth", "vgg19"),
}
HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")  # torch.hub's rule for the hash prefix in a file name

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride))
    return np.array(view)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
    return data


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles a torch zip archive's data.pkl into numpy arrays, refusing every other global."""

    _ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
                ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
                ("torch._utils", "_rebuild_parameter"): _rebuild_parameter}

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str, path):
        super().__init__(file)
        self.archive, self.prefix, self.byteorder, self.path = archive, prefix, byteorder, path

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise UserError(f"{self.path}: the checkpoint's pickle refers to {module}.{name}, which a file of "
                        "weights never needs; flaxcnn does not run code from checkpoints (save a plain "
                        "state_dict, or convert the file to .safetensors)")

    def persistent_load(self, pid):
        _, storage_type, key, _location, numel = pid
        dtype = np.dtype(_STORAGE_DTYPES[storage_type]).newbyteorder("<" if self.byteorder == "little" else ">")
        data = self.archive.read(f"{self.prefix}data/{key}")
        return np.frombuffer(data, dtype, count=numel)


def _read_torch_zip(path) -> dict:
    with zipfile.ZipFile(path) as archive:
        pickles = sorted((n for n in archive.namelist() if n.endswith("data.pkl")), key=len)
        if not pickles:
            raise UserError(f"{path}: a zip file without data.pkl is not a torch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in archive.namelist():
            byteorder = archive.read(f"{prefix}byteorder").decode().strip()
        with archive.open(pickles[0]) as file:
            return _TorchUnpickler(file, archive, prefix, byteorder, path).load()


def _read_with_torch(path) -> dict:
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: torch cannot read it as a checkpoint: {first_line(e)}") from e
    if not isinstance(loaded, dict):
        return loaded

    def as_numpy(tensor):
        tensor = tensor.detach()
        return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()

    return {key: as_numpy(value) if torch.is_tensor(value) else value for key, value in loaded.items()}


def read_pth(path) -> dict[str, np.ndarray]:
    """A torch state dict file as {name: array}: with torch if installed, else without it."""
    if importlib.util.find_spec("torch") is not None:
        state = _read_with_torch(path)
    elif zipfile.is_zipfile(path):
        try:
            state = _read_torch_zip(path)
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
            raise UserError(f"{path}: a damaged torch checkpoint ({first_line(e)}); download it again") from e
    else:
        raise UserError(f"{path}: not a torch zip checkpoint (torch's legacy format needs torch to read: "
                        "pip install torch, or load the .safetensors of the same weights)")
    return _flat_state(state, path)


def _flat_state(state, path) -> dict[str, np.ndarray]:
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise UserError(f"{path}: expected a state dict (tensor names -> tensors), as model.state_dict() "
                        "saves it; found something else")
    return dict(state)


def read_safetensors(path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: not a readable .safetensors file ({first_line(e)})") from e


def read_file(path) -> dict[str, np.ndarray]:
    """A local .pth, .pt or .safetensors checkpoint as {torch name: array}."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist; give a .pth, .pt or .safetensors file, "
                        "torchvision:<name> or hf-hub:<repo>")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in (".pth", ".pt"):
        return read_pth(path)
    raise UserError(f"checkpoint {str(path)!r}: unknown file type {path.suffix!r}; use .pth, .pt or .safetensors")


def torch_hub_checkpoints() -> pathlib.Path:
    """torch.hub's download folder: $TORCH_HOME/hub/checkpoints, TORCH_HOME defaulting to
    $XDG_CACHE_HOME/torch (XDG_CACHE_HOME to ~/.cache)."""
    cache = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return pathlib.Path(os.environ.get("TORCH_HOME", os.path.join(cache, "torch"))) / "hub" / "checkpoints"


def torchvision_file(name: str) -> pathlib.Path:
    """torchvision's ImageNet weights for builder `name`, downloaded once and hash-checked."""
    if name not in TORCHVISION_WEIGHTS:
        raise UserError(f"torchvision:{name} is not a layout flaxcnn has; use one of: "
                        f"{', '.join(TORCHVISION_WEIGHTS)}")
    filename = TORCHVISION_WEIGHTS[name][0]
    target = torch_hub_checkpoints() / filename
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    download.fetch_file(TORCHVISION_URL_BASE + filename, str(target), None,
                        HASH_IN_NAME.search(filename).group(1),
                        kept=f"nothing was kept; check the network and run again, or download it "
                             f"yourself into {target.parent}")
    return target


def hf_hub_file(repo: str) -> pathlib.Path:
    """The repository's model.safetensors (timm's file name), through huggingface_hub's cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return pathlib.Path(hf_hub_download(repo, "model.safetensors"))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as e:
        raise UserError(f"hf-hub:{repo}: cannot get model.safetensors ({first_line(e)}); check the "
                        "repository name (e.g. timm/resnet50.tv_in1k) and the network") from e


def read_source(source: str) -> dict[str, np.ndarray]:
    """`torchvision:<name>`, `hf-hub:<repo>` or a local file, as {torch name: array}."""
    if source.startswith("torchvision:"):
        return read_pth(torchvision_file(source.removeprefix("torchvision:")))
    if source.startswith("hf-hub:"):
        return read_safetensors(hf_hub_file(source.removeprefix("hf-hub:")))
    return read_file(source)
