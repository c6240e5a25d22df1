"""The shared interoperability suite: every public transform and root() with Optax."""

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import MuonDimensionNumbers

import root_optax

# The trees hold a rank-3 stack, which root()'s default routing sends to AdamW
# with a warning (tested in test_routing.py); here that is intended.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:root\(\). \d+ parameter\(s\) of rank >= 3:UserWarning"
)

# ---------------------------------------------------------------------------
# The cases: every public transform and root(), with small fixed hyperparameters.
# ---------------------------------------------------------------------------


class Case(NamedTuple):
    """One transformation under test.

    Attributes:
      name: the test id.
      factory: the public factory.
      kwargs: its arguments here (``make`` builds ``factory(**kwargs)``).
      matrix_only: every leaf must have rank >= 2 (the matrix building blocks).
      descent: ``(schedule, weight_dimension_numbers) -> transformation`` whose
        updates are descent steps (building blocks get a learning rate chained
        on), for the convergence tests.
      peak_lr: the peak of the cosine learning-rate schedule for ``descent``.
    """

    name: str
    factory: Callable[..., optax.GradientTransformation]
    kwargs: dict[str, Any]
    matrix_only: bool
    descent: Callable[[optax.Schedule, Any], optax.GradientTransformation]
    peak_lr: float


def make(case: Case, **overrides: Any) -> optax.GradientTransformation:
    """The case's transformation, with some arguments overridden."""
    return case.factory(**{**case.kwargs, **overrides})


CASES = (
    Case(
        "momentum",
        root_optax.momentum,
        {"beta": 0.9},
        False,
        lambda lr, dims: optax.chain(
            root_optax.momentum(0.9), optax.scale_by_learning_rate(lr)
        ),
        1e-3,
    ),
    # Clipping to a matrix's own quantile shrinks the largest entries' steps
    # with the rest, so clipped SGD stalls on them; Adam (the docstring's use)
    # rescales and converges.
    Case(
        "robust_clip",
        root_optax.robust_clip,
        {"quantile": 0.8},
        True,
        lambda lr, dims: optax.chain(
            root_optax.robust_clip(0.8, weight_dimension_numbers=dims),
            optax.adam(lr),
        ),
        0.1,
    ),
    Case(
        "adaptive_newton_schulz",
        root_optax.adaptive_newton_schulz,
        {"ns_steps": 5},  # an int loop count: static under inject_hyperparams
        True,
        lambda lr, dims: optax.chain(
            root_optax.adaptive_newton_schulz(weight_dimension_numbers=dims),
            optax.scale_by_learning_rate(lr),
        ),
        0.05,
    ),
    Case(
        "scale_by_lr",
        root_optax.scale_by_lr,
        {"learning_rate": 0.1},
        True,
        lambda lr, dims: root_optax.scale_by_lr(lr, weight_dimension_numbers=dims),
        0.01,
    ),
    Case(
        "scale_by_root",
        root_optax.scale_by_root,
        {"beta": 0.9},
        True,
        lambda lr, dims: optax.chain(
            root_optax.scale_by_root(0.9, weight_dimension_numbers=dims),
            optax.scale_by_learning_rate(lr),
        ),
        0.03,
    ),
    Case(
        "skip_nonfinite",
        root_optax.skip_nonfinite,
        {"inner": optax.sgd(0.1, momentum=0.9)},
        False,
        lambda lr, dims: root_optax.skip_nonfinite(optax.sgd(lr, momentum=0.9)),
        3e-3,
    ),
    Case(
        "root",
        root_optax.root,
        {"learning_rate": 0.05, "beta": 0.9, "clip_quantile": 0.8},
        False,
        lambda lr, dims: root_optax.root(
            lr, weight_decay=0.0, weight_dimension_numbers=dims
        ),
        0.1,
    ),
)
# root() without the skip_nonfinite wrapper returns through another path
# (optax.with_extra_args_support); it runs the checks on the returned object
# and its state, not the math, which is root's.
ROOT_NO_SKIP = Case(
    "root_no_skip",
    root_optax.root,
    {"learning_rate": 0.05, "skip_nonfinite": False},
    False,
    lambda lr, dims: root_optax.root(
        lr, weight_decay=0.0, skip_nonfinite=False, weight_dimension_numbers=dims
    ),
    0.1,
)
CASE = {case.name: case for case in (*CASES, ROOT_NO_SKIP)}

