"""Regenerating the shipped table: fit every grid shape, write diffable JSON.

Writes :data:`root_optax._coefficient_table.TABLE_FILE` (the core reads it);
run as ``python -m root_optax.coefficients table``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from root_optax import _coefficient_safety, _coefficient_table
from root_optax.coefficients import _fit


def dumps(data: dict) -> str:
    """JSON with one table row per line (small and diffable)."""
    head = {k: v for k, v in data.items() if k != "entries"}
    blocks = []
    for steps, rows in data["entries"].items():
        lines = ",\n".join("  " + json.dumps(row) for row in rows)
        blocks.append(f' "{steps}": [\n{lines}\n ]')
    entries = ",\n".join(blocks)
    return json.dumps(head, indent=1)[:-2] + f',\n "entries": {{\n{entries}\n }}\n}}\n'


def _fit_row(
    shape: tuple[int, int], ns_steps: int, normalization: str
) -> tuple[list, _fit.Fit]:
    """``[min, max, a1, b1, c1, ...]`` (rounded, re-checked safe) and the fit."""
    result = _fit.fit(shape, ns_steps, per_iteration=True, normalization=normalization)
    flat = [round(float(v), 7) for v in result.coefficients.ravel()]
    if not _coefficient_safety.is_safe(np.reshape(flat, (ns_steps, 3))):
        raise RuntimeError(
            f"root_optax.coefficients generate: the rounded fit for {shape}, "
            f"{ns_steps} steps is not safe (the fit's margin should prevent this)."
        )
    return [shape[0], shape[1], *flat], result


def generate(
    path: str | Path | None = None,
    *,
    steps: Iterable[int] = _coefficient_table.SUPPORTED_STEPS,
    shapes: Iterable[tuple[int, int]] | None = None,
    progress: Callable | None = None,
    normalization: str = "frobenius",
) -> dict:
    """Fit every shape (default :func:`grid_shapes`) for every step count; write JSON.

    ``normalization`` picks the table (and its default ``path``,
    :data:`root_optax._coefficient_table.TABLE_FILES`).

    Deterministic: the spectra are quantiles, not random draws, and the fit has
    no randomness, so the same code regenerates the same table.
    """
    if path is None:
        path = _coefficient_table.TABLE_FILES[normalization]
    steps = tuple(steps)
    shapes = _coefficient_table.grid_shapes() if shapes is None else list(shapes)
    jobs = [(k, shape) for k in steps for shape in shapes]
    entries: dict[str, list] = {str(k): [] for k in steps}
    worst: dict[str, float] = {}
    for k, shape in progress(jobs) if progress else jobs:
        row, result = _fit_row(shape, k, normalization)
        entries[str(k)].append(row)
        for family, error in result.errors.items():
            ratio = error / result.muon_errors[family]
            worst[f"{k}/{family}"] = max(worst.get(f"{k}/{family}", 0.0), ratio)
    data = {
        "description": (
            "Quintic Newton-Schulz coefficients fitted per (min, max) shape and "
            "step count by root_optax.coefficients.fit(per_iteration=True, "
            f"normalization={normalization!r}); regenerate with "
            "`python -m root_optax.coefficients table"
            + (
                ""
                if normalization == "frobenius"
                else f" --normalization {normalization}"
            )
            + "`."
        ),
        "normalization": normalization,
        "band": list(_coefficient_safety.BAND),
        "safe_delta": {str(k): _coefficient_safety.safe_delta(k) for k in steps},
        "families": list(_fit.FIT_FAMILIES),
        "worst_ratio_to_muon": {k: round(v, 4) for k, v in sorted(worst.items())},
        "entries": entries,
    }
    Path(path).write_text(dumps(data))
    _coefficient_table.load.cache_clear()
    _coefficient_table._entry.cache_clear()
    return data
