"""Newton–Schulz coefficient presets, spec checking and resolution per shape.

The one home of the presets (:data:`MUON_COEFFICIENTS`, :data:`REFERENCE_TABLE`,
the names in :data:`PRESETS`). Core layer: ``"root"`` reads the shipped table
(:mod:`root_optax._coefficient_table`); nothing here imports
``root_optax.coefficients`` (the fitter sits above).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from root_optax import _coefficient_table

MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""Keller Jordan's Muon quintic, used for every shape by ``ns_coeffs="muon"``."""

REFERENCE_TABLE: Mapping[tuple[int, int], tuple[float, float, float]] = {
    (2048, 2048): (3.4916, -4.8224, 2.1095),
    (2048, 3072): (3.4509, -4.5790, 1.9325),
    (2048, 8192): (2.9794, -3.6674, 1.6207),
    (2048, 16384): (3.1943, -3.8221, 1.5322),
}
"""The ROOT authors' table, keyed by ``(min(m, n), max(m, n))``."""

PRESETS = ("root", "reference", "muon")

Triple = tuple[float, float, float]
CoefficientSpec = (
    str
    | Triple
    | Sequence[Triple]
    | Mapping[tuple[int, int], Triple | Sequence[Triple]]
    | Callable[[tuple[int, int], int], Triple | Sequence[Triple]]
)


def _as_steps(fn: str, value, ns_steps: int, what: str) -> np.ndarray:
    """Coefficients as a float64 ``(ns_steps, 3)`` array, or a clear error.

    ``what`` says which coefficients these are (e.g. ``" for shape (4, 8)"``).
    """
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{fn}(ns_coeffs=...){what} must be an (a, b, c) triple or a sequence"
            f" of ns_steps={ns_steps} triples, got {value!r}."
        ) from None
    if arr.shape == (3,):
        arr = np.tile(arr, (ns_steps, 1))
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(
            f"{fn}(ns_coeffs=...){what} must have shape (3,) or (ns_steps, 3), got "
            f"shape {arr.shape} from {value!r}."
        )
    if arr.shape[0] != ns_steps:
        raise ValueError(
            f"{fn}(ns_coeffs=...){what} has {arr.shape[0]} per-iteration triples "
            f"but ns_steps={ns_steps}; pass ns_steps={arr.shape[0]} or a matching "
            "table (nothing is silently truncated or repeated)."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{fn}(ns_coeffs=...){what} must be finite, got {value!r}.")
    return arr


def _check_preset(fn: str, name: str, ns_steps: int) -> None:
    """A preset name must exist, and ``"root"`` needs a shipped step count."""
    if name not in PRESETS:
        raise ValueError(
            f"{fn}(ns_coeffs=...) got unknown preset {name!r}; expected one of"
            f" {PRESETS}, an (a, b, c) triple, a sequence of triples, a mapping"
            " from (min, max) shape to coefficients, or a callable."
        )
    supported = _coefficient_table.SUPPORTED_STEPS
    if name == "root" and ns_steps not in supported:
        raise ValueError(
            f"{fn}(ns_coeffs='root') ships coefficients for ns_steps in {supported},"
            f" got ns_steps={ns_steps}; pass one of those, or"
            " ns_coeffs=root_optax.coefficients.on_demand to fit your shapes for"
            f" {ns_steps} steps (cached)."
        )


def check_spec(fn: str, ns_coeffs: CoefficientSpec, ns_steps: int) -> None:
    """Validate a coefficient spec at construction time (shapes come later)."""
    if isinstance(ns_coeffs, str):
        _check_preset(fn, ns_coeffs, ns_steps)
    elif isinstance(ns_coeffs, Mapping):
        for key, value in ns_coeffs.items():
            if not (
                isinstance(key, tuple)
                and len(key) == 2
                and all(isinstance(k, (int, np.integer)) for k in key)
            ):
                raise ValueError(
                    f"{fn}(ns_coeffs=...) mapping keys must be (min, max) int pairs, got"
                    f" {key!r}."
                )
            _as_steps(fn, value, ns_steps, f" entry {key}")
    elif not callable(ns_coeffs):
        _as_steps(fn, ns_coeffs, ns_steps, "")


def _preset(fn: str, name: str, key: tuple[int, int], ns_steps: int, normalization):
    """The coefficients of preset ``name`` for the ``(min, max)`` shape ``key``."""
    _check_preset(fn, name, ns_steps)
    if name == "muon":
        return MUON_COEFFICIENTS
    if name == "root":
        # Fitted per shape and step count, safe by construction; off-grid
        # shapes interpolate, see root_optax._coefficient_table.lookup.
        return _coefficient_table.lookup(key, ns_steps, normalization)
    value = REFERENCE_TABLE.get(key)
    if value is None:
        warnings.warn(
            f"{fn}(ns_coeffs='reference'): no reference coefficients for shape "
            f"{key}; using Muon's {MUON_COEFFICIENTS} like the reference does.",
            stacklevel=3,
        )
        value = MUON_COEFFICIENTS
    return value


def coefficients_for_shape(
    fn: str,
    ns_coeffs: CoefficientSpec,
    shape: tuple[int, int],
    ns_steps: int,
    normalization: str = "frobenius",
) -> np.ndarray:
    """Per-iteration coefficients ``(ns_steps, 3)`` for a matrix of ``shape``.

    The ``"root"`` preset's table depends on ``normalization``; every other
    spec gives the same coefficients for both.
    """
    key = (min(shape), max(shape))
    if isinstance(ns_coeffs, str):
        value = _preset(fn, ns_coeffs, key, ns_steps, normalization)
    elif isinstance(ns_coeffs, Mapping):
        if key not in ns_coeffs:
            raise ValueError(
                f"{fn}(ns_coeffs=...) mapping has no entry for matrix shape {key} "
                f"(min, max); it has {sorted(ns_coeffs)}."
            )
        value = ns_coeffs[key]
    elif callable(ns_coeffs):
        value = ns_coeffs(key, ns_steps)
    else:
        value = ns_coeffs
    return _as_steps(fn, value, ns_steps, f" for shape {key}")