each_case = pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
each_case_and_variant = pytest.mark.parametrize(
    "case", (*CASES, ROOT_NO_SKIP), ids=lambda case: case.name
)
each_dtype = pytest.mark.parametrize(
    "dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"]
)

# ---------------------------------------------------------------------------
# Trees, runs and comparisons.
# ---------------------------------------------------------------------------

# A wide matrix and a stack of 2 tall ones (a scan-over-layers leaf); the
# building blocks see both as matrices over their last two axes.
MATRIX_SHAPES = {"a": (4, 6), "stack": (2, 5, 3)}
# root() and the tree-agnostic transforms also get a vector and a scalar
# (root's default routing sends them, and the rank-3 stack, to AdamW).
OTHER_SHAPES = {"bias": (3,), "scale": ()}
NUM_STEPS = 3


def normal(seed: int, shape: tuple[int, ...], dtype=jnp.float32, scale=1.0):
    """Standard normal entries from a fixed seed."""
    values = np.random.default_rng(seed).standard_normal(shape) * scale
    return jnp.asarray(values, dtype)


def tree_for(case: Case, seed: int = 0, dtype=jnp.float32) -> dict[str, jax.Array]:
    """A params-like tree the case accepts, with fixed random entries."""
    shapes = MATRIX_SHAPES if case.matrix_only else {**MATRIX_SHAPES, **OTHER_SHAPES}
    return {
        key: normal(seed * 100 + i, shape, dtype)
        for i, (key, shape) in enumerate(shapes.items())
    }


def grads_for(case: Case, dtype=jnp.float32) -> list[dict[str, jax.Array]]:
    return [tree_for(case, seed=10 + i, dtype=dtype) for i in range(NUM_STEPS)]


def run(tx, params, grads_seq, update=None, **extra_args):
    """Train along ``grads_seq`` with the jitted ``update``: updates and states."""
    if update is None:
        update = jax.jit(functools.partial(tx.update, **extra_args))
    state = tx.init(params)
    all_updates, all_states = [], []
    for grads in grads_seq:
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        all_updates.append(updates)
        all_states.append(state)
    return all_updates, all_states


@functools.cache
def plain(name: str):
    """The case's transformation and its jitted update, built once per process."""
    tx = make(CASE[name])
    return tx, jax.jit(tx.update)


@functools.cache
def reference(name: str):
    """The plain transformation's updates and states along ``grads_for``."""
    case = CASE[name]
    tx, update = plain(name)
    return run(tx, tree_for(case), grads_for(case), update)


def static_args(case: Case) -> tuple[str, ...]:
    """Loop counts given as ints, which ``inject_hyperparams`` must keep static
    (the defaults are ``None``, which it leaves alone)."""
    return tuple(name for name in ("ns_steps",) if name in case.kwargs)


def inject(case: Case) -> optax.GradientTransformationExtraArgs:
    factory = optax.inject_hyperparams(case.factory, static_args=static_args(case))
    return factory(**case.kwargs)


@functools.cache
def injected(name: str):
    tx = inject(CASE[name])
    return tx, jax.jit(tx.update)


def as_float64(x: Any) -> Any:
    return np.asarray(x, np.float64)


def assert_trees_close(actual, desired, rtol=1e-6, atol=1e-6):
    """Same structure, shapes and dtypes, and allclose leaves."""
    assert jax.tree.structure(actual) == jax.tree.structure(desired)
    for got, want in zip(jax.tree.leaves(actual), jax.tree.leaves(desired)):
        assert jnp.shape(got) == jnp.shape(want)
        assert jnp.result_type(got) == jnp.result_type(want)
        np.testing.assert_allclose(
            as_float64(got), as_float64(want), rtol=rtol, atol=atol
        )


def assert_trees_equal(actual, desired):
    assert_trees_close(actual, desired, rtol=0, atol=0)


def leaf_types(tree: Any) -> Any:
    """(shape, dtype, weak_type) of every leaf (arrays or ``jax.eval_shape``'s)."""
    return jax.tree.map(lambda x: (x.shape, x.dtype, x.weak_type), tree)


