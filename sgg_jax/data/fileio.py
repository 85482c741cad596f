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


def load_npz(path: str | os.PathLike, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Reads the arrays ``keys`` of an ``.npz`` file (no pickles).

    Raises:
      DataError: the file is missing, not a readable ``.npz``, or lacks one of ``keys``.
    """
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in keys if key not in archive.files]
            if missing:
                raise DataError("missing array", path=path, field=missing[0])
            return {key: archive[key] for key in keys}
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"not a readable .npz file: {exc}", path=path) from None


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
