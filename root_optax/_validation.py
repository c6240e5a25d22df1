"""Checks on static arguments that raise errors naming the function and argument."""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax.numpy as jnp
import numpy as np

INF = float("inf")


def is_static_number(x: Any) -> bool:
    """True for Python/NumPy scalars (checked now), False for arrays (maybe traced)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_bool(fn: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{fn}({name}=...) must be a bool, got {name}={value!r}.")


def check_positive_int(fn: str, name: str, value: Any, default: int) -> int:
    """Return ``value`` (``None`` means ``default``) as an int, or raise."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        hint = ""
        if hasattr(value, "shape"):
            hint = (
                " It looks like an array: a loop count must be static; if"
                " optax.inject_hyperparams passed it, mark it static with"
                f" static_args=('{name}',)."
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


def check_non_negative(fn: str, name: str, value: Any) -> None:
    """A finite number >= 0 (arrays pass unchecked)."""
    check_in_range(fn, name, value, 0.0, INF, high_open=True)


def check_unit_interval(fn: str, name: str, value: Any, *, closed_low: bool) -> None:
    """``[0, 1)`` for decay rates (``closed_low``), ``(0, 1]`` for quantiles."""
    if closed_low:
        check_in_range(fn, name, value, 0.0, 1.0, high_open=True)
    else:
        check_in_range(fn, name, value, 0.0, 1.0, low_open=True)


def check_float_dtype(
    fn: str, name: str, dtype: Any, *, allow_complex: bool = False
) -> np.dtype | None:
    """``None`` or a floating dtype (complex too if ``allow_complex``), canonical."""
    if dtype is None:
        return None
    try:
        canonical = np.dtype(dtype)
    except TypeError:
        canonical = None
    kind = jnp.inexact if allow_complex else jnp.floating
    if canonical is None or not jnp.issubdtype(canonical, kind):
        expected = "bfloat16, float16, float32 or float64"
        if allow_complex:
            expected += ", or complex64 or complex128 for complex parameters"
        raise TypeError(
            f"{fn}({name}=...) must be None or a floating dtype ({expected}), got "
            f"{name}={dtype!r}."
        )
    return canonical
