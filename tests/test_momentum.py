"""momentum: the reference's undampened form, Nesterov output, buffer dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import root_optax


@pytest.mark.parametrize("nesterov", [True, False])
def test_matches_recurrence(rng, nesterov):
    beta = 0.9
    grads = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(4)]
    tx = root_optax.momentum(beta, nesterov=nesterov)
    state = tx.init(jnp.zeros((3, 4)))
    m = np.zeros((3, 4))
    for g in grads:
        out, state = jax.jit(tx.update)(g, state)
        m = beta * m + g
        want = g + beta * m if nesterov else m
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.mu, m, rtol=1e-5, atol=1e-6)


def test_mu_dtype_and_update_dtype():
    tx = root_optax.momentum(mu_dtype=jnp.bfloat16)
    params = {"a": jnp.zeros((2, 2), jnp.float32), "b": jnp.zeros(3, jnp.bfloat16)}
    state = tx.init(params)
    assert state.mu["a"].dtype == jnp.bfloat16
    out, state = tx.update(jax.tree.map(jnp.ones_like, params), state)
    assert out["a"].dtype == jnp.float32 and out["b"].dtype == jnp.bfloat16
    assert state.mu["a"].dtype == jnp.bfloat16


def test_works_on_any_tree_with_defaults():
    tree = {"w": jnp.ones((2, 3)), "b": jnp.ones(3), "s": jnp.ones(())}
    tx = root_optax.momentum()
    out, _ = tx.update(tree, tx.init(tree))
    assert jax.tree.structure(out) == jax.tree.structure(tree)
