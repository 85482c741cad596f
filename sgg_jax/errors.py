"""Error types with one-line messages that name the file, the record and the field, and the checks.

Every reader and validator in sgg_jax raises these instead of letting a malformed input surface as a
traceback from deep inside numpy, h5py or JAX.

The checks of configuration values live here, once: :func:`check_int`, :func:`check_positive_int`,
:func:`check_finite`, :func:`check_non_negative`, :func:`check_interval`, :func:`check_choice`,
:func:`check_bool` (and the predicate :func:`is_finite_number`). Each raises a one-line
:class:`ConfigError` naming the option and returns the value converted to its plain Python type.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


class DataError(ValueError):
    """A data file or record is malformed.

    The message is one line: ``<file>: image <image id>: field '<field>': <what is wrong>``
    (``record_kind`` replaces "image" for records that are not images, e.g. "line" of a text file).
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        record: str | None = None,
        field: str | None = None,
        record_kind: str = "image",
    ):
        self.path = None if path is None else str(path)
        self.record = None if record is None else str(record)
        self.field = field
        self.reason = message
        parts = []
        if self.path is not None:
            parts.append(self.path)
        if self.record is not None:
            parts.append(f"{record_kind} {self.record}")
        if field is not None:
            parts.append(f"field '{field}'")
        parts.append(message)
        super().__init__(": ".join(p.replace("\n", " ") for p in parts))


class ConfigError(ValueError):
    """A configuration value (flag, budget, option) is invalid; the message names the option."""

    def __init__(self, option: str, message: str):
        self.option = option
        super().__init__(f"option '{option}': {message}")


def is_finite_number(value: object) -> bool:
    """True for a finite int / float (numpy scalars included), False for bools and anything else."""
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float | np.integer | np.floating)
        and math.isfinite(value)
    )


def _is_int(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | np.integer)


def check_int(option: str, value: object, *, minimum: int) -> int:
    """``value`` as an int; raises :class:`ConfigError` naming ``option`` unless it is an int
    ``>= minimum`` ("must be an integer >= minimum")."""
    if not _is_int(value) or value < minimum:
        raise ConfigError(option, f"must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_positive_int(option: str, value: object) -> int:
    """``value`` as an int; raises :class:`ConfigError` unless it is an int ``> 0``."""
    if not _is_int(value) or value <= 0:
        raise ConfigError(option, f"must be a positive integer, got {value!r}")
    return int(value)


def check_finite(option: str, value: object) -> float:
    """``value`` as a float; raises :class:`ConfigError` unless it is a finite number."""
    if not is_finite_number(value):
        raise ConfigError(option, f"must be a finite number, got {value!r}")
    return float(value)


def check_non_negative(option: str, value: object) -> float:
    """``value`` as a float; raises :class:`ConfigError` unless it is a finite number ``>= 0``."""
    if not is_finite_number(value) or value < 0:
        raise ConfigError(option, f"must be a finite number >= 0, got {value!r}")
    return float(value)


def check_interval(option: str, value: object, interval: str) -> float:
    """``value`` as a float; raises :class:`ConfigError` unless it is a finite number in ``interval``.

    Args:
      option: the option named by the error.
      value: the value to check.
      interval: the interval as written in the message, e.g. ``"[0, 1)"`` or ``"(0, 1]"``: a
        bracket means the bound is included, a parenthesis that it is not.

    Returns:
      ``float(value)``.
    """
    low_bracket, bounds, high_bracket = interval[0], interval[1:-1], interval[-1]
    low, high = (float(bound) for bound in bounds.split(","))
    inside = is_finite_number(value) and (
        (low <= value if low_bracket == "[" else low < value)
        and (value <= high if high_bracket == "]" else value < high)
    )
    if not inside:
        raise ConfigError(option, f"must lie in {interval}, got {value!r}")
    return float(value)


def check_choice(option: str, value: object, choices: Sequence[str]) -> str:
    """``value``; raises :class:`ConfigError` unless it is one of the strings ``choices`` (a tuple
    or a list, written in the message as given)."""
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(option, f"must be one of {choices}, got {value!r}")
    return value


def check_bool(option: str, value: object) -> bool:
    """``value`` as a bool; raises :class:`ConfigError` unless it is a bool (numpy's included)."""
    if not isinstance(value, bool | np.bool_):
        raise ConfigError(option, f"must be True or False, got {value!r}")
    return bool(value)
