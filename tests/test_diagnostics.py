"""root(diagnostics=True): per-matrix statistics against NumPy, in every placement."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import MuonDimensionNumbers

import root_optax
from root_optax import _diagnostics

DIMS = {"w": MuonDimensionNumbers(), "stack": MuonDimensionNumbers(-2, -1), "b": None}


def problem(seed=0):
    rng = np.random.default_rng(seed)
    params = {
        "w": jnp.asarray(rng.standard_normal((8, 24)), jnp.float32),
        "stack": jnp.asarray(rng.standard_normal((3, 16, 8)), jnp.float32),
        "b": jnp.zeros(24),
    }
    grads = jax.tree.map(
        lambda x: jnp.asarray(rng.standard_t(2, size=x.shape), jnp.float32), params
    )
    return params, grads


def one_step(**kwargs):
    params, grads = problem()
    tx = root_optax.root(
        1e-2, weight_dimension_numbers=DIMS, diagnostics=True, **kwargs
    )
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
    return params, grads, updates, state


def matrices(tree):
    """The matrices in tree order (dict keys sorted), layers of a stack in order."""
    out = []
    for key in sorted(tree):
        if DIMS[key] is None:
            continue
        x = np.asarray(tree[key], np.float64)
        out += list(x) if x.ndim == 3 else [x]
    return out


def test_statistics_equal_numpy():
    params, grads, updates, state = one_step()
    d = root_optax.diagnostics(state, params, DIMS)
    # First step: U = G + 0.95 * G.
    us = [1.95 * g for g in matrices(grads)]
    eps = [np.quantile(np.abs(u), 0.9) + 1e-9 for u in us]
    per = d["per_matrix"]
    assert list(per) == ["['stack']", "['w']"]
    got_eps = np.concatenate(
        [per["['stack']"]["clip_threshold"], per["['w']"]["clip_threshold"]]
    )
    np.testing.assert_allclose(got_eps, eps, rtol=1e-6)
    fractions = [np.mean(np.abs(u) > e) for u, e in zip(us, eps)]
    got = np.concatenate([per[k]["clipped_fraction"] for k in per])
    np.testing.assert_allclose(got, fractions, atol=1e-7)
    rms = [np.sqrt(np.mean(u**2)) for u in matrices(updates)]
    got = np.concatenate([per[k]["update_rms"] for k in per])
    np.testing.assert_allclose(got, rms, rtol=1e-5)
    np.testing.assert_allclose(d["update_rms_max"], max(rms), rtol=1e-5)
    np.testing.assert_allclose(
        d["clipped_fraction_mean"], np.mean(fractions), atol=1e-7
    )


def test_ns_residual_is_the_probe_formula_and_tracks_orthogonality():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 12, 40))
    q = np.linalg.qr(rng.standard_normal((40, 12)))[0].T  # orthonormal rows
    batch = jnp.asarray(np.concatenate([x, q[None]]), jnp.float32)
    got = np.asarray(_diagnostics.ns_residual(batch))
    z = _diagnostics._probe(12)
    want = [np.linalg.norm(m @ (m.T @ z) - z) / np.sqrt(12) for m in np.asarray(batch)]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert got[-1] < 1e-5  # an orthogonal matrix has no residual
    # Its square is unbiased for ||XX^T - I||_F^2 / m over random sign probes.
    m = np.asarray(batch[0])
    exact = np.linalg.norm(m @ m.T - np.eye(12)) ** 2 / 12
    probes = np.random.default_rng(2).choice([-1.0, 1.0], (4000, 12))
    mean = np.mean(np.sum(((m @ m.T - np.eye(12)) @ probes.T) ** 2, 0) / 12)
    assert mean == pytest.approx(exact, rel=0.1)


def test_residual_is_small_after_root_and_larger_with_fewer_steps():
    _, _, _, five = one_step()
    _, _, _, one = one_step(ns_steps=1, ns_coeffs=(1.5, -0.5, 0.0))
    assert float(root_optax.diagnostics(five)["ns_residual_max"]) < 0.6
    assert float(root_optax.diagnostics(one)["ns_residual_mean"]) > float(
        root_optax.diagnostics(five)["ns_residual_mean"]
    )


def test_without_clip_the_threshold_is_inf_and_nothing_is_clipped():
    params, _, _, state = one_step(clip_quantile=None)
    d = root_optax.diagnostics(state, params, DIMS)
    assert np.all(np.isinf(d["per_matrix"]["['w']"]["clip_threshold"]))
    assert float(d["clipped_fraction_mean"]) == 0.0


def test_off_by_default_and_skipped_steps_always_there():
    params, grads = problem()
    tx = root_optax.root(1e-2, weight_dimension_numbers=DIMS)
    bad = dict(grads, w=grads["w"].at[0, 0].set(jnp.nan))
    _, state = tx.update(bad, tx.init(params), params)
    d = root_optax.diagnostics(state)
    assert set(d) == {"skipped_steps", "last_step_applied"}
    assert int(d["skipped_steps"]) == 1 and not bool(d["last_step_applied"])


def test_skipped_step_keeps_the_last_statistics():
    params, grads, _, state = one_step()
    tx = root_optax.root(1e-2, weight_dimension_numbers=DIMS, diagnostics=True)
    bad = dict(grads, w=grads["w"].at[0, 0].set(jnp.inf))
    _, after = tx.update(bad, state, params)
    before = root_optax.diagnostics(state)
    d = root_optax.diagnostics(after)
    assert int(d["skipped_steps"]) == 1
    np.testing.assert_array_equal(d["ns_residual_max"], before["ns_residual_max"])


@pytest.mark.parametrize("axis_type", ["explicit", "auto"])
def test_distributed_mode_gives_the_same_statistics(axis_type):
    types = {
        "explicit": jax.sharding.AxisType.Explicit,
        "auto": jax.sharding.AxisType.Auto,
    }
    mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(types[axis_type],))
    _, _, _, want = one_step()
    params, grads = problem()
    tx = root_optax.root(
        1e-2, weight_dimension_numbers=DIMS, diagnostics=True, distributed=mesh
    )
    with jax.set_mesh(mesh):
        _, got = jax.jit(tx.update)(grads, tx.init(params), params)
    for a, b in zip(
        jax.tree.leaves(optax.tree.get(got, "MatrixStats")),
        jax.tree.leaves(optax.tree.get(want, "MatrixStats")),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_state_structure_does_not_depend_on_the_params_for_map_params():
    """Statistics are (N,) vectors, not params-shaped trees: the sharding recipe
    (optax.tree.map_params) leaves them to transform_non_params."""
    params, _ = problem()
    tx = root_optax.root(1e-2, weight_dimension_numbers=DIMS, diagnostics=True)
    state = tx.init(params)
    specs = optax.tree.map_params(
        tx,
        lambda x, s: x if isinstance(x, optax.MaskedNode) else s,
        state,
        jax.tree.map(lambda _: "param-spec", params),
        transform_non_params=lambda _: "replicated",
        is_leaf=lambda x: isinstance(x, optax.MaskedNode),
    )
    assert jax.tree.leaves(optax.tree.get(specs, "MatrixStats")) == ["replicated"] * 3
    assert optax.tree.get(specs, "momentum").mu["w"] == "param-spec"


def test_diagnostics_inside_jit_for_logging():
    params, grads = problem()
    tx = root_optax.root(1e-2, weight_dimension_numbers=DIMS, diagnostics=True)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(grads, state, params)
        return (
            optax.apply_updates(params, updates),
            state,
            root_optax.diagnostics(state),
        )

    _, _, metrics = step(params, tx.init(params))
    assert {
        "clip_threshold_mean",
        "ns_residual_max",
        "update_rms_mean",
        "skipped_steps",
    } <= set(metrics)
    assert all(np.isfinite(float(v)) for v in metrics.values())
