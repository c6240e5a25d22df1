"""robust_clip: per-matrix quantile threshold, soft-threshold identity, slices."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import MuonDimensionNumbers

import root_optax


def soft_threshold(u, eps):
    return np.sign(u) * np.maximum(np.abs(u) - eps, 0.0)


def test_clip_is_input_minus_soft_threshold(rng):
    u = rng.standard_cauchy((32, 48)).astype(np.float32)
    tx = root_optax.robust_clip(0.9)
    out, _ = jax.jit(tx.update)(u, tx.init(u))
    eps = np.quantile(np.abs(u.astype(np.float64)), 0.9) + 1e-9
    np.testing.assert_allclose(out, u - soft_threshold(u, eps), rtol=1e-6)
    assert np.mean(np.abs(out) < np.abs(u)) == pytest.approx(0.1, abs=1 / u.size)


def test_each_slice_has_its_own_threshold(rng):
    u = rng.standard_normal((3, 8, 12)).astype(np.float32) * np.array([1, 10, 100])[
        :, None, None
    ].astype(np.float32)
    tx = root_optax.robust_clip(0.5)
    out, _ = tx.update(u, tx.init(u))
    for i in range(3):
        eps = np.quantile(np.abs(u[i]), 0.5) + 1e-9
        np.testing.assert_allclose(out[i], np.clip(u[i], -eps, eps), rtol=1e-6)


def test_dimension_numbers_select_the_matrix(rng):
    u = rng.standard_normal((8, 3, 12)).astype(np.float32)  # layers on axis 1
    dims = MuonDimensionNumbers(reduction_axis=0, output_axis=2)
    tx = root_optax.robust_clip(0.5, weight_dimension_numbers=dims)
    out, _ = tx.update(u, tx.init(u))
    for i in range(3):
        eps = np.quantile(np.abs(u[:, i]), 0.5) + 1e-9
        np.testing.assert_allclose(out[:, i], np.clip(u[:, i], -eps, eps), rtol=1e-6)


def test_fixed_threshold_and_quantile_one(rng):
    u = rng.standard_normal((6, 6)).astype(np.float32)
    out, _ = root_optax.robust_clip(threshold=0.5).update(u, optax.EmptyState())
    np.testing.assert_array_equal(out, np.clip(u, -0.5, 0.5))
    out, _ = root_optax.robust_clip(1.0).update(u, optax.EmptyState())
    np.testing.assert_array_equal(out, u)


def test_standalone_before_adamw(rng):
    params = {"w": jnp.asarray(rng.standard_normal((8, 8)), jnp.float32)}
    tx = optax.chain(root_optax.robust_clip(), optax.adamw(1e-2))
    state = tx.init(params)
    grads = {"w": params["w"].at[0, 0].set(1e6)}
    updates, state = tx.update(grads, state, params)
    assert float(jnp.max(jnp.abs(updates["w"]))) < 0.1


def test_complex_clips_the_magnitude_and_keeps_the_phase(rng):
    """The threshold is the quantile of |u|; clipped entries keep their phase."""
    u = (rng.standard_normal((16, 24)) + 1j * rng.standard_cauchy((16, 24))).astype(
        np.complex64
    )
    tx = root_optax.robust_clip(0.8)
    out, _ = jax.jit(tx.update)(u, tx.init(u))
    assert out.dtype == jnp.complex64
    u64 = u.astype(np.complex128)
    eps = np.quantile(np.abs(u64), 0.8) + 1e-9
    want = u64 - np.sign(u64) * np.maximum(np.abs(u64) - eps, 0.0)
    np.testing.assert_allclose(out, want, rtol=1e-5)
    clipped = np.abs(u64) > eps
    np.testing.assert_allclose(np.abs(out)[clipped], eps, rtol=1e-5)
    np.testing.assert_allclose(np.angle(out), np.angle(u64), atol=1e-5)


def test_zero_size_matrices_pass_through():
    tx = root_optax.robust_clip(0.9)
    tree = {"a": jnp.zeros((0, 5)), "b": jnp.zeros((5, 0)), "c": jnp.zeros((2, 0, 3))}
    out, _ = jax.jit(tx.update)(tree, tx.init(tree))
    assert jax.tree.map(jnp.shape, out) == jax.tree.map(jnp.shape, tree)
