"""Reading JSON (plain or gzip) and ``.npz`` files with one-line :class:`~sgg_jax.errors.DataError`s,
and the up-front checks of output paths (:func:`check_writable_dir`, :func:`check_writable_file`):
a command checks its output folder before it loads data or trains, so an unwritable ``--out`` or
``--workdir`` is one :class:`~sgg_jax.errors.ConfigError` line naming the flag, not a traceback
after minutes of work."""

from __future__ import annotations

import gzip
import json
import os
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from sgg_jax.errors import ConfigError, DataError


def load_json(path: str | os.PathLike) -> Any:
    """Parses a JSON file; ``.gz`` files are decompressed.

    Args:
      path: file path.

    Returns:
      The parsed JSON value.

    Raises:
      DataError: the file is missing, unreadable, truncated or not valid JSON.
    """
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except json.JSONDecodeError as exc:
        raise DataError(
            f"not valid JSON (truncated or corrupt): {exc.msg} at line {exc.lineno} column {exc.colno}",
            path=path,
        ) from None
    except RecursionError:
        raise DataError("not valid JSON: nested too deeply", path=path) from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot be read: {type(exc).__name__}: {exc}", path=path) from None


def require(mapping: Any, key: str, path: str, record: str | None = None) -> Any:
    """``mapping[key]``, or a DataError naming the file, record and missing field."""
    if not isinstance(mapping, dict):
        raise DataError(
            f"expected a JSON object, got {type(mapping).__name__}", path=path, record=record
        )
    if key not in mapping:
        raise DataError("missing key", path=path, record=record, field=key)
    return mapping[key]


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK"
PICKLED_DATA = "holds Python objects (pickled data), which are never loaded"


def _reason(exc: BaseException) -> str:
    """numpy's message for an unreadable file, without its advice to enable unpickling."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return PICKLED_DATA if "pickle" in message.lower() else message


def load_numpy(path: str | os.PathLike, suffix: str, *, prefix: str | None = None) -> Any:
    """``np.load(path, allow_pickle=False)`` after checking the file is what ``suffix`` says.

    A file that does not start with the NumPy header (``.npy``) or the zip signature (``.npz``) is
    rejected before numpy reads it, so a text file never gets numpy's advice to unpickle it.

    Args:
      path: the file.
      suffix: ``".npy"`` (an array is returned) or ``".npz"`` (an open ``NpzFile``; close it).
      prefix: leads the error message; default ``"not a readable <suffix> file"``.

    Raises:
      DataError: naming the file when it is missing, unreadable, of the other kind, not a NumPy
        file at all, or holds pickled objects.
    """
    path = os.fspath(path)
    prefix = f"not a readable {suffix} file" if prefix is None else prefix
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(_NPY_MAGIC))
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except OSError as exc:
        raise DataError(f"{prefix}: {type(exc).__name__}", path=path) from None
    is_npy, is_npz = head == _NPY_MAGIC, head.startswith(_ZIP_MAGIC)
    if suffix == ".npy" and is_npz:
        raise DataError("expected a .npy array, got an .npz archive", path=path)
    if suffix == ".npz" and is_npy:
        raise DataError("expected an .npz archive, got a .npy array", path=path)
    if suffix == ".npy" and not is_npy:
        raise DataError(f"{prefix}: not a .npy array (no NumPy header)", path=path)
    if suffix == ".npz" and not is_npz:
        raise DataError(f"{prefix}: not an .npz archive (no zip signature)", path=path)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{prefix}: {_reason(exc)}", path=path) from None


def load_npz(path: str | os.PathLike, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Reads the arrays ``keys`` of an ``.npz`` file (no pickles).

    Raises:
      DataError: the file is missing, not a readable ``.npz``, or lacks one of ``keys``.
    """
    path = os.fspath(path)
    archive = load_numpy(path, ".npz")
    try:
        with archive:
            missing = [key for key in keys if key not in archive.files]
            if missing:
                raise DataError("missing array", path=path, field=missing[0])
            arrays = {}
            for key in keys:
                try:
                    arrays[key] = archive[key]
                except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
                    raise DataError(
                        f"not a readable .npz file: {_reason(exc)}", path=path, field=key
                    ) from None
            return arrays
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"not a readable .npz file: {_reason(exc)}", path=path) from None


def check_offsets(
    offsets: np.ndarray, num_items: int, num_rows: int, *, path: str, field: str, rows: str
) -> None:
    """Checks ``offsets`` slicing ``num_rows`` rows into ``num_items`` consecutive runs.

    Raises:
      DataError: unless ``offsets`` has ``num_items + 1`` non-decreasing entries from 0 to
        ``num_rows``.
    """
    if (
        offsets.shape != (num_items + 1,)
        or offsets[0] != 0
        or np.any(np.diff(offsets) < 0)
        or offsets[-1] != num_rows
    ):
        raise DataError(
            f"must be {num_items + 1} non-decreasing offsets from 0 to the number of {rows}",
            path=path,
            field=field,
        )


def _nearest_existing(path: str) -> str:
    """``path`` or its nearest ancestor that exists (``path`` absolute)."""
    current = path
    while not os.path.lexists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def check_writable_dir(path: str | os.PathLike | None, option: str) -> str:
    """Checks that ``path`` is, or can be created as, a folder this process can write into.

    Nothing is created: a missing folder passes when its nearest existing ancestor is a writable
    folder (``os.makedirs`` will then succeed).

    Args:
      path: the output folder.
      option: the flag named by the error (``"out"``, ``"workdir"``, ...).

    Returns:
      ``os.fspath(path)``.

    Raises:
      ConfigError: naming ``option`` and the path, when it is empty, exists and is not a folder,
        lies under a file, or is not writable.
    """
    if path is None or os.fspath(path) == "":
        raise ConfigError(option, "is required (an output folder)")
    path = os.fspath(path)
    full = os.path.abspath(os.path.expanduser(path))
    existing = _nearest_existing(full)
    if existing == full:
        if not os.path.isdir(full):
            raise ConfigError(option, f"{path} exists and is not a folder")
    elif not os.path.isdir(existing):
        raise ConfigError(
            option, f"{path} cannot be created: {existing} exists and is not a folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == full else f" ({existing} is not writable)"
        raise ConfigError(option, f"{path} is not writable{where}")
    return path


def check_writable_file(path: str | os.PathLike | None, option: str) -> str:
    """Checks that the file ``path`` can be written: not a folder, and its folder is writable
    (or can be created, :func:`check_writable_dir`). An existing file must be writable.

    Returns:
      ``os.fspath(path)``.

    Raises:
      ConfigError: naming ``option`` and the path.
    """
    if path is None or os.fspath(path) == "":
        raise ConfigError(option, "is required (an output file)")
    path = os.fspath(path)
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(full):
        raise ConfigError(option, f"{path} is a folder, not a file")
    parent = os.path.dirname(full)
    existing = _nearest_existing(parent)
    if not os.path.isdir(existing) or (existing == parent and not os.path.isdir(parent)):
        raise ConfigError(option, f"{path} cannot be written: {existing} is not a folder")
    if os.path.exists(full):
        if not os.access(full, os.W_OK):
            raise ConfigError(option, f"{path} is not writable")
    elif not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(option, f"{path} cannot be written: {existing} is not writable")
    return path