def subtree(tree: dict[str, Any], keys) -> dict[str, Any]:
    return {k: v for k, v in tree.items() if k in keys}


# ---------------------------------------------------------------------------
# 1. Unexpected extra arguments.
# ---------------------------------------------------------------------------


@each_case_and_variant
def test_tolerates_unexpected_extra_args(case):
    tx = make(case)
    if case.factory is root_optax.root:
        # root() itself takes extra arguments (e.g. a loss value) and ignores them.
        assert isinstance(tx, optax.GradientTransformationExtraArgs)
    else:
        tx = optax.with_extra_args_support(tx)
    got, got_states = run(tx, tree_for(case), grads_for(case), unexpected_extra_arg=1)
    want, want_states = reference(case.name)
    assert_trees_equal(got, want)
    assert_trees_equal(got_states, want_states)


# ---------------------------------------------------------------------------
# 2. No recompilation.
# ---------------------------------------------------------------------------


@each_case
def test_does_not_recompile_on_second_call(case):
    tx = make(case)
    params, target = tree_for(case), tree_for(case, seed=1)
    loss = lambda p: sum(jnp.sum((p[k] - target[k]) ** 2) for k in p)
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(None)
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(3):
        params, state = step(params, state)
    assert len(traces) == 1
    assert step._cache_size() == 1


# ---------------------------------------------------------------------------
# 3. Convergence with the whole training loop inside lax.scan under jit.
# ---------------------------------------------------------------------------


def parabola():
    target = normal(1, (4, 6))
    loss = lambda p: jnp.sum((p["w"] - target) ** 2)
    return {"w": jnp.zeros((4, 6))}, loss, None


def rosenbrock_terms(x, y, a=1.0, b=100.0):
    return (a - x) ** 2 + b * (y - x**2) ** 2


def rosenbrock():
    """The classic two-variable Rosenbrock from (0, 0), as two scalar leaves."""
    loss = lambda p: rosenbrock_terms(p["x"], p["y"])
    return {"x": jnp.zeros(()), "y": jnp.zeros(())}, loss, None


def matrix_rosenbrock():
    """Rosenbrock summed over the entries of two 3x4 matrices."""
    loss = lambda p: jnp.sum(rosenbrock_terms(p["x"], p["y"]))
    params = {"x": normal(2, (3, 4), scale=0.1), "y": normal(3, (3, 4), scale=0.1)}
    return params, loss, None


def least_squares():
    """||A W - B||^2 with A of singular values in [1, 2]."""
    rng = np.random.default_rng(4)
    u, _ = np.linalg.qr(rng.standard_normal((8, 6)))
    v, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    a = jnp.asarray(u @ np.diag(np.linspace(1.0, 2.0, 6)) @ v.T, jnp.float32)
    b = a @ normal(5, (6, 4))
    loss = lambda p: jnp.sum((a @ p["w"] - b) ** 2)
    return {"w": jnp.zeros((6, 4))}, loss, None


def mixed_tree():
    """A matrix, a bias and a stacked (layers, m, n) leaf pulled to targets."""
    shapes = {"w": (6, 4), "b": (4,), "stack": (2, 4, 4)}
    targets = {k: normal(10 + i, s) for i, (k, s) in enumerate(shapes.items())}
    dims = {
        "w": MuonDimensionNumbers(),
        "b": None,
        "stack": MuonDimensionNumbers(reduction_axis=-2, output_axis=-1),
    }
    loss = lambda p: sum(jnp.sum((p[k] - targets[k]) ** 2) for k in p)
    return {k: jnp.zeros(s) for k, s in shapes.items()}, loss, dims


# Each problem and its number of steps.
PROBLEMS = {
    "parabola": (parabola, 1000),
    "rosenbrock": (rosenbrock, 3000),
    "matrix_rosenbrock": (matrix_rosenbrock, 3000),
    "least_squares": (least_squares, 1000),
    "mixed_tree": (mixed_tree, 1000),
}
CONVERGENCE_GRID = [
    pytest.param(case, problem, id=f"{case.name}-{problem}")
    for case in CASES
    for problem in PROBLEMS
    # The scalar Rosenbrock is for root(), whose AdamW branch takes scalars.
    if problem != "rosenbrock" or case.name == "root"
]


