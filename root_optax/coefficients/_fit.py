"""Fitting Newton–Schulz coefficients to a shape: objective and optimizer."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from root_optax import _coefficient_safety as _safety
from root_optax._coefficients import MUON_COEFFICIENTS
from root_optax.coefficients import _spectra

MUON = MUON_COEFFICIENTS
"""Keller Jordan's Muon quintic (:data:`root_optax.MUON_COEFFICIENTS`), the
baseline every fit is measured against."""

FIT_FAMILIES = ("gaussian", "low_rank", "power_law", "spike", "recorded")
"""The spectrum families the objective averages over."""

FAMILY_WEIGHTS = {"gaussian": 2.0, "recorded": 2.0}
"""Weight of each family in the objective (1 unless listed)."""

TOLERANCE = {"recorded": 0.95}
"""Cap on each family's error relative to Muon's (a penalty; 1.05 unless listed).
Real momenta must come out better than Muon's, the synthetic families may
trade up to 5% for gains elsewhere."""

SAFETY_MARGIN = 1e-3
"""Fits keep this distance from the band's edges, so rounding stays safe."""

_STARTS = (MUON, (3.0, -3.7, 1.6), (2.8, -3.4, 1.6), (3.3, -4.2, 1.8))


class Fit(NamedTuple):
    """The result of :func:`fit`."""

    coefficients: np.ndarray
    """``(ns_steps, 3)`` float64: one ``(a, b, c)`` per iteration."""
    shape: tuple[int, int]
    """``(min(m, n), max(m, n))``."""
    errors: dict[str, float]
    """Relative polar error per family (mean over the family's spectra)."""
    muon_errors: dict[str, float]
    """The same for Muon's coefficients."""
    output_range: tuple[float, float]
    """Exact range of the output singular values over ``[safe_delta(K), 1]``."""
    seconds: float
    """Wall-clock time the fit took."""


class _Problem:
    """All spectra of one shape in one flat array, for fast error evaluation."""

    def __init__(
        self,
        shape: tuple[int, int],
        families: Sequence[str],
        normalization: str = "frobenius",
    ):
        m, n = shape
        values, weights, starts, owner = [], [], [], []
        self.families = tuple(families)
        for f, name in enumerate(self.families):
            for stored in _spectra.family(name, m, n):
                spectrum = _spectra.normalized(stored, normalization)
                starts.append(sum(len(v) for v in values))
                values.append(spectrum.values)
                weights.append(spectrum.weights / spectrum.weights.sum())
                owner.append(f)
        self.values = np.concatenate(values)
        self.weights = np.concatenate(weights)
        self.starts = np.asarray(starts)
        self.owner = np.asarray(owner)
        self.count = np.bincount(self.owner, minlength=len(self.families))

    def errors(self, coeffs: np.ndarray) -> np.ndarray:
        """Relative polar error per family (mean over its spectra)."""
        s = _spectra.apply(self.values, coeffs)
        per_spectrum = np.sqrt(
            np.add.reduceat(self.weights * (s - 1) ** 2, self.starts)
        )
        return np.bincount(self.owner, per_spectrum, len(self.families)) / self.count


