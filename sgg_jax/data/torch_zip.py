"""PyTorch ``.pth`` files (``torch.save``'s zip format) read and written with numpy only.

The file is a zip archive ``<name>/data.pkl``, ``<name>/data/<key>`` (one raw storage each),
``<name>/byteorder`` and ``<name>/version``. ``data.pkl`` is a pickle (protocol 2) whose tensors
are ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`` and
whose storages are persistent ids ``("storage", torch.<Type>Storage, key, location, numel)``.

Reading never runs code from the file: the unpickler resolves only the names above
(``_rebuild_tensor_v2``, ``_rebuild_parameter``, the storage types, ``collections.OrderedDict``)
to functions of this module; any other global (e.g. the classes of an optimizer's or scheduler's
entry) becomes an inert :class:`Opaque` object, which a caller taking tensors drops. A file that is
not a zip, or a zip without ``data.pkl``, is a one-line :class:`~sgg_jax.errors.DataError` naming
the file; so is the legacy (torch < 1.6) format, which is not read (re-save it with a newer torch
or convert it to ``.npz``).

:func:`write_torch_zip` writes the same format from numpy arrays (what ``torch.load`` reads), e.g.
a Scene-Graph-Benchmark checkpoint ``{"model": state_dict}`` made from converted variables.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from sgg_jax.errors import DataError

# torch.<name>Storage -> numpy dtype.
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_STORAGE_OF_DTYPE = {np.dtype(dtype): name for name, dtype in STORAGE_DTYPES.items()}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class Opaque:
    """A global of the pickle that is not a tensor: kept as its name, never called or imported."""

    name = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<not read: {self.name}>"


class _Storage:
    __slots__ = ("dtype", "key", "numel")  # no __dict__: a pickle cannot set other attributes

    def __init__(self, dtype: Any, key: str, numel: int):
        self.dtype, self.key, self.numel = np.dtype(dtype), str(key), int(numel)


class _Tensor:
    """A tensor whose storage is read once the pickle is parsed."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: _Storage, offset: int, size: Any, stride: Any):
        self.storage, self.offset = storage, offset
        self.size, self.stride = size, stride


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor without a storage")
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
    return data


def _storage_type(name: str):
    def make(*unused):
        raise pickle.UnpicklingError(f"torch.{name} called")

    make.dtype = STORAGE_DTYPES[name]
    return make


class _Unpickler(pickle.Unpickler):
    _ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            target = self._ALLOWED[(module, name)]
            # A fresh wrapper per use: a BUILD opcode on it cannot alter this module's functions.
            return lambda *args: target(*args)
        if module == "torch" and name in STORAGE_DTYPES:
            return _storage_type(name)
        return type(name, (Opaque,), {"name": f"{module}.{name}"})

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.60}")
        dtype = getattr(pid[1], "dtype", None)
        if dtype is None:
            raise pickle.UnpicklingError(f"unsupported storage type {pid[1]!r:.60}")
        return _Storage(dtype, pid[2], pid[4])


def _materialise(value: Any, read_storage) -> Any:
    if isinstance(value, _Tensor):
        data = read_storage(value.storage)
        size = tuple(int(v) for v in value.size)
        stride = tuple(int(v) for v in value.stride)
        offset = int(value.offset)
        if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
            raise ValueError(f"bad tensor layout size {size}, stride {stride}")
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True) if n > 0)
        if 0 not in size and last >= data.size:
            raise ValueError(f"a tensor reads past its storage of {data.size} elements")
        if 0 in size:
            return np.zeros(size, data.dtype)
        strides = tuple(s * data.itemsize for s in stride)
        view = np.lib.stride_tricks.as_strided(data[offset:], size, strides, writeable=False)
        return np.array(view)
    if isinstance(value, dict):
        return type(value)((key, _materialise(item, read_storage)) for key, item in value.items())
    if isinstance(value, list | tuple):
        return type(value)(_materialise(item, read_storage) for item in value)
    return value


