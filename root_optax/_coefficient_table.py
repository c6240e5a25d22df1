"""The shipped ``"root"`` coefficient table and its lookup by matrix shape.

``coefficient_table.json`` (next to this module) holds one triple per
Newton–Schulz iteration for every ``(min, max)`` shape of :func:`grid_shapes`
and every step count of :data:`SUPPORTED_STEPS`, fitted for the reference's
Frobenius normalization; ``coefficient_table_schatten4.json`` the same for the
Schatten-4 normalization (``ns_normalization="schatten4"``). Off-grid shapes interpolate
the four surrounding entries in log scale, re-checked exactly for safety.

Core layer: reads the JSON and checks with :mod:`root_optax._coefficient_safety`;
``root_optax.coefficients`` fits and regenerates the file.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from root_optax import _coefficient_safety

TABLE_FILE = Path(__file__).with_name("coefficient_table.json")

TABLE_FILES = {
    "frobenius": TABLE_FILE,
    "schatten4": Path(__file__).with_name("coefficient_table_schatten4.json"),
}
"""The table for each normalization of Newton–Schulz's input."""

SUPPORTED_STEPS = (3, 4, 5, 6)
"""Step counts the shipped table covers (others are fitted on demand)."""

LADDER = (
    8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536,
    2048, 3072, 4096, 6144, 8192, 12288, 16384,
)  # fmt: skip
"""Grid of matrix dimensions (about sqrt(2) apart); every ``(min, max)`` pair of
it is in the table."""

EXTRA_SHAPES = (
    (768, 3072), (1024, 2816), (1024, 4096), (2048, 5632), (3072, 8192),
    (4096, 11008), (4096, 14336), (5120, 13824), (5120, 20480), (8192, 22016),
)  # fmt: skip
"""Common transformer shapes off the grid (MLP ratios 8/3, 3.5, 4), fitted exactly."""


def grid_shapes() -> list[tuple[int, int]]:
    """Every shape the table holds, ``(min, max)``, sorted."""
    pairs = {(m, n) for i, m in enumerate(LADDER) for n in LADDER[i:]}
    return sorted(pairs | set(EXTRA_SHAPES))


@functools.lru_cache(maxsize=2)
def load(
    normalization: str = "frobenius",
) -> dict[int, dict[tuple[int, int], tuple[float, ...]]]:
    """``{ns_steps: {(min, max): (a1, b1, c1, a2, ...)}}`` from the table of
    ``normalization`` (one triple per iteration, flattened)."""
    data = json.loads(TABLE_FILES[normalization].read_text())
    return {
        int(steps): {(row[0], row[1]): tuple(row[2:]) for row in rows}
        for steps, rows in data["entries"].items()
    }


def _bracket(value: float) -> tuple[int, int, float]:
    """Ladder neighbours of ``value`` (clamped) and the log-space weight of the upper."""
    value = min(max(value, LADDER[0]), LADDER[-1])
    hi = next(i for i, v in enumerate(LADDER) if v >= value)
    lo = max(hi - 1, 0)
    if LADDER[hi] == value or lo == hi:
        return hi, hi, 0.0
    t = math.log(value / LADDER[lo]) / math.log(LADDER[hi] / LADDER[lo])
    return lo, hi, t


@functools.lru_cache(maxsize=4096)
def _entry(
    shape: tuple[int, int], ns_steps: int, normalization: str
) -> tuple[float, ...]:
    """The table entry of ``shape``, or the safe blend of its grid neighbours."""
    table = load(normalization)[ns_steps]
    if shape in table:
        return table[shape]
    m, n = shape
    i0, i1, s = _bracket(m)
    j0, j1, t = _bracket(n)
    corners = []
    for i, wi in ((i0, 1 - s), (i1, s)):
        for j, wj in ((j0, 1 - t), (j1, t)):
            a, b = LADDER[i], LADDER[j]
            corners.append((wi * wj, table[(min(a, b), max(a, b))]))
    blend = sum(w * np.asarray(c) for w, c in corners)
    if _coefficient_safety.is_safe(blend.reshape(ns_steps, 3)):
        return tuple(blend.tolist())
    # Interpolating between safe triples need not be safe: use the nearest corner.
    return max(corners, key=lambda wc: wc[0])[1]


def lookup(
    shape: Iterable[int], ns_steps: int = 5, normalization: str = "frobenius"
) -> np.ndarray:
    """Coefficients ``(ns_steps, 3)`` of the shipped table for ``shape``.

    A shape in the table (:func:`grid_shapes`) gets its entry; any other shape
    gets the bilinear interpolation, in log(min) x log(max), of the four
    surrounding grid entries (dimensions outside 8..16384 are clamped to it),
    unless that blend fails the safety check, then the nearest grid entry.
    ``normalization`` (``"frobenius"`` or ``"schatten4"``) picks the table.

    Raises:
      ValueError: if ``ns_steps`` is not in :data:`SUPPORTED_STEPS`.
    """
    if ns_steps not in SUPPORTED_STEPS:
        raise ValueError(
            f"root_optax shipped coefficient table: no entries for "
            f"ns_steps={ns_steps!r}; it covers ns_steps in {SUPPORTED_STEPS} "
            "(root_optax.coefficients.on_demand fits any step count)."
        )
    dims = [int(d) for d in shape]
    key = (min(dims), max(dims))
    return np.asarray(_entry(key, ns_steps, normalization)).reshape(ns_steps, 3)
