"""Checks on static arguments that raise errors naming the function and argument."""

from __future__ import annotations

import math
import numbers
from typing import Any


def is_static_number(x: Any) -> bool:
    """True for Python/NumPy scalars (checked now), False for arrays (maybe traced)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_positive_int(fn: str, name: str, value: Any) -> int:
    """Return ``value`` as an int, or raise naming ``fn`` and ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        hint = ""
        if hasattr(value, "shape"):
            hint = (
                " It looks like an array: if optax.inject_hyperparams passed it, mark"
                f" it static with static_args=('{name}',)."
            )
        raise TypeError(
            f"{fn}({name}=...) must be a positive int, got {name}={value!r}.{hint}"
        )
    if value < 1:
        raise ValueError(
            f"{fn}({name}=...) must be a positive int, got {name}={value!r}."
        )
    return int(value)


def check_in_range(
    fn: str,
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Range-check a static number; arrays (possibly traced) are not checked."""
    if isinstance(value, bool) or (
        not is_static_number(value) and not hasattr(value, "dtype")
    ):
        raise TypeError(f"{fn}({name}=...) must be a number, got {name}={value!r}.")
    if not is_static_number(value):
        return
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high or math.isnan(value):
        interval = (
            ("(" if low_open else "[") + f"{low}, {high}" + (")" if high_open else "]")
        )
        raise ValueError(
            f"{fn}({name}=...) must be in {interval}, got {name}={value!r}."
        )
