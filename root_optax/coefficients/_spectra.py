"""Spectrum families: the singular values Newton–Schulz sees for a shape.

A spectrum is the normalized singular values ``s`` (``sum w s^2 = 1``, as after
dividing by the Frobenius norm) of an ``m x n`` matrix, ``m <= n``, stored as
at most :data:`POINTS` values with weights ``w`` (how many singular values each
stands for), so a 16384-wide spectrum costs as little to evaluate as a 64-wide
one. Each family is deterministic: quantiles, not random draws.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

POINTS = 128
"""At most this many weighted values per spectrum (the top 8 are kept exactly)."""
_TOP = 8

RECORDED_FILE = Path(__file__).with_name("recorded_spectra.json")


class Spectrum(NamedTuple):
    """Normalized singular values and how many singular values each stands for."""

    values: np.ndarray
    """Normalized singular values ``s``, with ``sum(weights * s**2) == 1``."""
    weights: np.ndarray
    """How many singular values each entry of ``values`` stands for."""


def _normalize(values: np.ndarray, weights: np.ndarray) -> Spectrum:
    values = np.asarray(values, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    return Spectrum(values / np.sqrt(np.sum(weights * values**2)), weights)


def _compress(values: np.ndarray) -> Spectrum:
    """All ``m`` singular values as at most :data:`POINTS` weighted ones."""
    values = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    if len(values) <= POINTS:
        return _normalize(values, np.ones_like(values))
    top, rest = values[:_TOP], values[_TOP:]
    k = POINTS - _TOP
    picks = rest[((np.arange(k) + 0.5) * len(rest) / k).astype(np.int64)]
    weights = np.concatenate([np.ones(_TOP), np.full(k, len(rest) / k)])
    return _normalize(np.concatenate([top, picks]), weights)


@functools.lru_cache(maxsize=64)
def _marchenko_pastur_cdf(ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalue grid and CDF of the Marchenko–Pastur law with aspect ``ratio``."""
    lo, hi = (1 - np.sqrt(ratio)) ** 2, (1 + np.sqrt(ratio)) ** 2
    # lambda = lo + (hi - lo) (1 - cos t) / 2 removes the square-root edges.
    t = np.linspace(0.0, np.pi, 8193)
    lam = lo + (hi - lo) * (1 - np.cos(t)) / 2
    density = np.sqrt(np.maximum((hi - lam) * (lam - lo), 0.0)) / (
        2 * np.pi * ratio * np.maximum(lam, 1e-300)
    )
    integrand = density * (hi - lo) * np.sin(t) / 2
    cdf = np.concatenate([[0.0], np.cumsum((integrand[1:] + integrand[:-1]) / 2)])
    return lam, cdf / cdf[-1]


def marchenko_pastur(m: int, n: int, count: int) -> np.ndarray:
    """``count`` quantiles of the singular values of an ``m x n`` Gaussian matrix
    (``m <= n``) in the large-size limit, descending, unnormalized."""
    lam, cdf = _marchenko_pastur_cdf(m / n)
    q = (np.arange(count) + 0.5) / count
    return np.sqrt(np.interp(q, cdf, lam))[::-1]


def gaussian(m: int, n: int) -> Spectrum:
    """A matrix of i.i.d. Gaussian entries (Marchenko–Pastur singular values)."""
    count = min(m, POINTS)
    values = marchenko_pastur(m, n, count)
    return _normalize(values, np.full(count, m / count))


def _signal_plus_noise(signal: np.ndarray, m: int, n: int, energy: float) -> Spectrum:
    noise = marchenko_pastur(m, n, m)[len(signal) :]
    signal = signal / np.linalg.norm(signal) * np.sqrt(energy)
    noise = noise / np.linalg.norm(noise) * np.sqrt(1 - energy)
    return _compress(np.concatenate([signal, noise]))