@pytest.mark.parametrize("case, problem", CONVERGENCE_GRID)
def test_converges_inside_scan(case, problem):
    setup, steps = PROBLEMS[problem]
    params, loss, dims = setup()
    # Orthogonalized steps have a fixed size, so the step must decay to converge.
    tx = case.descent(optax.cosine_decay_schedule(case.peak_lr, steps), dims)

    @jax.jit
    def train(params):
        def step(carry, _):
            params, state = carry
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), length=steps)
        return params

    initial, final = float(loss(params)), float(loss(train(params)))
    assert np.isfinite(final)
    assert final < 1e-2 * initial, f"loss {initial:.3g} -> {final:.3g}"


# ---------------------------------------------------------------------------
# 4. optax.inject_hyperparams.
# ---------------------------------------------------------------------------


@each_case
def test_inject_hyperparams_matches_plain(case):
    want, want_states = reference(case.name)
    tx, update = injected(case.name)
    got, got_states = run(tx, tree_for(case), grads_for(case), update)
    assert_trees_close(got, want)
    assert_trees_close([s.inner_state for s in got_states], want_states)
    for name, value in case.kwargs.items():
        if isinstance(value, float):
            np.testing.assert_allclose(got_states[-1].hyperparams[name], value)


def test_inject_hyperparams_with_callable_dimension_numbers():
    """inject_hyperparams takes every callable for a schedule, so a callable
    weight_dimension_numbers must be static; then it routes as without inject."""
    case = CASE["root"]
    params = tree_for(case)
    dims = root_optax.matrix_dimension_numbers(stacked=True)
    factory = optax.inject_hyperparams(
        root_optax.root, static_args=("weight_dimension_numbers",)
    )
    state = factory(**case.kwargs, weight_dimension_numbers=dims).init(params)
    assert "weight_dimension_numbers" not in state.hyperparams
    want = make(case, weight_dimension_numbers=dims).init(params)
    assert jax.tree.structure(state.inner_state) == jax.tree.structure(want)
    # The stacked leaf is in the matrix branch (it has a ROOT momentum buffer).
    [(_, momentum)] = optax.tree.get_all_with_path(state, "MomentumState")
    assert not isinstance(momentum.mu["stack"], optax.MaskedNode)


@pytest.mark.parametrize(
    "name, hyperparam, value",
    [
        ("root", "learning_rate", 0.02),
        ("root", "beta", 0.5),
        ("root", "clip_quantile", 0.5),
        ("momentum", "beta", 0.5),
        ("robust_clip", "quantile", 0.5),
        ("scale_by_lr", "learning_rate", 0.02),
        ("scale_by_root", "beta", 0.5),
    ],
)
def test_changed_injected_hyperparam_takes_effect(name, hyperparam, value):
    case = CASE[name]
    params, (g1, g2, _) = tree_for(case), grads_for(case)
    tx, update = injected(name)
    u1, state = update(g1, tx.init(params), params)
    params = optax.apply_updates(params, u1)
    unchanged, _ = update(g2, state, params)

    # Same dtype as the value it replaces, so the jitted update is reused.
    state.hyperparams[hyperparam] = jnp.asarray(value, jnp.float32)
    got, got_state = update(g2, state, params)

    # The plain transformation with the old value for step 1, the new for step 2.
    plain_state = reference(name)[1][0]
    changed = make(case, **{hyperparam: value})
    want, want_state = jax.jit(changed.update)(g2, plain_state, params)
    # Traced hyperparameters round differently in the last bit (e.g. the
    # quantile's position), which Newton–Schulz may amplify a little.
    assert_trees_close(got, want, rtol=1e-5)
    assert_trees_close(got_state.inner_state, want_state, rtol=1e-5)
    np.testing.assert_allclose(got_state.hyperparams[hyperparam], value)
    differs = [
        not np.allclose(a, b) for a, b in zip(*map(jax.tree.leaves, (got, unchanged)))
    ]
    assert any(differs), f"setting {hyperparam}={value} changed no update"


# ---------------------------------------------------------------------------
# 5. Update dtypes, and mu_dtype.
# ---------------------------------------------------------------------------


