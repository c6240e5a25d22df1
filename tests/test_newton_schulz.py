"""Newton–Schulz: exact agreement with the SVD form, orientation, batching, dtypes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optax.contrib import MuonDimensionNumbers

import root_optax
import root_optax.coefficients
from root_optax import MUON_COEFFICIENTS, REFERENCE_TABLE, _newton_schulz, orthogonalize


def svd_newton_schulz(x, coeffs, eps=1e-7):
    """Ground truth in float64 (complex128 for complex input): the iteration acts
    on singular values only."""
    x = np.asarray(x, np.complex128 if np.iscomplexobj(x) else np.float64)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    s = s / (np.linalg.norm(x) + eps)
    for a, b, c in coeffs:
        s = a * s + b * s**3 + c * s**5
    return (u * s) @ vt


def polar(x):
    u, _, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
    return u @ vt


@pytest.mark.parametrize("shape", [(16, 16), (12, 40), (40, 12)])
def test_equals_svd_rendering_in_float64(rng, x64, shape):
    x = rng.standard_normal(shape)
    coeffs = [MUON_COEFFICIENTS] * 5
    got = orthogonalize(jnp.asarray(x), "muon", 5)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, svd_newton_schulz(x, coeffs), rtol=0, atol=1e-11)


def test_per_iteration_coefficients(rng, x64):
    x = rng.standard_normal((20, 30))
    table = [(4.0, -6.0, 2.9), (3.5, -5.0, 2.3), (2.9, -3.1, 1.2)]
    got = orthogonalize(jnp.asarray(x), table, ns_steps=3)
    np.testing.assert_allclose(got, svd_newton_schulz(x, table), atol=1e-11)


def test_converges_to_polar_factor(rng, x64):
    x = rng.standard_normal((24, 36)) + 3 * np.eye(24, 36)
    got = orthogonalize(jnp.asarray(x), (1.5, -0.5, 0.0), ns_steps=60)
    np.testing.assert_allclose(got, polar(x), atol=1e-10)


def test_float32_close_to_float64_truth(rng):
    x = rng.standard_normal((64, 256)).astype(np.float32)
    got = orthogonalize(x, "muon")
    assert got.dtype == jnp.float32
    want = svd_newton_schulz(x, [MUON_COEFFICIENTS] * 5)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5


def test_tall_is_transpose_of_wide(rng):
    x = rng.standard_normal((48, 16)).astype(np.float32)
    np.testing.assert_allclose(orthogonalize(x), orthogonalize(x.T).T, atol=1e-6)


def test_batch_is_per_slice(rng):
    x = rng.standard_normal((3, 2, 16, 24)).astype(np.float32)
    got = orthogonalize(x)
    for i in range(3):
        for j in range(2):
            np.testing.assert_allclose(got[i, j], orthogonalize(x[i, j]), atol=1e-6)


def test_bfloat16_input_and_compute(rng):
    x = rng.standard_normal((32, 64)).astype(np.float32)
    x_bf16 = jnp.asarray(x, jnp.bfloat16)
    # The default preset: our table's per-iteration coefficients for (32, 64).
    coeffs = root_optax.coefficients.lookup(x.shape, 5)
    want = svd_newton_schulz(np.asarray(x_bf16, np.float32), coeffs)
    # bf16 input: computed in float32 by default, rounded to bf16 on the way out.
    out_bf16 = orthogonalize(x_bf16)
    assert out_bf16.dtype == jnp.bfloat16
    err = np.linalg.norm(np.asarray(out_bf16, np.float64) - want) / np.linalg.norm(want)
    assert err < 1e-2
    # bf16 compute on request (float32 accumulation): looser but sane.
    low = orthogonalize(x_bf16.astype(jnp.float32), ns_dtype=jnp.bfloat16)
    assert low.dtype == jnp.float32
    err = np.linalg.norm(np.asarray(low, np.float64) - want) / np.linalg.norm(want)
    assert err < 1e-1


def test_float32_is_never_downcast():
    x = jnp.ones((8, 8), jnp.float32)
    hlo = jax.jit(orthogonalize).lower(x).as_text()
    assert "bf16" not in hlo and "f16" not in hlo


def test_reference_square_entry_amplifies_singular_values():
    # One direction holding a normalized singular value of 0.559 (the band the
    # reference's (2048, 2048) quintic sends to ~3.3 in five steps).
    n = 64
    s = np.full(n, np.sqrt((1 - 0.559**2) / (n - 1)))
    s[0] = 0.559
    q1, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((n, n)))
    q2, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((n, n)))
    x = (q1 * s) @ q2.T
    square = REFERENCE_TABLE[(2048, 2048)]
    top = np.linalg.svd(np.asarray(orthogonalize(x, square), np.float64))[1][0]
    assert top > 3.0
    top_muon = np.linalg.svd(np.asarray(orthogonalize(x, "muon"), np.float64))[1][0]
    assert top_muon < 1.21


def test_rank_one_input_comes_out_near_one(rng):
    x = np.outer(rng.standard_normal(32), rng.standard_normal(48)).astype(np.float32)
    for coeffs in ("root", "muon", REFERENCE_TABLE[(2048, 8192)]):
        top = np.linalg.svd(np.asarray(orthogonalize(x, coeffs), np.float64))[1][0]
        assert 0.65 < top < 1.25, coeffs


def test_transform_uses_each_slice_shape(rng):
    table = {(16, 24): (2.0, -1.5, 0.5), (8, 8): MUON_COEFFICIENTS}
    tx = root_optax.adaptive_newton_schulz(table)
    tree = {
        "stacked": rng.standard_normal((3, 24, 16)).astype(np.float32),
        "square": rng.standard_normal((8, 8)).astype(np.float32),
    }
    out, _ = jax.jit(tx.update)(tree, tx.init(tree))
    np.testing.assert_allclose(
        out["stacked"][1],
        orthogonalize(tree["stacked"][1], (2.0, -1.5, 0.5)),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        out["square"], orthogonalize(tree["square"], "muon"), atol=1e-5
    )


def test_dimension_numbers_group_axes(rng):
    kernel = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)  # (h, w, in, out)
    dims = MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)
    tx = root_optax.adaptive_newton_schulz(weight_dimension_numbers=dims)
    out, _ = tx.update(kernel, tx.init(kernel))
    want = orthogonalize(kernel.reshape(60, 6)).reshape(3, 4, 5, 6)
    np.testing.assert_allclose(out, want, atol=1e-6)


def test_none_dimension_numbers_pass_through(rng):
    tree = {"w": rng.standard_normal((4, 6)).astype(np.float32), "b": np.ones(6)}
    dims = {"w": MuonDimensionNumbers(), "b": None}
    tx = root_optax.adaptive_newton_schulz(weight_dimension_numbers=dims)
    out, _ = tx.update(tree, tx.init(tree))
    np.testing.assert_array_equal(out["b"], tree["b"])


def complex_normal(rng, shape):
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


@pytest.mark.parametrize("shape", [(12, 12), (8, 20), (20, 8)])
def test_complex_equals_svd_rendering_in_complex128(rng, x64, shape):
    """X X^H, not X X^T: the singular values move as for real matrices."""
    x = complex_normal(rng, shape)
    got = orthogonalize(jnp.asarray(x), "muon", 5)
    assert got.dtype == jnp.complex128
    want = svd_newton_schulz(x.astype(np.complex128), [MUON_COEFFICIENTS] * 5)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-11)


def test_complex_converges_to_the_unitary_polar_factor(rng, x64):
    x = complex_normal(rng, (10, 16)) + 4 * np.eye(10, 16)
    got = np.asarray(orthogonalize(jnp.asarray(x), (1.5, -0.5, 0.0), ns_steps=60))
    u, _, vh = np.linalg.svd(x, full_matrices=False)
    np.testing.assert_allclose(got, u @ vh, atol=1e-10)
    np.testing.assert_allclose(got @ got.conj().T, np.eye(10), atol=1e-10)


def test_complex64_stays_complex64_close_to_truth(rng):
    x = complex_normal(rng, (16, 32)).astype(np.complex64)
    got = orthogonalize(x, "muon")
    assert got.dtype == jnp.complex64
    want = svd_newton_schulz(x.astype(np.complex128), [MUON_COEFFICIENTS] * 5)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5


@pytest.mark.parametrize("scale", [1e18, 1e30, 1e-30])
def test_normalization_survives_overflow_and_underflow(rng, scale):
    """||X||_F^2 overflows float32 above ~1e19 per entry (and underflows below
    ~1e-19): the direction must not depend on the scale."""
    x = rng.standard_normal((24, 40)).astype(np.float32)
    want = orthogonalize(x, "muon", eps=0.0)
    got = orthogonalize(x * np.float32(scale), "muon", eps=0.0)
    assert bool(jnp.all(jnp.isfinite(got)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_zero_size_matrices_come_back_empty():
    for shape in [(0, 5), (5, 0), (3, 0, 4)]:
        out = orthogonalize(jnp.zeros(shape), "muon")
        assert out.shape == shape


def svd_schatten4(x, coeffs, eps=1e-7):
    """Ground truth with the Schatten-4 normalization: s / (||s||_4 + eps)."""
    x = np.asarray(x, np.float64)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    s = s / (np.sum(s**4) ** 0.25 + eps)
    for a, b, c in coeffs:
        s = a * s + b * s**3 + c * s**5
    return (u * s) @ vt


@pytest.mark.parametrize("shape", [(16, 16), (12, 40), (40, 12)])
def test_schatten4_normalization_equals_svd_rendering(rng, x64, shape):
    x = rng.standard_normal(shape)
    coeffs = [MUON_COEFFICIENTS] * 4
    got = orthogonalize(jnp.asarray(x), "muon", 4, ns_normalization="schatten4")
    np.testing.assert_allclose(got, svd_schatten4(x, coeffs), rtol=0, atol=1e-11)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 6])
def test_gram_form_equals_the_standard_iteration_in_float64(rng, x64, steps):
    """Same polynomial on the small side, restarts included (every 2 steps)."""
    x = rng.standard_normal((24, 96))
    table = [(3.2 - 0.1 * k, -4.2 + 0.2 * k, 1.8 - 0.05 * k) for k in range(steps)]
    for normalization in ("frobenius", "schatten4"):
        want = orthogonalize(
            jnp.asarray(x), table, steps, ns_normalization=normalization
        )
        got = orthogonalize(
            jnp.asarray(x), table, steps, ns_normalization=normalization, ns_gram=True
        )
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-11)


def test_gram_form_in_float32_and_complex(rng):
    x = rng.standard_normal((3, 64, 256)).astype(np.float32)
    want = orthogonalize(x, "root")
    got = orthogonalize(x, "root", ns_gram=True)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4
    z = (rng.standard_normal((16, 64)) + 1j * rng.standard_normal((16, 64))).astype(
        np.complex64
    )
    want = orthogonalize(z, "muon")
    got = orthogonalize(z, "muon", ns_gram=True)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4


def test_gram_form_only_runs_where_it_is_cheaper():
    from root_optax import _newton_schulz

    config = _newton_schulz.ns_config("t", "muon", 5, 1e-7, None, ns_gram=True)
    assert _newton_schulz.uses_gram(config, (64, 128))
    assert not _newton_schulz.uses_gram(config, (64, 127))
    assert not _newton_schulz.uses_gram(config._replace(gram=False), (64, 256))


def _dot_precisions(fn, *args):
    text = jax.jit(fn).lower(*args).as_text()
    return text.count("dot_general"), text.count("HIGHEST")


def test_default_precision_is_the_backends_and_highest_is_available():
    """No Precision.HIGHEST in the default program (the backend's default, as
    optax muon: one bf16 pass per product on TPU); "highest" asks for it."""
    x = jnp.ones((8, 32))
    dots, highest = _dot_precisions(lambda x: orthogonalize(x, "muon"), x)
    assert dots == 3 and highest == 0  # the loop body's three products
    dots, highest = _dot_precisions(
        lambda x: orthogonalize(x, "muon", ns_precision="highest"), x
    )
    assert dots == 3 and highest >= 3


@pytest.mark.parametrize(
    "normalization, steps, dots",
    [
        ("frobenius", 5, 3),
        ("frobenius", 1, 3),
        ("schatten4", 5, 3 + 3),
        ("schatten4", 2, 3 + 3),
    ],
)
def test_steps_are_compiled_once(normalization, steps, dots):
    """The iteration is one loop over the coefficient rows: its three products
    appear once in the program, whatever the step count (a Schatten-4 first step
    reuses the normalization's Gram product and runs before the loop)."""
    x = jnp.ones((8, 32))
    fn = lambda x: orthogonalize(
        x,
        np.tile(MUON_COEFFICIENTS, (steps, 1)),
        ns_steps=steps,
        ns_normalization=normalization,
    )
    assert _dot_precisions(fn, x)[0] == dots


@pytest.mark.parametrize(
    "kwargs, error, shown",
    [
        ({"ns_normalization": "spectral"}, ValueError, "ns_normalization='spectral'"),
        ({"ns_gram": 1}, TypeError, "ns_gram=1"),
        ({"ns_precision": "fast"}, ValueError, "ns_precision='fast'"),
    ],
)
def test_bad_newton_schulz_options(kwargs, error, shown):
    with pytest.raises(error, match=r"adaptive_newton_schulz\(") as info:
        root_optax.adaptive_newton_schulz(**kwargs)
    assert shown in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"ns_normalization": "schatten4"}, {"ns_gram": True, "ns_steps": 4}],
)
def test_cpu_batches_run_one_matrix_at_a_time(rng, monkeypatch, kwargs):
    """On CPU a batch is a loop over its matrices (XLA:CPU's batched products
    are slower): each result is bit-identical to orthogonalizing that matrix
    alone, and within float32 rounding of the batched form accelerators run."""
    x = jnp.asarray(rng.standard_normal((6, 16, 40)), jnp.float32)
    run = jax.jit(lambda x: orthogonalize(x, **kwargs))
    text = run.lower(x).as_text()
    assert "stablehlo.while" in text
    assert re.search(r"dot_general.*tensor<16x40xf32>", text)
    assert not re.search(r"dot_general.*tensor<6x16x40xf32>", text)
    got = run(x)
    for i in range(len(x)):
        np.testing.assert_array_equal(got[i], jax.jit(run)(x[i]))
    monkeypatch.setattr(_newton_schulz, "CPU_ONE_AT_A_TIME", False)
    batched = jax.jit(lambda x: orthogonalize(x, **kwargs))
    assert not re.search(r"dot_general.*tensor<16x40xf32>", batched.lower(x).as_text())
    np.testing.assert_allclose(got, batched(x), atol=2e-6)
