"""root_optax.coefficients: safety, spectra, the fit and the shipped table.

Ground truths: dense sampling of the iterated scalar map (independent of the
interval arithmetic), float64 SVD of explicit matrices, and Muon's and the
authors' coefficients.
"""

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import root_optax
from root_optax import (
    MUON_COEFFICIENTS,
    REFERENCE_TABLE,
    _coefficient_safety,
    _coefficient_table,
    coefficients,
)
from root_optax.coefficients import _generate, _spectra

GRID = np.linspace(0.0, 1.0, 200_001)


def iterate(coeffs, s, steps=None):
    """The iterated scalar map on an array, plus the running max of every step."""
    coeffs = np.asarray(coeffs, dtype=np.float64).reshape(-1, 3)
    if steps is not None:
        coeffs = np.tile(coeffs[0], (steps, 1))
    peak = s.max()
    for a, b, c in coeffs:
        s = a * s + b * s**3 + c * s**5
        peak = max(peak, s.max())
    return s, peak


def assert_safe_by_sampling(coeffs):
    """The safety band, checked on a dense grid rather than by interval images."""
    coeffs = np.asarray(coeffs, dtype=np.float64)
    steps = len(coeffs)
    lo_band, hi_band = coefficients.BAND
    out, peak = iterate(coeffs, GRID)
    assert out.min() >= 0.0 and peak <= hi_band + 1e-12
    delta = coefficients.safe_delta(steps)
    band = out[GRID >= delta]
    assert band.min() >= lo_band - 1e-12 and band.max() <= hi_band + 1e-12
    # A single repeated triple stays bounded at any step count.
    if np.all(coeffs == coeffs[0]):
        _, peak = iterate(coeffs[0], GRID, steps=40)
        assert peak <= hi_band + 1e-12


# ---------------------------------------------------------------- safety
@pytest.mark.parametrize("steps", [3, 4, 5, 6])
def test_muon_is_safe_and_reference_square_is_not(steps):
    assert coefficients.is_safe(MUON_COEFFICIENTS, steps)
    assert_safe_by_sampling(np.tile(MUON_COEFFICIENTS, (steps, 1)))
    assert not coefficients.is_safe(REFERENCE_TABLE[(2048, 2048)], steps)


def test_reference_square_blows_up_where_the_issue_says():
    a, b, c = REFERENCE_TABLE[(2048, 2048)]
    out5, _ = iterate((a, b, c), GRID, steps=5)
    out6, _ = iterate((a, b, c), GRID, steps=6)
    assert out5.max() == pytest.approx(3.314, abs=2e-3)
    assert out6.max() > 600
    hot = GRID[out5 > 2.0]
    assert hot.min() > 0.16 and hot.max() < 0.58
    # A matrix with one direction holding ~31% of its energy lands there.
    assert np.sqrt(0.31) == pytest.approx(0.557, abs=1e-3)


def test_interval_image_is_exact_against_sampling():
    rng = np.random.default_rng(0)
    for _ in range(200):
        triple = rng.normal([3.0, -4.0, 1.8], [0.6, 0.8, 0.5])
        lo, hi = sorted(rng.uniform(0, 1.2, 2))
        s = np.linspace(lo, hi, 20_001)
        values = triple[0] * s + triple[1] * s**3 + triple[2] * s**5
        got = _coefficient_safety.image(tuple(triple), lo, hi)
        np.testing.assert_allclose(got, (values.min(), values.max()), atol=1e-7)


def test_a_gaussian_only_fit_cannot_escape_the_band():
    """Even when the objective only sees narrow Gaussian spectra (where F(1)
    is irrelevant), the constraint keeps a rank-1 input near 1."""
    fit = coefficients.fit((256, 16384), 5, families=("gaussian",))
    assert coefficients.is_safe(fit.coefficients)
    assert_safe_by_sampling(fit.coefficients)
    out, _ = iterate(fit.coefficients, np.array([1.0]))
    assert coefficients.BAND[0] <= out[0] <= coefficients.BAND[1]


def test_bad_coefficient_arrays_are_rejected():
    with pytest.raises(ValueError, match="needs ns_steps"):
        coefficients.is_safe(MUON_COEFFICIENTS)
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        coefficients.is_safe(np.ones((2, 2)))


# ---------------------------------------------------------------- the table
def test_every_table_entry_is_safe_for_its_step_count():
    table = _coefficient_table.load()
    assert sorted(table) == list(coefficients.SUPPORTED_STEPS)
    for steps, entries in table.items():
        assert sorted(entries) == coefficients.grid_shapes()
        for flat in entries.values():
            assert coefficients.is_safe(np.reshape(flat, (steps, 3)))


@pytest.mark.parametrize("steps", [3, 4, 5, 6])
def test_table_entries_are_safe_by_sampling(steps):
    entries = _coefficient_table.load()[steps]
    rng = np.random.default_rng(steps)
    keys = sorted(entries)
    for i in rng.choice(len(keys), 12, replace=False):
        assert_safe_by_sampling(np.reshape(entries[keys[i]], (steps, 3)))


@pytest.mark.parametrize(
    "shape", [(100, 300), (3000, 7000), (5, 7), (50000, 60000), (4096, 100000)]
)
@pytest.mark.parametrize("steps", [3, 5])
def test_off_grid_lookup_is_safe_and_symmetric(shape, steps):
    coeffs = coefficients.lookup(shape, steps)
    assert coeffs.shape == (steps, 3)
    assert coefficients.is_safe(coeffs)
    np.testing.assert_array_equal(coeffs, coefficients.lookup(shape[::-1], steps))