def low_rank(m: int, n: int) -> Spectrum:
    """Rank ``max(1, m // 32)`` signal (values decaying 5x) holding 80% of the
    energy, plus Gaussian noise."""
    rank = max(1, m // 32)
    return _signal_plus_noise(np.linspace(1.0, 0.2, rank), m, n, 0.8)


def power_law(m: int, n: int) -> Spectrum:
    """Singular values ``i^(-1/2)``, ``i = 1..m`` (a slowly decaying spectrum)."""
    return _compress(np.arange(1, m + 1, dtype=np.float64) ** -0.5)


def spike(m: int, n: int) -> Spectrum:
    """One direction holding 30% of the energy on top of Gaussian noise."""
    return _signal_plus_noise(np.ones(1), m, n, 0.3)


@functools.lru_cache(maxsize=1)
def recorded_records() -> tuple[dict, ...]:
    """The records of ``recorded_spectra.json`` (written by
    :mod:`root_optax.demo.record_spectra`)."""
    return tuple(json.loads(RECORDED_FILE.read_text())["records"])


RECORDED_FIT_STEPS = (25, 100, 200)
"""Training steps whose recorded spectra :func:`recorded` uses (fewer is faster)."""


def _recorded_profiles(seed: int) -> list[tuple[float, np.ndarray]]:
    return [
        (r["shape"][0] / r["shape"][1], np.asarray(r["singular_values"]))
        for r in recorded_records()
        if r["seed"] == seed and r["step"] in RECORDED_FIT_STEPS
    ]


def recorded(m: int, n: int, *, seed: int = 0) -> list[Spectrum]:
    """Real clipped momenta, carried over to ``(m, n)``.

    The recorded spectra with the aspect ratio nearest to ``m / n`` (in log
    scale) are resampled to ``m`` values as functions of the rank fraction
    ``i / m``. Seed 0 is for fitting, seed 1 is held out.
    """
    profiles = _recorded_profiles(seed)
    distance = [abs(np.log(ratio) - np.log(m / n)) for ratio, _ in profiles]
    nearest = min(distance)
    out = []
    for (_, values), d in zip(profiles, distance, strict=True):
        if d > nearest + 1e-9:
            continue
        # Exact zeros (e.g. of a zero-initialised layer's first steps) are not
        # part of the polar factor U V^T; SVD returns them as ~1e-16.
        values = values[values > 1e-7 * values.max()]
        fraction = (np.arange(len(values)) + 0.5) / len(values)
        at = (np.arange(m) + 0.5) / m
        out.append(_compress(np.interp(at, fraction, np.sort(values)[::-1])))
    return out


FAMILIES = {
    "gaussian": gaussian,
    "low_rank": low_rank,
    "power_law": power_law,
    "spike": spike,
}
"""Synthetic families by name, each ``fn(m, n) -> Spectrum`` with ``m <= n``."""


def family(name: str, m: int, n: int) -> list[Spectrum]:
    """The spectra of family ``name`` for shape ``(m, n)`` (any order)."""
    m, n = min(m, n), max(m, n)
    if name == "recorded":
        return recorded(m, n)
    return [FAMILIES[name](m, n)]


def apply(values: np.ndarray, coeffs) -> np.ndarray:
    """Singular values after Newton–Schulz with ``coeffs`` (``(K, 3)``): each step
    maps ``s`` to ``a s + b s^3 + c s^5``."""
    s = np.asarray(values, dtype=np.float64)
    for a, b, c in np.asarray(coeffs, dtype=np.float64).reshape(-1, 3):
        s2 = s * s
        s = s * (a + s2 * (b + c * s2))
    return s


NORMALIZATIONS = ("frobenius", "schatten4")
"""How Newton–Schulz scales its input (``ns_normalization``)."""


def normalized(spectrum: Spectrum, normalization: str = "frobenius") -> Spectrum:
    """The singular values Newton–Schulz starts from under ``normalization``.

    Spectra are stored Frobenius-normalized (``sum w s^2 = 1``);
    ``"schatten4"`` divides by the Schatten-4 norm instead
    (``sum w s^4 = 1``), which puts the values nearer 1.
    """
    if normalization == "frobenius":
        return spectrum
    if normalization != "schatten4":
        raise ValueError(
            f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}."
        )
    norm = np.sum(spectrum.weights * spectrum.values**4) ** 0.25
    return Spectrum(spectrum.values / norm, spectrum.weights)


def relative_polar_error(spectrum: Spectrum, coeffs) -> float:
    r"""``||X_K - U V^T||_F / ||U V^T||_F`` for a matrix with this spectrum:
    :math:`\sqrt{\sum_i w_i (F(s_i) - 1)^2 / \sum_i w_i}` (exact, since Newton–Schulz
    maps each singular value on its own and keeps the singular vectors)."""
    s = apply(spectrum.values, coeffs)
    return float(
        np.sqrt(np.sum(spectrum.weights * (s - 1) ** 2) / np.sum(spectrum.weights))
    )
