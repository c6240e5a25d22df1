"""The shipped coefficient table and how shapes are looked up in it."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from root_optax.coefficients import _fit, _safety

TABLE_FILE = Path(__file__).with_name("table.json")

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


@functools.lru_cache(maxsize=1)
def load() -> dict[int, dict[tuple[int, int], tuple[float, ...]]]:
    """``{ns_steps: {(min, max): (a1, b1, c1, a2, ...)}}`` from :data:`TABLE_FILE`
    (one triple per iteration, flattened)."""
    data = json.loads(TABLE_FILE.read_text())
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
def _lookup(shape: tuple[int, int], ns_steps: int) -> tuple[float, ...]:
    table = load()[ns_steps]
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
    if _safety.is_safe(blend.reshape(ns_steps, 3)):
        return tuple(blend.tolist())
    # Interpolating between safe triples need not be safe: use the nearest corner.
    return max(corners, key=lambda wc: wc[0])[1]


def lookup(shape: Iterable[int], ns_steps: int = 5) -> np.ndarray:
    """Coefficients ``(ns_steps, 3)`` of the ``"root"`` preset for ``shape``.

    Policy: a shape in the table (:func:`grid_shapes`) gets its entry; any other
    shape gets the bilinear interpolation, in log(min) x log(max), of the four
    surrounding grid entries (dimensions outside 8..16384 are clamped to it),
    unless that blend fails the safety check, then the nearest grid entry. Step
    counts outside 3..6 are fitted on demand (cached). Everything returned has
    passed :func:`root_optax.coefficients.is_safe`.
    """
    dims = [int(d) for d in shape]
    key = (min(dims), max(dims))
    if ns_steps in load():
        return np.asarray(_lookup(key, ns_steps)).reshape(ns_steps, 3)
    return on_demand(key, ns_steps)


@functools.lru_cache(maxsize=1024)
def _fitted(shape: tuple[int, int], ns_steps: int) -> tuple[float, ...]:
    result = _fit.fit(shape, ns_steps, per_iteration=True)
    return tuple(result.coefficients.ravel().tolist())


def on_demand(shape: Iterable[int], ns_steps: int = 5) -> np.ndarray:
    """Fit coefficients for exactly ``shape`` (cached per shape and step count).

    Usable directly as ``ns_coeffs=root_optax.coefficients.on_demand``.
    """
    dims = [int(d) for d in shape]
    key = (min(dims), max(dims))
    return np.asarray(_fitted(key, ns_steps)).reshape(ns_steps, 3)


def dumps(data: dict) -> str:
    """JSON with one table row per line (small and diffable)."""
    head = {k: v for k, v in data.items() if k != "entries"}
    blocks = []
    for steps, rows in data["entries"].items():
        lines = ",\n".join("  " + json.dumps(row) for row in rows)
        blocks.append(f' "{steps}": [\n{lines}\n ]')
    entries = ",\n".join(blocks)
    return json.dumps(head, indent=1)[:-2] + f',\n "entries": {{\n{entries}\n }}\n}}\n'


def generate(
    path: str | Path = TABLE_FILE,
    *,
    steps: Iterable[int] = _safety.SUPPORTED_STEPS,
    progress: Callable | None = None,
) -> dict:
    """Fit every shape of :func:`grid_shapes` for every step count and write JSON.

    Deterministic: the spectra are quantiles, not random draws, and the fit has
    no randomness, so the same code regenerates the same table.
    """
    steps = tuple(steps)
    jobs = [(k, shape) for k in steps for shape in grid_shapes()]
    iterator = progress(jobs) if progress else jobs
    entries: dict[str, list] = {str(k): [] for k in steps}
    worst: dict[str, float] = {}
    for k, shape in iterator:
        result = _fit.fit(shape, k, per_iteration=True)
        flat = [round(float(v), 7) for v in result.coefficients.ravel()]
        if not _safety.is_safe(np.reshape(flat, (k, 3))):  # rounding must keep it
            raise RuntimeError(f"rounded fit for {shape}, {k} steps is not safe")
        entries[str(k)].append([shape[0], shape[1], *flat])
        for family, error in result.errors.items():
            ratio = error / result.muon_errors[family]
            worst[f"{k}/{family}"] = max(worst.get(f"{k}/{family}", 0.0), ratio)
    data = {
        "description": (
            "Quintic Newton-Schulz coefficients fitted per (min, max) shape and "
            "step count by root_optax.coefficients.fit(per_iteration=True); "
            "regenerate with "
            "`python -m root_optax.coefficients table`."
        ),
        "band": list(_safety.BAND),
        "safe_delta": {str(k): _safety.safe_delta(k) for k in steps},
        "families": list(_fit.FIT_FAMILIES),
        "worst_ratio_to_muon": {k: round(v, 4) for k, v in sorted(worst.items())},
        "entries": entries,
    }
    Path(path).write_text(dumps(data))
    load.cache_clear()
    _lookup.cache_clear()
    return data
