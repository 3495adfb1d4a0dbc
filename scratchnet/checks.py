"""Argument checks shared by the public functions: one wording, one notion of "an integer".

An integer is any ``numbers.Integral`` (Python int, NumPy integers) except bool: ``True`` is not a
batch size and ``3.7`` is not a class. Every failure is a ValueError that names the function and the
argument and says what was expected, so that a caller catches one type whatever the mistake.
"""
from __future__ import annotations

import math
import numbers


def is_int(v) -> bool:
    """True for Python and NumPy integers, False for bool, floats, strings and everything else."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)    # np.bool_ is not Integral


def check_int(who: str, name: str, v, low: int | None = None) -> int:
    """v as an int, or a ValueError "who: name must be an integer >= low, got v"."""
    if not is_int(v) or (low is not None and v < low):
        bound = f" >= {low}" if low is not None else ""
        raise ValueError(f"{who}: {name} must be an integer{bound}, got {v!r}")
    return int(v)


def check_number(who: str, name: str, v, *, low=None, high=None, low_open=False, high_open=False) -> float:
    """v as a finite float within [low, high] ((low or high) open when low_open / high_open), or a
    ValueError naming the range; NaN, inf, strings and bools fail."""
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        if low is not None and high is not None:
            want = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            want = f"{'>' if low_open else '>='} {low:g}"
        elif high is not None:
            want = f"{'<' if high_open else '<='} {high:g}"
        else:
            want = "a finite number"
        raise ValueError(f"{who}: {name} must be {want}, got {v!r}")
    return float(v)
