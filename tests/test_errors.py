"""The one set of configuration checks in sgg_jax.errors: accepted values, conversions, messages."""

import math
import re

import numpy as np
import pytest

from sgg_jax.errors import (
    ConfigError,
    check_bool,
    check_choice,
    check_finite,
    check_int,
    check_interval,
    check_non_negative,
    check_positive_int,
    is_finite_number,
)


def test_is_finite_number():
    for value in (0, -3, 2.5, np.float32(1.5), np.int64(7)):
        assert is_finite_number(value), value
    for value in (True, np.nan, math.inf, "1", None, np.ones(2)):
        assert not is_finite_number(value), value


def test_integer_checks_return_plain_ints():
    assert check_int("n", np.int32(3), minimum=0) == 3 and type(check_int("n", 0, minimum=0)) is int
    assert check_positive_int("n", np.int64(4)) == 4
    assert type(check_positive_int("n", np.int64(4))) is int
    for value in (0, -1, 2.5, True, "3", None):
        with pytest.raises(ConfigError, match="^option 'n': must be a positive integer, got"):
            check_positive_int("n", value)
    with pytest.raises(ConfigError, match=r"^option 'n': must be an integer >= 2, got 1$"):
        check_int("n", 1, minimum=2)


def test_number_checks_return_floats():
    assert check_finite("x", np.float32(0.5)) == 0.5 and type(check_finite("x", 2)) is float
    with pytest.raises(ConfigError, match=r"^option 'x': must be a finite number, got nan$"):
        check_finite("x", float("nan"))
    assert check_non_negative("x", 0) == 0.0
    with pytest.raises(ConfigError, match=r"^option 'x': must be a finite number >= 0, got -1$"):
        check_non_negative("x", -1)


@pytest.mark.parametrize(
    "interval, inside, outside",
    [
        ("[0, 1)", (0, 0.5, 0.999), (1, -0.1, math.inf, math.nan, True)),
        ("(0, 1]", (1, 0.5), (0, 1.5)),
        ("[0, 1]", (0, 1), (-1e-9, 1.0000001)),
        ("(0, 1)", (0.5,), (0, 1)),
    ],
)
def test_interval_bounds_follow_the_brackets(interval, inside, outside):
    for value in inside:
        assert check_interval("rate", value, interval) == float(value)
    for value in outside:
        with pytest.raises(ConfigError, match="^option 'rate': must lie in " + re.escape(interval)):
            check_interval("rate", value, interval)


def test_choice_and_bool():
    assert check_choice("task", "sgcls", ("predcls", "sgcls")) == "sgcls"
    with pytest.raises(ConfigError, match=r"^option 'task': must be one of \('a', 'b'\), got 'c'$"):
        check_choice("task", "c", ("a", "b"))
    with pytest.raises(ConfigError, match=r"must be one of \['a', 'b'\], got 1$"):
        check_choice("task", 1, ["a", "b"])
    assert check_bool("flag", np.bool_(True)) is True and check_bool("flag", False) is False
    for value in (1, "yes", None):
        with pytest.raises(ConfigError, match="^option 'flag': must be True or False, got"):
            check_bool("flag", value)