def read_torch_zip(path: str | os.PathLike) -> Any:
    """The object ``torch.save`` stored in ``path``, tensors as numpy arrays (no code is run).

    Raises:
      DataError: the file is missing, not a torch zip file (names what was found), legacy
        (torch < 1.6), or its pickle or storages are malformed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError("file not found", path=path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        if _is_legacy(path):
            raise DataError(
                "legacy PyTorch file (saved by torch < 1.6), not read: re-save it with a newer "
                "torch, or convert it to .npz with sgg_jax.detection.convert.save_npz",
                path=path,
            ) from None
        raise DataError(f"not a PyTorch zip file ({error})", path=path) from None
    with archive:
        names = archive.namelist()
        pickles = [name for name in names if name.endswith("data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise DataError(
                "not a PyTorch zip file: no <name>/data.pkl among its entries", path=path
            )
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in names:
            byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise DataError(f"unknown byte order {byteorder!r:.40}", path=path)
        try:
            root = _Unpickler(io.BytesIO(archive.read(pickles[0]))).load()
        except Exception as error:  # any malformed pickle
            raise DataError(f"malformed data.pkl ({error})", path=path) from None
        cache: dict[str, np.ndarray] = {}

        def read_storage(storage: _Storage) -> np.ndarray:
            if storage.key not in cache:
                entry = f"{prefix}data/{storage.key}"
                dtype = storage.dtype.newbyteorder("<" if byteorder == "little" else ">")
                needed = storage.numel * dtype.itemsize
                try:
                    size = archive.getinfo(entry).file_size
                except KeyError:
                    raise ValueError(f"storage {entry} is missing") from None
                if size < needed:
                    raise ValueError(f"storage {entry} is truncated")
                with archive.open(entry) as handle:  # only the bytes the pickle declares
                    raw = handle.read(needed)
                if len(raw) < needed:
                    raise ValueError(f"storage {entry} is truncated")
                data = np.frombuffer(raw, dtype, count=storage.numel)
                cache[storage.key] = data.astype(storage.dtype, copy=False)
            return cache[storage.key]

        try:
            return _materialise(root, read_storage)
        except (ValueError, zipfile.BadZipFile, OSError) as error:
            raise DataError(f"malformed tensor data ({error})", path=path) from None


def _is_legacy(path: str) -> bool:
    class NoGlobals(pickle.Unpickler):
        def find_class(self, module, name):
            raise pickle.UnpicklingError("no globals")

    try:
        with open(path, "rb") as handle:
            return NoGlobals(io.BytesIO(handle.read(64))).load() == _LEGACY_MAGIC
    except Exception:
        return False


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


class _Writer:
    """Emits the protocol-2 pickle of ``torch.save`` for dicts, lists, scalars and arrays."""

    def __init__(self):
        self.out = io.BytesIO()
        self.storages: list[np.ndarray] = []

    def op(self, data: bytes) -> None:
        self.out.write(data)

    def global_(self, module: str, name: str) -> None:
        self.op(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def value(self, value: Any) -> None:
        if isinstance(value, np.ndarray | np.generic) and not isinstance(value, np.str_):
            self.tensor(np.asarray(value))
        elif isinstance(value, Mapping):
            if isinstance(value, collections.OrderedDict):
                self.global_("collections", "OrderedDict")
                self.op(b")R")  # EMPTY_TUPLE, REDUCE
            else:
                self.op(b"}")
            for key, item in value.items():
                self.value(key)
                self.value(item)
                self.op(b"s")  # SETITEM
        elif isinstance(value, list):
            self.op(b"]")
            for item in value:
                self.value(item)
                self.op(b"a")  # APPEND
        elif isinstance(value, tuple):
            self.op(b"(")
            for item in value:
                self.value(item)
            self.op(b"t")
        elif value is None:
            self.op(b"N")
        elif isinstance(value, bool):
            self.op(b"\x88" if value else b"\x89")
        elif isinstance(value, int):
            self.op(b"\x8a" + _long(value))  # LONG1
        elif isinstance(value, float):
            self.op(b"G" + struct.pack(">d", value))
        elif isinstance(value, str):
            data = value.encode("utf-8")
            self.op(b"X" + struct.pack("<I", len(data)) + data)
        else:
            raise TypeError(f"cannot write {type(value).__name__} to a .pth file")

    def tensor(self, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        if array.dtype not in _STORAGE_OF_DTYPE:
            raise TypeError(f"no torch storage type for {array.dtype}")
        key = str(len(self.storages))
        self.storages.append(array)
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.op(b"(")
        self.op(b"(")  # the persistent id ("storage", type, key, location, numel)
        self.value("storage")
        self.global_("torch", _STORAGE_OF_DTYPE[array.dtype])
        self.value(key)
        self.value("cpu")
        self.value(int(array.size))
        self.op(b"tQ")  # TUPLE, BINPERSID
        self.value(0)
        self.value(tuple(int(n) for n in array.shape))
        strides = tuple(int(s // array.itemsize) for s in array.strides) if array.size else ()
        if not array.size:
            strides = tuple(int(np.prod(array.shape[i + 1 :])) for i in range(array.ndim))
        self.value(strides)
        self.value(False)
        self.value(collections.OrderedDict())
        self.op(b"tR")  # TUPLE, REDUCE


def _long(value: int) -> bytes:
    data = value.to_bytes((value.bit_length() + 8) // 8 or 1, "little", signed=True)
    return bytes([len(data)]) + data


def write_torch_zip(obj: Any, path: str | os.PathLike, name: str = "archive") -> None:
    """Writes ``obj`` (dicts, OrderedDicts, lists, tuples, scalars, strings, numpy arrays as
    tensors) in ``torch.save``'s zip format; :func:`read_torch_zip` and ``torch.load`` read it."""
    writer = _Writer()
    writer.op(b"\x80\x02")  # PROTO 2
    writer.value(obj)
    writer.op(b".")
    with zipfile.ZipFile(os.fspath(path), "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{name}/data.pkl", writer.out.getvalue())
        archive.writestr(f"{name}/byteorder", "little")
        for key, array in enumerate(writer.storages):
            archive.writestr(
                f"{name}/data/{key}", array.astype(array.dtype.newbyteorder("<")).tobytes()
            )
        archive.writestr(f"{name}/version", "3\n")