def assert_updates_have_dtype(updates_seq, dtype):
    for updates in updates_seq:
        for path, leaf in jax.tree_util.tree_leaves_with_path(updates):
            where = jax.tree_util.keystr(path)
            assert leaf.dtype == dtype, f"{where}: {leaf.dtype} != {dtype}"
            assert bool(jnp.all(jnp.isfinite(leaf))), where


@each_case
@each_dtype
def test_updates_keep_gradient_dtype(case, dtype):
    if dtype == jnp.float32:
        updates_seq, _ = reference(case.name)
    else:
        params = tree_for(case, dtype=dtype)
        updates_seq, _ = run(make(case), params, grads_for(case, dtype))
    assert_updates_have_dtype(updates_seq, dtype)


# skip_nonfinite returns whatever its inner transformation (here optax.sgd)
# returns, so it is left out.
MIXED_PRECISION = [
    *(pytest.param(c, {}, id=c.name) for c in CASES if c.name != "skip_nonfinite"),
    pytest.param(CASE["scale_by_lr"], {"weight_decay": 0.1}, id="scale_by_lr-decay"),
    pytest.param(CASE["root"], {"weight_decay": 0.0}, id="root-no-decay"),
]


def abstract_run(tx, params, grads_seq):
    """Like :func:`run` but with ``jax.eval_shape``: only shapes and dtypes."""
    state = jax.eval_shape(tx.init, params)
    all_updates, all_states = [], []
    for grads in grads_seq:
        updates, state = jax.eval_shape(tx.update, grads, state, params)
        all_updates.append(updates)
        all_states.append(state)
    return all_updates, all_states


@pytest.mark.parametrize("case, overrides", MIXED_PRECISION)
def test_mixed_precision_updates_keep_gradient_dtype(case, overrides):
    """float32 master params with bfloat16 gradients: bfloat16 updates, whatever
    the weight decay (which must not promote them to the params' dtype)."""
    tx = make(case, **overrides)
    params = tree_for(case)
    updates_seq, states = abstract_run(tx, params, grads_for(case, jnp.bfloat16))
    for updates in updates_seq:
        for path, leaf in jax.tree_util.tree_leaves_with_path(updates):
            where = jax.tree_util.keystr(path)
            assert leaf.dtype == jnp.bfloat16, f"{where}: {leaf.dtype} != bfloat16"
    assert leaf_types(states[-1]) == leaf_types(jax.eval_shape(tx.init, params))


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if "mu_dtype" in inspect.signature(c.factory).parameters],
    ids=lambda case: case.name,
)
def test_mu_dtype_is_honoured(case):
    params = tree_for(case, dtype=jnp.bfloat16)
    tx = make(case, mu_dtype=jnp.float32)
    updates_seq, states = abstract_run(tx, params, grads_for(case, jnp.bfloat16))
    for leaf in jax.tree.leaves(updates_seq):
        assert leaf.dtype == jnp.bfloat16
    buffers = optax.tree.get_all_with_path(states[-1], "mu")
    assert buffers
    for _, mu in buffers:
        for leaf in jax.tree.leaves(mu):
            assert leaf.dtype == jnp.float32
    assert leaf_types(states[-1]) == leaf_types(jax.eval_shape(tx.init, params))


# ---------------------------------------------------------------------------
# 6. Gradient accumulation with optax.MultiSteps.
# ---------------------------------------------------------------------------


