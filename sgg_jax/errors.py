"""Error types with one-line messages that name the file, the record and the field.

Every reader and validator in sgg_jax raises these instead of letting a malformed input surface as a
traceback from deep inside numpy, h5py or JAX.
"""

from __future__ import annotations


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
    import math

    import numpy as np

    return (
        not isinstance(value, bool)
        and isinstance(value, int | float | np.integer | np.floating)
        and math.isfinite(value)
    )


def check_int(option: str, value: object, *, minimum: int) -> None:
    """Raises :class:`ConfigError` naming ``option`` unless ``value`` is an int ``>= minimum``."""
    import numpy as np

    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(option, f"must be an integer >= {minimum}, got {value!r}")
