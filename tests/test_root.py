"""root(): routing, Muon reachability, weight decay, name-based AdamW routing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import MuonDimensionNumbers

import root_optax
from tests import reference_numpy as ref


def matrices(rng):
    return {
        "a": jnp.asarray(rng.standard_normal((16, 16)), jnp.float32),
        "b": jnp.asarray(rng.standard_normal((8, 24)), jnp.float32),
        "c": jnp.asarray(rng.standard_normal((24, 8)), jnp.float32),
    }


def run(tx, params, grads):
    state = tx.init(params)
    step = jax.jit(tx.update)
    for g in grads:
        updates, state = step(g, state, params)
        params = optax.apply_updates(params, updates)
    return params


def test_muon_is_reachable(rng):
    """Without clipping, with Muon's coefficients and width factor, ROOT's
    undampened momentum is a per-step multiple of Muon's bias-corrected EMA, so
    the normalized Newton–Schulz input and the whole step agree."""
    params = matrices(rng)
    grads = [
        jax.tree.map(
            lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), params
        )
        for _ in range(4)
    ]
    ours = root_optax.root(
        0.05,
        clip_quantile=None,
        ns_coeffs="muon",
        nesterov=False,
        shape_scale="muon",
        weight_decay=0.0,
        ns_eps=0.0,
    )
    dims = jax.tree.map(lambda _: MuonDimensionNumbers(), params)
    theirs = optax.contrib.muon(
        0.05, nesterov=False, eps=0.0, muon_weight_dimension_numbers=dims
    )
    got, want = run(ours, params, grads), run(theirs, params, grads)
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_weight_decay_uses_plain_learning_rate(rng):
    params = matrices(rng)
    zeros = jax.tree.map(jnp.zeros_like, params)
    tx = root_optax.root(0.1, weight_decay=0.5)
    got = run(tx, params, [zeros])
    # A zero gradient has a zero direction: only the decay W * (1 - lr * wd) acts.
    for k in params:
        np.testing.assert_allclose(got[k], params[k] * (1 - 0.1 * 0.5), rtol=1e-6)


def test_default_routing_and_name_routing(rng):
    params = {
        "embed": jnp.asarray(rng.standard_normal((50, 8)), jnp.float32),
        "w": jnp.asarray(rng.standard_normal((8, 8)), jnp.float32),
        "bias": jnp.zeros(8),
        "stack": jnp.asarray(rng.standard_normal((2, 8, 8)), jnp.float32),
    }
    labels = lambda tx: {
        k: ("root" if not isinstance(v, optax.MaskedNode) else "adamw")
        for k, v in optax.tree.get(tx.init(params), "momentum").mu.items()
    }
    assert labels(root_optax.root(1e-3)) == {
        "embed": "root",
        "w": "root",
        "bias": "adamw",
        "stack": "adamw",
    }
    dims = root_optax.matrix_dimension_numbers(["embed"], stacked="stack")
    assert labels(root_optax.root(1e-3, weight_dimension_numbers=dims)) == {
        "embed": "adamw",
        "w": "root",
        "bias": "adamw",
        "stack": "root",
    }
    # stacked=True: every leaf has a layer axis, so a 2-D leaf is a stack of
    # vectors (a scanned bias).
    dims = root_optax.matrix_dimension_numbers(stacked=True)
    assert labels(root_optax.root(1e-3, weight_dimension_numbers=dims)) == {
        "embed": "adamw",
        "w": "adamw",
        "bias": "adamw",
        "stack": "root",
    }


def test_adam_branch_has_its_own_hyperparameters():
    """AdamW uses adam_eps (not the Newton–Schulz eps), the reference's epsilon
    placement, and no Nesterov unless asked."""
    params = {"v": jnp.ones(4)}
    grads = {"v": jnp.asarray([1.0, -2.0, 3.0, 0.5])}
    ours = root_optax.root(0.1, adam_eps=1e-3, weight_decay=0.0, ns_eps=1.0)
    got = run(ours, params, [grads] * 3)["v"]
    w, m, v = np.ones(4), np.zeros(4), np.zeros(4)
    for t in range(1, 4):
        w, m, v = ref.adamw_update(
            w,
            m,
            v,
            np.asarray(grads["v"]),
            t,
            lr=0.1,
            wd=0.0,
            eps=1e-3,
            form="reference",
        )
    np.testing.assert_allclose(got, w, rtol=1e-6)
    nesterov = run(root_optax.root(0.1, adam_nesterov=True), params, [grads] * 3)
    assert not np.allclose(nesterov["v"], got)


def test_stacked_slices_match_separate_matrices(rng):
    stack = jnp.asarray(rng.standard_normal((3, 8, 12)), jnp.float32)
    grads = [
        jnp.asarray(rng.standard_normal((3, 8, 12)), jnp.float32) for _ in range(3)
    ]
    dims = {"s": MuonDimensionNumbers(1, 2)}
    got = run(
        root_optax.root(0.01, weight_dimension_numbers=dims),
        {"s": stack},
        [{"s": g} for g in grads],
    )["s"]
    for i in range(3):
        one = run(root_optax.root(0.01), {"w": stack[i]}, [{"w": g[i]} for g in grads])[
            "w"
        ]
        np.testing.assert_allclose(got[i], one, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mu_dtype", [None, jnp.bfloat16])
def test_mu_dtype_reaches_both_branches(mu_dtype):
    params = {"w": jnp.ones((4, 4)), "b": jnp.ones(4)}
    inner = root_optax.root(1e-3, mu_dtype=mu_dtype).init(params).inner_state
    root_mu = optax.tree.get(inner, "momentum").mu["w"]
    adam_mu = optax.tree.get(inner, "adam").mu["b"]
    want = jnp.float32 if mu_dtype is None else mu_dtype
    assert root_mu.dtype == want and adam_mu.dtype == want


def test_cpu_clip_of_large_matrices_needs_no_batch_sized_temporaries(monkeypatch):
    """Matrices of >= 2**18 entries are clipped one at a time inside the
    Newton–Schulz loop on CPU: the clip adds no batch-sized temporaries
    (patterns, histogram indices) to the compiled step, and the update equals
    the batched clip's."""
    from root_optax import _root

    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal((8, 512, 512)), jnp.float32)}
    grads = {"w": jnp.asarray(rng.standard_normal((8, 512, 512)), jnp.float32)}
    dims = {"w": MuonDimensionNumbers(-2, -1)}

    def compiled(clip):
        opt = root_optax.root(1e-3, clip_quantile=clip, weight_dimension_numbers=dims)
        step = jax.jit(lambda p, s, g: opt.update(g, s, p)[0])
        state = opt.init(params)
        program = step.lower(params, state, grads).compile()
        return program.memory_analysis().temp_size_in_bytes, program(
            params, state, grads
        )

    no_clip, _ = compiled(None)
    per_matrix, update = compiled(0.9)
    monkeypatch.setattr(_root, "CPU_CLIP_PER_MATRIX_ENTRIES", 2**40)
    batched, batched_update = compiled(0.9)
    batch_bytes = params["w"].nbytes
    assert per_matrix - no_clip < batch_bytes / 8  # at most one matrix's worth
    assert batched - no_clip >= batch_bytes  # what the per-matrix form avoids
    np.testing.assert_allclose(update["w"], batched_update["w"], rtol=1e-6, atol=1e-7)