@each_case
def test_multisteps_equals_step_on_mean_gradient(case):
    k = 3
    tx, ref_update = plain(case.name)
    accumulated = optax.MultiSteps(tx, every_k_schedule=k)
    acc_update = jax.jit(accumulated.update)
    params = ref_params = tree_for(case)
    acc_state, ref_state = accumulated.init(params), tx.init(params)
    for step in range(2):
        micro = [tree_for(case, seed=50 + k * step + i) for i in range(k)]
        for i, grads in enumerate(micro):
            updates, acc_state = acc_update(grads, acc_state, params)
            params = optax.apply_updates(params, updates)
            if i < k - 1:
                for leaf in jax.tree.leaves(updates):
                    assert not np.any(np.asarray(leaf))
        mean = jax.tree.map(lambda *g: sum(g) / k, *micro)
        want, ref_state = ref_update(mean, ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, want)
        assert_trees_close(updates, want, rtol=1e-5, atol=1e-6)
    assert_trees_close(params, ref_params, rtol=1e-5, atol=1e-6)
    assert_trees_close(acc_state.inner_opt_state, ref_state, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# 7. State types are stable (lax.cond accepts update vs. no update).
# ---------------------------------------------------------------------------


@each_case_and_variant
@each_dtype
def test_state_is_stable_across_cond(case, dtype):
    tx = make(case)
    params = tree_for(case, dtype=dtype)
    grads = tree_for(case, seed=10, dtype=dtype)
    new_state = lambda s: tx.update(grads, s, params)[1]
    maybe_update = lambda pred, s: jax.lax.cond(pred, new_state, lambda s: s, s)

    state = jax.eval_shape(tx.init, params)
    after_update = jax.eval_shape(new_state, state)
    assert jax.tree.structure(after_update) == jax.tree.structure(state)
    assert leaf_types(after_update) == leaf_types(state)
    # Tracing lax.cond checks that both branches return the same types.
    after_cond = jax.eval_shape(maybe_update, True, state)
    assert leaf_types(after_cond) == leaf_types(state)


# ---------------------------------------------------------------------------
# 8. A constant schedule is the float learning rate.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["scale_by_lr", "root"])
def test_constant_schedule_equals_float_learning_rate(name):
    case = CASE[name]
    want, _ = reference(name)
    lr = case.kwargs["learning_rate"]
    scheduled = make(case, learning_rate=optax.constant_schedule(lr))
    got, _ = run(scheduled, tree_for(case), grads_for(case))
    assert_trees_close(got, want, rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------
# 9. optax.tree.map_params on the state.
# ---------------------------------------------------------------------------


@each_case
def test_map_params_maps_only_params_like_leaves(case):
    tx, _ = plain(case.name)
    state = reference(case.name)[1][0]

    zeroed = optax.tree.map_params(tx, lambda x: x * 0, state)
    assert jax.tree.structure(zeroed) == jax.tree.structure(state)
    assert leaf_types(zeroed) == leaf_types(state)

    filled = optax.tree.map_params(tx, lambda x: jnp.full_like(x, 7), state)
    assert jax.tree.structure(filled) == jax.tree.structure(state)
    for old, new in zip(jax.tree.leaves(state), jax.tree.leaves(filled)):
        if jnp.issubdtype(old.dtype, jnp.floating):
            # All float state here mirrors the params (momenta, traces, moments).
            np.testing.assert_array_equal(new, np.full(old.shape, 7, old.dtype))
        else:
            # Counters and flags are not params: left alone.
            np.testing.assert_array_equal(new, old)

    # The sharding-spec recipe: params-like subtrees become the params' specs
    # (MaskedNode where a partition or mask left a leaf out), the rest None.
    specs = {k: f"spec-{k}" for k in tree_for(case)}
    is_masked_node = lambda x: isinstance(x, optax.MaskedNode)
    spec_state = optax.tree.map_params(
        tx,
        lambda x, spec: x if is_masked_node(x) else spec,
        state,
        specs,
        transform_non_params=lambda _: None,
        is_leaf=is_masked_node,
    )
    got = {
        jax.tree_util.keystr(path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(spec_state)
    }
    want = {
        jax.tree_util.keystr(path): f"spec-{path[-1].key}"
        for path, leaf in jax.tree_util.tree_leaves_with_path(state)
        if jnp.issubdtype(leaf.dtype, jnp.floating)
    }
    assert got == want


@pytest.mark.parametrize(
    "dims",
    [
        {"w": MuonDimensionNumbers(-2, -1), "b": None},
        MuonDimensionNumbers(-2, -1),
        root_optax.matrix_dimension_numbers(stacked="w"),
    ],
    ids=["dict", "one_spec", "rule"],
)
def test_map_params_works_with_every_form_of_dimension_numbers(dims):
    """map_params initialises with a leafless placeholder: a dict of dimension
    numbers must not be checked against it (it was: "not a tree prefix")."""
    params = {"w": jnp.ones((2, 4, 8)), "b": jnp.ones(8)}
    if isinstance(dims, MuonDimensionNumbers):
        params = {"w": params["w"]}
    tx = root_optax.root(1e-3, weight_dimension_numbers=dims)
    state = tx.init(params)
    specs = jax.tree.map(lambda x: f"spec{x.ndim}", params)
    is_masked_node = lambda x: isinstance(x, optax.MaskedNode)
    spec_state = optax.tree.map_params(
        tx,
        lambda x, spec: x if is_masked_node(x) else spec,
        state,
        specs,
        transform_non_params=lambda _: None,
        is_leaf=is_masked_node,
    )
    assert optax.tree.get(spec_state, "momentum").mu["w"] == "spec3"


# ---------------------------------------------------------------------------
# 10. Composition: chain, masked, partition.
# ---------------------------------------------------------------------------


@each_case
def test_composes_with_chain(case):
    params, grads = tree_for(case), grads_for(case)
    chained = optax.chain(optax.clip_by_global_norm(1.0), make(case))
    got, _ = run(chained, params, grads)
    scales = [jnp.minimum(1.0, 1.0 / optax.tree.norm(g)) for g in grads]
    clipped = [optax.tree.scale(c, g) for c, g in zip(scales, grads)]
    tx, update = plain(case.name)
    want, _ = run(tx, params, clipped, update)
    assert_trees_close(got, want, rtol=1e-5, atol=1e-6)


@each_case
def test_composes_with_masked(case):
    params, grads = tree_for(case), grads_for(case)
    frozen = "stack"
    masked = optax.masked(make(case), {k: k != frozen for k in params})
    got, states = run(masked, params, grads)
    # Every transform here acts leaf by leaf, so the others match the plain run.
    want, _ = reference(case.name)
    others = set(params) - {frozen}
    for got_step, want_step, g in zip(got, want, grads):
        np.testing.assert_array_equal(got_step[frozen], g[frozen])
        assert_trees_close(subtree(got_step, others), subtree(want_step, others))
    # Wherever the state mirrors the params, the masked leaf is a MaskedNode.
    is_masked_node = lambda x: isinstance(x, optax.MaskedNode)
    leaves = jax.tree_util.tree_leaves_with_path(states[-1], is_leaf=is_masked_node)
    at_frozen = [leaf for path, leaf in leaves if jax.tree_util.DictKey(frozen) in path]
    assert all(is_masked_node(leaf) for leaf in at_frozen)
    if jax.tree.leaves(reference(case.name)[1][-1]):
        assert at_frozen, "a stateful transform kept no MaskedNode for the leaf"


@each_case
def test_composes_with_partition(case):
    params, grads = tree_for(case), grads_for(case)
    labels = {k: "sgd" if k == "a" else "ours" for k in params}
    partitioned = optax.partition({"ours": make(case), "sgd": optax.sgd(0.1)}, labels)
    got, states = run(partitioned, params, grads)
    want, _ = reference(case.name)
    ours = {k for k in params if labels[k] == "ours"}
    for got_step, want_step, g in zip(got, want, grads):
        np.testing.assert_allclose(got_step["a"], -0.1 * g["a"], rtol=1e-6)
        assert_trees_close(subtree(got_step, ours), subtree(want_step, ours))
    assert set(states[-1].inner_states) == {"ours", "sgd"}


# ---------------------------------------------------------------------------
# 11. Inputs from optax's own suites (contrib common tests, muon tests) and a
#     sweep of edge cases: each of these once failed.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [root_optax.root, root_optax.scale_by_lr])
def test_learning_rate_annotation_is_introspectable(factory):
    """optax's common suite only tries schedules on factories annotated so."""
    parameter = inspect.signature(factory).parameters["learning_rate"]
    assert parameter.annotation is optax.ScalarOrSchedule


def test_float16_model_with_dead_units_trains_without_nan():
    """In float16, AdamW's eps / sqrt(1 - b2^t) underflowed to 0 and an exactly
    zero gradient entry gave 0 / 0 from step 3."""
    x = normal(0, (32, 8), jnp.float16)
    y = normal(1, (32, 4), jnp.float16)
    params = {
        "w1": normal(2, (8, 16), jnp.float16, 0.3),
        # Half the hidden units are dead: their biases' gradients are exactly 0.
        "b1": jnp.concatenate([jnp.zeros(8), jnp.full(8, -100.0)]).astype(jnp.float16),
        "w2": normal(3, (16, 4), jnp.float16, 0.3),
    }

    def loss(p):
        hidden = jax.nn.relu(x @ p["w1"] + p["b1"][None, :])
        return jnp.mean((hidden @ p["w2"] - y).astype(jnp.float32) ** 2)

    tx = root_optax.root(1e-2)

    @jax.jit
    def train(params):
        def step(carry, _):
            params, state = carry
            value, grads = jax.value_and_grad(loss)(params)
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), value

        (params, state), losses = jax.lax.scan(
            step, (params, tx.init(params)), length=100
        )
        return params, state, losses

    final, state, losses = train(params)
    assert jax.grad(loss)(params)["b1"][8:].tolist() == [0.0] * 8
    assert all(x.dtype == jnp.float16 for x in jax.tree.leaves(final))
    assert bool(jnp.all(jnp.isfinite(losses)))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(final))
    assert int(state.skipped) == 0
    assert float(losses[-1]) < float(losses[0])


def complex_target(dtype=jnp.complex64):
    """optax's muon test target: a complex 2x2 matrix pulled to fixed values."""
    target = jnp.array([[1.0 + 2.0j, 0.0], [-1.0 + 1.0j, 1.0 - 3.0j]], dtype)
    return jnp.zeros((2, 2), dtype), target


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"clip_quantile": None}, {"mu_dtype": jnp.complex64}, {"nesterov": False}],
    ids=["default", "no_clip", "mu_dtype", "no_nesterov"],
)
def test_complex_parameters_converge(kwargs):
    """As optax muon's complex test: conjugate gradients, 1000 steps in a scan."""
    params, target = complex_target()
    loss = lambda p: jnp.sum(jnp.abs(p - target) ** 2)
    schedule = optax.cosine_decay_schedule(0.1, 1000)
    tx = root_optax.root(schedule, weight_decay=0.0, **kwargs)

    @jax.jit
    def train(params):
        def step(carry, _):
            params, state = carry
            grads = jax.tree.map(jnp.conj, jax.grad(loss)(params))
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), length=1000)
        return params

    final = train(params)
    assert final.dtype == jnp.complex64
    np.testing.assert_allclose(final, target, rtol=3e-2, atol=3e-2)


