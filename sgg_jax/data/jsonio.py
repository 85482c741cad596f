"""Reading JSON files (plain or gzip) with one-line :class:`~sgg_jax.errors.DataError` messages."""

from __future__ import annotations

import gzip
import json
import os
from typing import Any

from sgg_jax.errors import DataError


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
