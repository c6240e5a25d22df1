"""root(ns_coeffs="reference") reproduces a literal float64 NumPy rendering of ROOT."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import MuonDimensionNumbers

import root_optax
from tests import reference_numpy as ref

STEPS = 3
SMALL = {
    "square": (64, 64),
    "wide": (32, 96),
    "tall": (96, 32),
    "bias": (32,),
    "stack": (3, 16, 24),
}
# One of the authors' table shapes, the cheapest: its square entry is the one
# that amplifies singular values, so reproducing it exactly matters.
WITH_TABLE_SHAPE = {**SMALL, "table": (2048, 2048)}
DIMS = {
    "square": MuonDimensionNumbers(),
    "wide": MuonDimensionNumbers(),
    "tall": MuonDimensionNumbers(),
    "table": MuonDimensionNumbers(),
    "bias": None,
    "stack": MuonDimensionNumbers(1, 2),
}


def problem(shapes, seed=0):
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s) * 0.1 for k, s in shapes.items()}
    # Heavy-tailed gradients: the 0.9-quantile clip has real outliers to cut.
    grads = [
        {k: rng.standard_t(2, size=s) for k, s in shapes.items()} for _ in range(STEPS)
    ]
    return params, grads


def run_root(params, grads, dtype, **kwargs):
    dims = {k: DIMS[k] for k in params}
    tx = root_optax.root(weight_dimension_numbers=dims, **kwargs)
    params = {k: jnp.asarray(v, dtype) for k, v in params.items()}
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    history = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reference's fallback warning
        for g in grads:
            params, state = step(
                params, state, {k: jnp.asarray(v, dtype) for k, v in g.items()}
            )
            history.append({k: np.asarray(v, np.float64) for k, v in params.items()})
    return history


def reference(params, grads, **kwargs):
    return ref.reference_root(
        params, grads, stacked_keys=("stack",), adam_form="reference", **kwargs
    )


def assert_close(got, want, rtol):
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        for k in w:
            err = np.linalg.norm(g[k] - w[k]) / np.linalg.norm(w[k])
            assert err < rtol, f"step {step + 1}, {k}: relative error {err:.2e}"


@functools.cache
def table_problem():
    params, grads = problem(WITH_TABLE_SHAPE)
    return params, grads, reference(params, grads, lr=1e-3)


def test_float64_equals_reference_on_mixed_tree_with_table_shape(x64):
    params, grads, want = table_problem()
    got = run_root(
        params, grads, jnp.float64, learning_rate=1e-3, ns_coeffs="reference"
    )
    assert_close(got, want, 1e-8)


def test_float32_within_1e3_of_float64_reference():
    params, grads, want = table_problem()
    got = run_root(
        params, grads, jnp.float32, learning_rate=1e-3, ns_coeffs="reference"
    )
    assert_close(got, want, 1e-3)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        # The paper's plain form: no clip, no Nesterov, no shape factor.
        (
            {"clip_quantile": None, "nesterov": False, "shape_scale": None},
            {"clip_quantile": None, "nesterov": False, "shape_scale": None},
        ),
        # Muon's coefficients and width factor.
        (
            {"ns_coeffs": "muon", "clip_quantile": None, "shape_scale": "muon"},
            {"coeffs": "muon", "clip_quantile": None, "shape_scale": "muon"},
        ),
        (
            {"clip_threshold": 0.5, "ns_steps": 4},
            {"clip_threshold": 0.5, "ns_steps": 4},
        ),
        (
            {
                "beta": 0.8,
                "weight_decay": 0.0,
                "adam_b1": 0.8,
                "adam_learning_rate": 3e-3,
            },
            {"beta": 0.8, "wd": 0.0, "adam_b1": 0.8, "adam_lr": 3e-3},
        ),
    ],
)
def test_options_reach_reference_variants(x64, ours, theirs):
    params, grads = problem(SMALL, seed=1)
    ours = {"ns_coeffs": "reference", **ours}
    theirs = {"coeffs": "reference", **theirs}
    got = run_root(params, grads, jnp.float64, learning_rate=2e-2, **ours)
    assert_close(got, reference(params, grads, lr=2e-2, **theirs), 1e-8)


def test_complex128_equals_the_complex_reference(x64):
    """ROOT on complex parameters: X X^H in Newton–Schulz, |u| in the threshold
    and the clip, |g|^2 in AdamW's second moment."""
    rng = np.random.default_rng(2)
    shapes = {k: SMALL[k] for k in ("wide", "tall", "bias", "stack")}
    cplx = lambda s: rng.standard_normal(s) + 1j * rng.standard_t(2, size=s)
    params = {k: 0.1 * cplx(s) for k, s in shapes.items()}
    grads = [{k: cplx(s) for k, s in shapes.items()} for _ in range(STEPS)]
    dims = {k: DIMS[k] for k in params}
    tx = root_optax.root(2e-2, ns_coeffs="muon", weight_dimension_numbers=dims)
    state = tx.init({k: jnp.asarray(v) for k, v in params.items()})
    got, current = [], {k: jnp.asarray(v) for k, v in params.items()}
    step = jax.jit(tx.update)
    for g in grads:
        updates, state = step({k: jnp.asarray(v) for k, v in g.items()}, state, current)
        current = optax.apply_updates(current, updates)
        assert all(v.dtype == jnp.complex128 for v in current.values())
        got.append({k: np.asarray(v) for k, v in current.items()})
    want = ref.reference_root(
        params,
        grads,
        lr=2e-2,
        coeffs="muon",
        stacked_keys=("stack",),
        adam_form="reference",
    )
    assert_close(got, want, 1e-8)