def test_zero_size_matrices_pass_through():
    """(0, 5) and (5, 0) leaves crashed in the threshold's reduction."""
    params = {
        "empty_rows": jnp.zeros((0, 5)),
        "empty_cols": jnp.zeros((5, 0)),
        "w": normal(0, (3, 4)),
    }
    tx = root_optax.root(1e-2)
    grads = jax.tree.map(lambda x: jnp.ones_like(x), params)
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
    assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)
    assert bool(jnp.all(jnp.isfinite(updates["w"])))
    assert int(state.skipped) == 0


def test_overflowing_frobenius_norm_keeps_the_direction():
    """Entries of 1e18 overflow ||G||_F^2 in float32: the step was exactly 0."""
    params = {"w": normal(0, (32, 48))}
    grads = {"w": normal(1, (32, 48))}
    tx = root_optax.root(1e-2, weight_decay=0.0)
    step = jax.jit(tx.update)
    small, _ = step(grads, tx.init(params), params)
    huge, state = step(jax.tree.map(lambda g: g * 1e18, grads), tx.init(params), params)
    a, b = np.ravel(small["w"]), np.ravel(huge["w"])
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert int(state.skipped) == 0
    assert cosine > 0.999, cosine


def test_injected_callable_dimension_numbers_need_static_args():
    """Without static_args, inject_hyperparams called the routing rule with the
    step count and root() silently used the default routing."""
    case = CASE["root"]
    dims = root_optax.matrix_dimension_numbers(stacked="stack")
    factory = optax.inject_hyperparams(root_optax.root)
    tx = factory(**case.kwargs, weight_dimension_numbers=dims)
    with pytest.raises(TypeError, match=r"static_args=\('weight_dimension_numbers',\)"):
        tx.init(tree_for(case))
