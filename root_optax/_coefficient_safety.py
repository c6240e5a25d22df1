"""Exact bounds on what Newton–Schulz coefficients do to singular values.

One quintic step maps a normalized singular value ``s`` to
``f(s) = a s + b s^3 + c s^5``. A continuous map sends an interval to an
interval, and the extremes of ``f`` on ``[lo, hi]`` are at the endpoints or at
the real roots of ``f'(s) = a + 3 b s^2 + 5 c s^4`` inside it (a quadratic in
``s^2``), so the image of an interval under any sequence of steps is computed
exactly, with no sampling: a band that holds here holds for every input.

Core layer: the shipped table's interpolation re-checks its blends with
:func:`is_safe`; ``root_optax.coefficients`` re-exports the public names.
"""

from __future__ import annotations

import math

import numpy as np

BAND = (0.65, 1.25)
"""Every singular value in ``[safe_delta(K), 1]`` must come out inside this band."""


def safe_delta(ns_steps: int) -> float:
    r"""Smallest normalized singular value the band is guaranteed for:
    :math:`\delta_K = 0.05 / 3^{K-3}` (0.05, 0.0167, 0.0056, 0.0019 for K=3..6).

    A matrix whose nonzero singular values are all at least
    :math:`\delta_K \|X\|_F` (for example any well-conditioned matrix of rank up
    to :math:`1/\delta_K^2`: 400, 3600, 32400, 291600) comes out with every
    singular value in :data:`BAND`. Each step may lift small values by at most
    its slope ``a``; 3 per step is what the band asks of the lower end.
    """
    return 0.05 / 3.0 ** (ns_steps - 3)


def image(triple, lo: float, hi: float) -> tuple[float, float]:
    """Exact ``(min, max)`` of ``f(s) = a s + b s^3 + c s^5`` over ``[lo, hi]``."""
    a, b, c = triple
    if not hi < 1e50:  # far outside any useful range (and s**5 would overflow)
        return -math.inf, math.inf
    candidates = [lo, hi]
    if c != 0.0:
        disc = 9.0 * b * b - 20.0 * a * c
        if disc >= 0.0:
            root = math.sqrt(disc)
            for t in ((-3.0 * b + root) / (10.0 * c), (-3.0 * b - root) / (10.0 * c)):
                if lo * lo < t < hi * hi:
                    candidates.append(math.sqrt(t))
    elif b != 0.0:
        t = -a / (3.0 * b)
        if lo * lo < t < hi * hi:
            candidates.append(math.sqrt(t))
    values = [a * s + b * s**3 + c * s**5 for s in candidates]
    return min(values), max(values)


def invariant_bound(triple) -> float | None:
    """``M = max f`` on ``[0, 1]`` if ``f`` maps ``[0, M]`` into ``[0, M]``, else None.

    When it exists, every iterate of every ``s`` in ``[0, 1]`` stays in
    ``[0, M]`` for any number of steps of this one triple.
    """
    low, bound = image(triple, 0.0, 1.0)
    if low < 0.0 or not math.isfinite(bound):
        return None
    low, high = image(triple, 0.0, max(bound, 1.0))
    return bound if low >= 0.0 and high <= max(bound, 1.0) else None


def output_range(coeffs, lo: float, hi: float = 1.0) -> tuple[float, float]:
    """Exact range of the iterated map over ``[lo, hi]`` (``coeffs`` is ``(K, 3)``)."""
    for triple in np.asarray(coeffs, dtype=np.float64).reshape(-1, 3).tolist():
        lo, hi = image(triple, lo, hi)
    return lo, hi


def _as_steps(coeffs, ns_steps: int | None) -> np.ndarray:
    """``coeffs`` as a float64 ``(K, 3)`` array (a triple is repeated ``ns_steps``)."""
    arr = np.asarray(coeffs, dtype=np.float64)
    if arr.shape == (3,):
        if ns_steps is None:
            raise ValueError(
                "root_optax.coefficients.is_safe(coeffs=...): a single (a, b, c) "
                f"triple needs ns_steps to be checked, got ns_steps=None for "
                f"{tuple(arr)}; pass ns_steps=5 (or the step count you run)."
            )
        arr = np.tile(arr, (ns_steps, 1))
    if arr.ndim != 2 or arr.shape[1] != 3 or len(arr) == 0:
        raise ValueError(
            "root_optax.coefficients.is_safe(coeffs=...) must be a triple or have "
            f"shape (K, 3), got shape {arr.shape}."
        )
    return arr


def _intermediate_excess(coeffs: list, hi_band: float, margin: float) -> float:
    """Condition (1) of :func:`violation`: every step stays in ``[0, BAND[1]]``."""
    excess = 0.0
    if all(triple == coeffs[0] for triple in coeffs):
        # One repeated triple: with M = max f on [0, 1], [0, M] must be
        # invariant (f on [1, M] stays <= M, by ``margin`` when fitting), which
        # bounds every step count and every intermediate by M.
        lo, bound = image(coeffs[0], 0.0, 1.0)
        excess += max(0.0, -lo) + max(0.0, bound - hi_band)
        if bound > 1.0:
            lo, hi = image(coeffs[0], 1.0, bound)
            excess += max(0.0, -lo) + max(0.0, hi - (bound - margin))
        return excess
    lo, hi = 0.0, 1.0
    for triple in coeffs:
        lo, hi = image(triple, lo, hi)
        excess += max(0.0, -lo) + max(0.0, hi - hi_band)
    return excess


def violation(coeffs, ns_steps: int | None = None, *, margin: float = 0.0) -> float:
    """How far ``coeffs`` are from safe; 0 means safe.

    ``coeffs`` is ``(K, 3)``, or one triple repeated ``ns_steps`` times. Safe
    means: (1) no step sends any value it can receive from ``[0, 1]`` below 0
    or above ``BAND[1]``; for a single repeated triple, ``[0, M]`` with
    ``M = max f([0, 1]) <= BAND[1]`` is invariant, so that bound holds at
    every step count;
    (2) after the ``K`` steps, ``[safe_delta(K), 1]`` lands inside
    :data:`BAND` (so a rank-1 input, ``s = 1``, comes out near 1). ``margin``
    narrows the band on both sides (the fit keeps one, so rounding its result
    cannot leave the band).
    """
    coeffs = _as_steps(coeffs, ns_steps).tolist()
    lo_band, hi_band = BAND[0] + margin, BAND[1] - margin
    excess = _intermediate_excess(coeffs, hi_band, margin)
    lo, hi = output_range(coeffs, safe_delta(len(coeffs)))
    excess += max(0.0, lo_band - lo) + max(0.0, hi - hi_band)
    return excess


def is_safe(coeffs, ns_steps: int | None = None) -> bool:
    """Whether ``coeffs`` (``(K, 3)``, or a triple and ``ns_steps``) are safe."""
    return violation(coeffs, ns_steps) == 0.0