def test_lookup_hits_the_table_exactly_on_grid():
    for shape in [(1024, 4096), (4096, 11008), (8, 8), (16384, 16384)]:
        np.testing.assert_array_equal(
            coefficients.lookup(shape, 5).ravel(), _coefficient_table.load()[5][shape]
        )


def test_off_grid_lookup_interpolates_between_neighbours():
    # (1024, 2048) and (1536, 2048) are grid points; 1254 is their log-midpoint.
    got = coefficients.lookup((1254, 2048), 5).ravel()
    table = _coefficient_table.load()[5]
    lo, hi = table[(1024, 2048)], table[(1536, 2048)]
    for g, a, b in zip(got, lo, hi, strict=True):
        assert min(a, b) - 1e-12 <= g <= max(a, b) + 1e-12


@pytest.mark.parametrize("steps", [1, 2, 8])
def test_other_step_counts_are_fitted_on_demand_and_safe(steps):
    coeffs = coefficients.lookup((64, 256), steps)
    assert coeffs.shape == (steps, 3)
    assert coefficients.is_safe(coeffs)
    np.testing.assert_array_equal(coeffs, coefficients.on_demand((256, 64), steps))


def test_table_regenerates_reproducibly(tmp_path):
    shapes = [(8, 8), (48, 384), (4096, 11008)]
    data = _generate.generate(tmp_path / "table.json", steps=(5,), shapes=shapes)
    again = _generate.generate(tmp_path / "again.json", steps=(5,), shapes=shapes)
    assert data["entries"] == again["entries"]
    shipped = _coefficient_table.load()[5]
    for m, n, *flat in data["entries"]["5"]:
        assert tuple(flat) == shipped[(m, n)]
    assert _generate.dumps(data) == (tmp_path / "table.json").read_text()


def test_shipped_table_is_in_the_generators_format():
    text = _coefficient_table.TABLE_FILE.read_text()
    assert _generate.dumps(json.loads(text)) == text


# ---------------------------------------------------------------- spectra
def test_marchenko_pastur_matches_gaussian_matrices():
    rng = np.random.default_rng(0)
    for m, n in [(128, 128), (128, 512), (64, 1024)]:
        s = np.linalg.svd(rng.standard_normal((m, n)), compute_uv=False)
        s = np.sort(s / np.linalg.norm(s))[::-1]
        model = coefficients.family("gaussian", m, n)[0].values
        np.testing.assert_allclose(
            np.quantile(s, [0.1, 0.5, 0.9]),
            np.quantile(model, [0.1, 0.5, 0.9]),
            rtol=0.05,
        )


@pytest.mark.parametrize(
    "name", ["gaussian", "low_rank", "power_law", "spike", "recorded"]
)
def test_families_are_normalized(name):
    for shape in [(64, 64), (512, 2048), (4096, 16384)]:
        for spectrum in coefficients.family(name, *shape):
            assert len(spectrum.values) <= _spectra.POINTS
            assert np.sum(spectrum.weights) == pytest.approx(min(shape))
            total = np.sum(spectrum.weights * spectrum.values**2)
            assert total == pytest.approx(1.0)


def test_spectral_error_equals_matrix_error(x64):
    """The objective's error formula against Newton–Schulz on explicit matrices
    (float64) and the SVD polar factor."""
    rng = np.random.default_rng(1)
    m, n = 48, 160
    u, _ = np.linalg.qr(rng.standard_normal((m, m)))
    v, _ = np.linalg.qr(rng.standard_normal((n, m)))
    for name in ["gaussian", "power_law", "spike"]:
        spectrum = _spectra.family(name, m, n)[0]
        assert len(spectrum.values) == m  # small enough to be uncompressed
        x = (u * spectrum.values) @ v.T
        coeffs = coefficients.lookup((m, n), 5)
        out = np.asarray(root_optax.orthogonalize(jnp.asarray(x), coeffs, eps=0.0))
        polar = u @ v.T
        truth = np.linalg.norm(out - polar) / np.linalg.norm(polar)
        assert coefficients.relative_polar_error(spectrum, coeffs) == pytest.approx(
            truth, rel=1e-9
        )


# ---------------------------------------------------------------- the fit
def test_fit_beats_muon_on_gaussian_spectra_of_wide_shapes():
    for shape in [(256, 1024), (512, 4096)]:
        fit = coefficients.fit(shape, 5, per_iteration=True)
        assert fit.errors["gaussian"] <= 0.5 * fit.muon_errors["gaussian"]
        for family, error in fit.errors.items():
            cap = 0.95 if family == "recorded" else 1.05
            assert error <= cap * fit.muon_errors[family] + 1e-12, family
        assert coefficients.is_safe(fit.coefficients)


def test_per_iteration_fit_is_safe_and_no_worse():
    single = coefficients.fit((128, 384), 4)
    multi = coefficients.fit((128, 384), 4, per_iteration=True)
    assert multi.coefficients.shape == (4, 3)
    assert coefficients.is_safe(multi.coefficients)
    assert_safe_by_sampling(multi.coefficients)
    assert multi.errors["gaussian"] <= single.errors["gaussian"] * 1.05


def test_command_line_fit_prints_coefficients_and_errors():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "root_optax.coefficients",
            "fit",
            "96",
            "384",
            "--steps",
            "3",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "shape (96, 384), 3 steps" in out
    for family in coefficients.FIT_FAMILIES:
        assert family in out


def test_command_line_rejects_bad_sizes():
    result = subprocess.run(
        [sys.executable, "-m", "root_optax.coefficients", "fit", "0", "384"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "m must be positive, got 0" in result.stderr
