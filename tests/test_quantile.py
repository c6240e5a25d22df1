"""abs_quantile: exact order statistics by bisection, against NumPy's sort."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from root_optax import abs_quantile


@pytest.mark.parametrize("q", [0.0, 0.1, 0.5, 0.9, 0.999, 1.0])
@pytest.mark.parametrize("size", [1, 2, 7, 1000, 4097])
def test_matches_numpy_linear_quantile(rng, q, size):
    x = rng.standard_normal(size).astype(np.float32)
    got = jax.jit(lambda x: abs_quantile(x, q))(x)
    want = np.quantile(np.abs(x).astype(np.float64), q)
    np.testing.assert_allclose(got, want, rtol=2e-7, atol=0)


def test_ties_and_zeros(rng):
    x = np.round(rng.standard_normal((31, 33)) * 2).astype(np.float32)
    for q in (0.0, 0.25, 0.5, 0.9, 1.0):
        assert float(abs_quantile(x, q)) == pytest.approx(np.quantile(np.abs(x), q))
    assert float(abs_quantile(np.zeros((4, 4), np.float32), 0.9)) == 0.0


def test_traced_quantile_equals_static(rng):
    x = rng.standard_normal((64, 48)).astype(np.float32)
    traced = jax.jit(abs_quantile)(x, jnp.float32(0.9))
    np.testing.assert_allclose(traced, abs_quantile(x, 0.9), rtol=1e-6)


def test_float64_and_bfloat16(rng, x64):
    x = rng.standard_normal((50, 40))
    np.testing.assert_allclose(
        abs_quantile(jnp.asarray(x), 0.9), np.quantile(np.abs(x), 0.9), rtol=1e-15
    )
    xb = jnp.asarray(x, jnp.bfloat16)
    want = np.quantile(np.abs(np.asarray(xb, np.float64)), 0.9)
    assert abs_quantile(xb, 0.9).dtype == jnp.bfloat16
    np.testing.assert_allclose(float(abs_quantile(xb, 0.9)), want, rtol=1e-2)


def test_infinities_and_large_values():
    x = np.array([1e30, -np.inf, 3.0, -2.0, 0.5], np.float32)
    assert float(abs_quantile(x, 1.0)) == np.inf
    assert float(abs_quantile(x, 0.5)) == 3.0


def test_selection_compiles_without_sort_while_jnp_quantile_sorts():
    x = jnp.ones((256, 512))
    ours = jax.jit(lambda x: abs_quantile(x, 0.9)).lower(x).as_text(dialect="hlo")
    theirs = jax.jit(lambda x: jnp.quantile(x, 0.9)).lower(x).as_text(dialect="hlo")
    sort_op = re.compile(r"= \S+ sort\(")
    assert sort_op.search(theirs)
    assert not sort_op.search(ours)


def test_rejects_integer_input():
    with pytest.raises(TypeError, match="abs_quantile"):
        abs_quantile(jnp.arange(4), 0.5)


def test_sharded_input_is_reduced_not_gathered(rng):
    devices = jax.devices()
    if len(devices) < 2:
        pytest.skip("needs several (host) devices; conftest asks XLA for 8")
    mesh = jax.sharding.Mesh(np.array(devices), ("d",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d", None))
    x = rng.standard_normal((8 * len(devices), 96)).astype(np.float32)
    xs = jax.device_put(x, sharding)
    fn = jax.jit(lambda x: abs_quantile(x, 0.9))
    hlo = fn.lower(xs).compile().as_text()
    assert "all-gather" not in hlo
    assert "all-reduce" in hlo
    np.testing.assert_allclose(fn(xs), np.quantile(np.abs(x), 0.9), rtol=1e-6)