def _nelder_mead(
    f, x0: np.ndarray, step: float, iters: int
) -> tuple[np.ndarray, float]:
    """Plain Nelder–Mead (reflect 1, expand 2, contract 1/2, shrink 1/2)."""
    points = [np.array(x0, dtype=np.float64)]
    for i in range(len(x0)):
        p = points[0].copy()
        p[i] += step
        points.append(p)
    values = [f(p) for p in points]
    for _ in range(iters):
        order = np.argsort(values)
        points = [points[i] for i in order]
        values = [values[i] for i in order]
        if np.isfinite(values[-1]) and values[-1] - values[0] <= 1e-12 * (
            abs(values[0]) + 1e-12
        ):
            break
        centre = np.mean(points[:-1], axis=0)
        reflected = 2 * centre - points[-1]
        fr = f(reflected)
        if fr < values[0]:
            expanded = 3 * centre - 2 * points[-1]
            fe = f(expanded)
            points[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            points[-1], values[-1] = reflected, fr
        else:
            contracted = (centre + points[-1]) / 2
            fc = f(contracted)
            if fc < values[-1]:
                points[-1], values[-1] = contracted, fc
            else:
                points = [points[0]] + [(points[0] + p) / 2 for p in points[1:]]
                values = [values[0]] + [f(p) for p in points[1:]]
    best = int(np.argmin(values))
    return points[best], values[best]


def _objective(problem: _Problem, baseline: np.ndarray):
    """The fit's objective on ``(K, 3)`` coefficients (infinite when unsafe)."""
    weights = np.array([FAMILY_WEIGHTS.get(f, 1.0) for f in problem.families])
    caps = np.array([TOLERANCE.get(f, 1.05) for f in problem.families])

    def objective(coeffs: np.ndarray) -> float:
        if _safety.violation(coeffs, margin=SAFETY_MARGIN) > 0:
            return np.inf
        ratio = problem.errors(coeffs) / baseline
        excess = np.maximum(ratio - caps, 0.0)
        return float(weights @ ratio**2 / weights.sum() + 1e3 * np.sum(excess**2))

    return objective


def _best_single(objective, ns_steps: int, shape) -> tuple[np.ndarray, float]:
    """The best repeated triple from each of :data:`_STARTS` (Muon's among them)."""

    def single(x: np.ndarray) -> float:
        return objective(np.tile(x, (ns_steps, 1)))

    best, best_value = np.asarray(MUON, dtype=np.float64), single(np.asarray(MUON))
    for start in _STARTS:
        if not np.isfinite(single(np.asarray(start))):
            continue
        x, value = _nelder_mead(single, np.asarray(start), 0.1, 300)
        x, value = _nelder_mead(single, x, 0.02, 300)
        if value < best_value:
            best, best_value = x, value
    if not np.isfinite(best_value):
        raise ValueError(
            f"root_optax.coefficients.fit(shape={shape}, ns_steps={ns_steps}): no "
            "safe starting point (not even Muon's coefficients); the safety band "
            "cannot be met with this few steps."
        )
    return best, best_value


def _refine_per_iteration(objective, coeffs: np.ndarray, value: float) -> np.ndarray:
    """One triple per step, from ``coeffs``; kept only if the objective improves."""
    ns_steps = len(coeffs)

    def flat(x: np.ndarray) -> float:
        return objective(x.reshape(ns_steps, 3))

    x, refined = coeffs.ravel(), value
    for step in (0.05, 0.02, 0.01):  # restarts: a fresh simplex each time
        x, refined = _nelder_mead(flat, x, step, 200 * ns_steps)
    return x.reshape(ns_steps, 3) if refined < value else coeffs


def fit(
    shape: Sequence[int],
    ns_steps: int = 5,
    *,
    per_iteration: bool = False,
    families: Sequence[str] = FIT_FAMILIES,
    normalization: str = "frobenius",
) -> Fit:
    """Fit safe quintic coefficients for ``shape``; see the package docstring.

    ``normalization`` is the scaling of Newton–Schulz's input the coefficients
    are for (``"frobenius"`` or ``"schatten4"``, see
    :func:`root_optax.orthogonalize`); the baseline is Muon's coefficients under
    the same normalization and step count.
    """
    start_time = time.perf_counter()
    shape = (int(min(shape)), int(max(shape)))
    problem = _Problem(shape, families, normalization)
    baseline = problem.errors(np.tile(MUON, (ns_steps, 1)))
    objective = _objective(problem, baseline)
    best, best_value = _best_single(objective, ns_steps, shape)
    coeffs = np.tile(best, (ns_steps, 1))
    if per_iteration:
        coeffs = _refine_per_iteration(objective, coeffs, best_value)
    return Fit(
        coefficients=coeffs,
        shape=shape,
        errors=dict(
            zip(problem.families, problem.errors(coeffs).tolist(), strict=True)
        ),
        muon_errors=dict(zip(problem.families, baseline.tolist(), strict=True)),
        output_range=_safety.output_range(coeffs, _safety.safe_delta(ns_steps)),
        seconds=time.perf_counter() - start_time,
    )
