"""Coefficient presets: lookup by shape, and the safety of everything we ship."""

import warnings

import numpy as np
import pytest

from root_optax import MUON_COEFFICIENTS, REFERENCE_TABLE, coefficients
from root_optax._coefficients import check_spec, coefficients_for_shape

SHAPES = [
    (64, 64),
    (512, 2048),
    (2048, 512),
    (2048, 2048),
    (3072, 2048),
    (2048, 8192),
    (16384, 2048),
    (4096, 11008),
]


def extremes(a, b, c, hi):
    """Exact min and max of f(s) = a s + b s^3 + c s^5 on [0, hi]: the
    candidates are the endpoints and the real roots of f'(s) = a + 3b s^2 + 5c s^4."""
    f = lambda s: a * s + b * s**3 + c * s**5
    squares = np.roots([5 * c, 3 * b, a]) if c else np.roots([3 * b, a])
    candidates = [0.0, hi] + [
        np.sqrt(r.real)
        for r in np.atleast_1d(squares)
        if abs(r.imag) < 1e-12 and 0 <= r.real <= hi**2
    ]
    values = [f(s) for s in candidates]
    return min(values), max(values)


def extremes_between(a, b, c, lo, hi):
    """Exact min and max of f on [lo, hi] (lo >= 0)."""
    f = lambda s: a * s + b * s**3 + c * s**5
    squares = np.roots([5 * c, 3 * b, a]) if c else np.roots([3 * b, a])
    candidates = [lo, hi] + [
        np.sqrt(r.real)
        for r in np.atleast_1d(squares)
        if abs(r.imag) < 1e-12 and lo**2 <= r.real <= hi**2
    ]
    values = [f(s) for s in candidates]
    return min(values), max(values)


def invariant_bound(a, b, c):
    """Return M = max of f on [0, 1] if f maps [0, M] into [0, M] (then every
    iterate of every s in [0, 1] stays in [0, M], for any number of steps),
    else None."""
    _, bound = extremes(a, b, c, 1.0)
    low, high = extremes(a, b, c, bound)
    return bound if low >= 0 and high <= bound else None


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ns_steps", [3, 4, 5, 6])
def test_root_preset_is_bounded_for_every_step_count(shape, ns_steps):
    """Every iterate of every s in [0, 1] stays in [0, 1.25]: the exact image of
    [0, 1] through each step (the per-iteration triples need not each have an
    invariant interval, the sequence is what is shipped)."""
    coeffs = coefficients_for_shape("t", "root", shape, ns_steps)
    assert coeffs.shape == (ns_steps, 3)
    lo, hi = 0.0, 1.0
    for a, b, c in coeffs:
        lo, hi = extremes_between(a, b, c, lo, hi)
        assert lo >= 0.0 and hi < 1.25


def test_muon_triple_is_bounded():
    assert invariant_bound(*MUON_COEFFICIENTS) is not None


def test_reference_square_entry_is_not_bounded():
    """The authors' square quintic fails the invariant-interval test and does
    amplify: 3.3 after five steps and ~679 after six."""
    a, b, c = REFERENCE_TABLE[(2048, 2048)]
    assert invariant_bound(a, b, c) is None
    s = np.linspace(1e-2, 1.0, 200_001)
    peaks = []
    for _ in range(6):
        s = a * s + b * s**3 + c * s**5
        peaks.append(s.max())
    assert peaks[4] == pytest.approx(3.314, abs=2e-3)
    assert peaks[5] > 600


def test_reference_preset_reproduces_table_and_warns_on_fallback():
    for shape, triple in REFERENCE_TABLE.items():
        np.testing.assert_array_equal(
            coefficients_for_shape("t", "reference", shape[::-1], 5), [triple] * 5
        )
    with pytest.warns(
        UserWarning, match=r"no reference coefficients for shape \(64, 128\)"
    ):
        got = coefficients_for_shape("t", "reference", (128, 64), 5)
    np.testing.assert_array_equal(got, [MUON_COEFFICIENTS] * 5)


def test_root_and_muon_presets_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        coefficients_for_shape("t", "root", (100, 300), 5)
        coefficients_for_shape("t", "muon", (100, 300), 5)


def test_root_preset_is_the_fitted_table():
    for shape in [(2048, 2048), (2048, 8192), (4096, 11008)]:
        for steps in coefficients.SUPPORTED_STEPS:
            np.testing.assert_array_equal(
                coefficients_for_shape("t", "root", shape[::-1], steps),
                coefficients.lookup(shape, steps),
            )
    # The authors' unsafe square entry is not what "root" uses.
    got = coefficients_for_shape("t", "root", (2048, 2048), 5)
    assert not np.any(np.all(got == REFERENCE_TABLE[(2048, 2048)], axis=1))


def test_mapping_and_callable_specs():
    table = {(4, 8): [(1.0, 0.0, 0.0), (2.0, 0.0, 0.0)]}
    np.testing.assert_array_equal(
        coefficients_for_shape("t", table, (8, 4), 2), [[1, 0, 0], [2, 0, 0]]
    )
    seen = []
    spec = lambda shape, steps: seen.append((shape, steps)) or (1.5, -0.5, 0.0)
    np.testing.assert_array_equal(
        coefficients_for_shape("t", spec, (9, 3), 4), [[1.5, -0.5, 0.0]] * 4
    )
    assert seen == [((3, 9), 4)]


@pytest.mark.parametrize("ns_steps", [1, 2, 7, 9])
def test_root_preset_rejects_step_counts_the_table_lacks(ns_steps):
    """The core never fits: other step counts are an error that names the fix
    (root_optax.coefficients.on_demand, which fits them)."""
    match = (
        rf"root\(ns_coeffs='root'\) ships coefficients for ns_steps in "
        rf"\(3, 4, 5, 6\), got ns_steps={ns_steps}.*coefficients\.on_demand"
    )
    with pytest.raises(ValueError, match=match):
        check_spec("root", "root", ns_steps)
    with pytest.raises(ValueError, match=match):
        coefficients_for_shape("root", "root", (64, 256), ns_steps)
    check_spec("root", "muon", ns_steps)
    check_spec("root", coefficients.on_demand, ns_steps)
