"""Coefficients for any shape and step count: the shipped table, else a fit."""

from __future__ import annotations

import functools
from collections.abc import Iterable

import numpy as np

from root_optax import _coefficient_table
from root_optax.coefficients import _fit


def _key(shape: Iterable[int]) -> tuple[int, int]:
    dims = [int(d) for d in shape]
    return min(dims), max(dims)


def lookup(shape: Iterable[int], ns_steps: int = 5) -> np.ndarray:
    """Coefficients ``(ns_steps, 3)`` of the ``"root"`` preset for ``shape``.

    Policy: a shape in the table (:func:`grid_shapes`) gets its entry; any other
    shape gets the bilinear interpolation, in log(min) x log(max), of the four
    surrounding grid entries (dimensions outside 8..16384 are clamped to it),
    unless that blend fails the safety check, then the nearest grid entry. Step
    counts outside :data:`SUPPORTED_STEPS` are fitted on demand (cached; the
    ``"root"`` preset itself rejects them, pass ``ns_coeffs=on_demand``).
    Everything returned has passed :func:`is_safe`.
    """
    if ns_steps in _coefficient_table.SUPPORTED_STEPS:
        return _coefficient_table.lookup(shape, ns_steps)
    return on_demand(shape, ns_steps)


@functools.lru_cache(maxsize=1024)
def _fitted(shape: tuple[int, int], ns_steps: int) -> tuple[float, ...]:
    result = _fit.fit(shape, ns_steps, per_iteration=True)
    return tuple(result.coefficients.ravel().tolist())


def on_demand(shape: Iterable[int], ns_steps: int = 5) -> np.ndarray:
    """Fit coefficients for exactly ``shape`` (cached per shape and step count).

    Usable directly as ``ns_coeffs=root_optax.coefficients.on_demand``.
    """
    return np.asarray(_fitted(_key(shape), ns_steps)).reshape(ns_steps, 3)
