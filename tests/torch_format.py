"""A writer of torch.save's zip format for numpy state dicts, so tests make .pth files without torch.

The archive holds `<name>/data.pkl`, a protocol-2 pickle of an OrderedDict whose values are calls of
torch._utils._rebuild_tensor_v2 on persistent storage references, and each tensor's bytes as
`<name>/data/<key>` (little-endian), as torch writes it (torch/serialization.py). The opcodes are
written by hand: pickling a reference to torch's functions would need torch importable.
"""
import struct
import zipfile

import numpy as np

_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage",
            np.dtype(np.float16): "HalfStorage"}


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _text(value: str) -> bytes:
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _ints(values) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def _tensor(key: str, array: np.ndarray) -> bytes:
    storage = (b"(" + _text("storage") + _global("torch", _STORAGE[array.dtype]) + _text(key) + _text("cpu")
               + _int(array.size) + b"tQ")
    strides = [s // array.itemsize for s in array.strides]
    empty_ordered_dict = _global("collections", "OrderedDict") + b")R"
    return (_global("torch._utils", "_rebuild_tensor_v2") + b"(" + storage + _int(0) + _ints(array.shape)
            + _ints(strides) + b"\x89" + empty_ordered_dict + b"tR")


def state_dict_pickle(state: dict) -> bytes:
    """data.pkl for `state` ({name: array})."""
    items = b"".join(_text(name) + _tensor(str(key), np.array(array, order="C"))
                     for key, (name, array) in enumerate(state.items()))
    return b"\x80\x02" + _global("collections", "OrderedDict") + b")R(" + items + b"u."


def write_pth(path, state: dict, archive_name: str = "archive", pickle_bytes: bytes | None = None) -> None:
    """Writes `state` ({name: numpy array}) as torch.save would, without torch; `pickle_bytes`
    replaces the data.pkl written (tests of what the reader refuses)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{archive_name}/data.pkl", pickle_bytes or state_dict_pickle(state))
        archive.writestr(f"{archive_name}/byteorder", "little")
        for key, array in enumerate(state.values()):
            with archive.open(f"{archive_name}/data/{key}", "w", force_zip64=True) as storage:
                storage.write(np.asarray(array, array.dtype.newbyteorder("<"), order="C").reshape(-1).data)
        archive.writestr(f"{archive_name}/version", "3\n")
