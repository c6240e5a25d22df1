"""Steps with NaN/Inf gradients are skipped: params and state never go non-finite."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import root_optax
from root_optax import _nonfinite


def make_problem(rng):
    """A mixed tree (two matrices and a bias) at zero, and a target for it."""
    shapes = {"w1": (8, 16), "w2": (16, 4), "b": (4,)}
    params = {k: jnp.zeros(s, jnp.float32) for k, s in shapes.items()}
    target = {
        k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()
    }
    return params, target


def quadratic(params, target):
    """The loss: half the squared distance to the target."""
    return sum(0.5 * jnp.sum((params[k] - target[k]) ** 2) for k in params)


@functools.cache
def make_opt(skip_nonfinite=True):
    """One optimizer object per setting, so the jitted step compiles once."""
    return root_optax.root(0.02, weight_decay=0.0, skip_nonfinite=skip_nonfinite)


@functools.cache
def make_step(opt):
    @jax.jit
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, updates

    return step


grad_fn = jax.jit(jax.value_and_grad(quadratic))


def poison(grads, key, index, value):
    return {**grads, key: grads[key].at[index].set(value)}


def assert_all_finite(tree, what):
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            assert bool(jnp.all(jnp.isfinite(leaf))), (
                f"{what}{jax.tree_util.keystr(path)}"
            )


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_root_skips_nonfinite_steps_and_keeps_training(rng):
    params, target = make_problem(rng)
    opt = make_opt()
    step = make_step(opt)
    state = opt.init(params)
    assert isinstance(state, root_optax.SkipNonfiniteState)

    losses = []
    for _ in range(5):
        value, grads = grad_fn(params, target)
        losses.append(float(value))
        params, state, _ = step(params, state, grads)

    bad_steps = [("w1", (2, 3), jnp.nan), ("b", (1,), jnp.inf)]
    for skipped, (key, index, value) in enumerate(bad_steps, start=1):
        _, grads = grad_fn(params, target)
        before_params, before_state = params, state
        params, state, updates = step(params, state, poison(grads, key, index, value))

        # The whole step is skipped, not only the poisoned leaf.
        for u in jax.tree.leaves(updates):
            np.testing.assert_array_equal(u, np.zeros_like(u))
        assert_trees_equal(params, before_params)
        assert_trees_equal(state.inner_state, before_state.inner_state)
        assert int(state.skipped) == skipped
        assert not bool(state.last_finite)
        assert_all_finite(params, "params")
        assert_all_finite(state, "state")

        # One clean step in between: it is applied and clears last_finite.
        value, grads = grad_fn(params, target)
        losses.append(float(value))
        params, state, _ = step(params, state, grads)
        assert bool(state.last_finite)
        assert int(state.skipped) == skipped

    for _ in range(10):
        value, grads = grad_fn(params, target)
        losses.append(float(value))
        params, state, _ = step(params, state, grads)
    losses.append(float(quadratic(params, target)))

    assert_all_finite(params, "params")
    assert_all_finite(state, "state")
    assert int(state.skipped) == len(bad_steps)
    assert np.all(np.diff(losses) < 0), losses
    assert losses[-1] < 0.9 * losses[0]


def test_skipped_step_matches_a_run_without_it(rng):
    """Skipping leaves no trace: good, bad, good equals good, good."""
    params, target = make_problem(rng)
    opt = make_opt()
    step = make_step(opt)
    _, g1 = grad_fn(params, target)
    g2 = jax.tree.map(lambda x: 0.5 * x + 0.1, g1)
    bad = poison(g1, "w2", (0, 0), -jnp.inf)

    clean_params, clean_state = params, opt.init(params)
    dirty_params, dirty_state = params, opt.init(params)
    for g in (g1, g2):
        clean_params, clean_state, _ = step(clean_params, clean_state, g)
    for g in (g1, bad, g2):
        dirty_params, dirty_state, _ = step(dirty_params, dirty_state, g)

    assert_trees_equal(dirty_params, clean_params)
    assert_trees_equal(dirty_state.inner_state, clean_state.inner_state)
    assert int(dirty_state.skipped) == 1


def test_root_without_skipping_lets_nan_through(rng):
    """skip_nonfinite=False is plain partition(...): non-finite gradients poison."""
    params, target = make_problem(rng)
    opt = make_opt(skip_nonfinite=False)
    assert not isinstance(opt.init(params), root_optax.SkipNonfiniteState)
    step = make_step(opt)
    state = opt.init(params)
    _, grads = grad_fn(params, target)

    # NaN in one matrix entry: Newton–Schulz normalizes by the Frobenius norm,
    # so the whole matrix update is NaN; the other leaves are untouched by it.
    new_params, state, updates = step(
        params, state, poison(grads, "w1", (0, 0), jnp.nan)
    )
    assert bool(jnp.all(jnp.isnan(updates["w1"])))
    assert bool(jnp.all(jnp.isfinite(updates["w2"])))
    assert bool(jnp.all(jnp.isfinite(updates["b"])))
    assert not bool(jnp.all(jnp.isfinite(new_params["w1"])))

    # +Inf in the bias goes through AdamW: inf / inf gives NaN.
    state = opt.init(params)
    _, state, updates = step(params, state, poison(grads, "b", (1,), jnp.inf))
    assert not bool(jnp.isfinite(updates["b"][1]))


def test_skip_nonfinite_protects_any_optax_optimizer(rng):
    params, target = make_problem(rng)
    opt = root_optax.skip_nonfinite(optax.adam(0.05))
    step = make_step(opt)
    state = opt.init(params)

    value0, grads = grad_fn(params, target)
    params, state, _ = step(params, state, grads)
    before_params, before_state = params, state
    _, grads = grad_fn(params, target)
    params, state, updates = step(params, state, poison(grads, "w2", (3, 1), jnp.nan))
    assert all(not bool(jnp.any(u)) for u in jax.tree.leaves(updates))
    assert_trees_equal(params, before_params)
    assert_trees_equal(state.inner_state, before_state.inner_state)
    assert int(state.skipped) == 1
    assert not bool(state.last_finite)

    for _ in range(5):
        _, grads = grad_fn(params, target)
        params, state, _ = step(params, state, grads)
    assert_all_finite((params, state), "adam")
    assert float(quadratic(params, target)) < float(value0)
    assert bool(state.last_finite)


def test_skip_nonfinite_passes_extra_args(rng):
    params, _ = make_problem(rng)
    inner = optax.chain(
        optax.sgd(0.1),
        optax.contrib.reduce_on_plateau(patience=1, factor=0.5),
    )
    opt = root_optax.skip_nonfinite(inner)
    state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = jax.jit(opt.update)(grads, state, params, value=jnp.asarray(1.0))
    assert_all_finite(updates, "updates")


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_many_consecutive_nonfinite_steps_never_apply(rng, bad):
    params, target = make_problem(rng)
    opt = make_opt()
    step = make_step(opt)
    state = opt.init(params)
    _, grads = grad_fn(params, target)
    params, state, _ = step(params, state, grads)
    start_params, start_state = params, state

    poisoned = poison(grads, "w2", (0, 0), bad)
    for _ in range(5):
        params, state, updates = step(params, state, poisoned)
        assert_all_finite((params, state, updates), "after a bad step: ")
    assert_trees_equal(params, start_params)
    assert_trees_equal(state.inner_state, start_state.inner_state)
    assert int(state.skipped) == 5


def test_apply_if_finite_contrast(rng):
    """optax.apply_if_finite gives up after max_consecutive_errors; we never do."""
    params, _ = make_problem(rng)
    grads = poison(jax.tree.map(jnp.ones_like, params), "b", (0,), jnp.nan)

    def run(opt):
        step = jax.jit(opt.update)
        p, state = params, opt.init(params)
        for _ in range(5):
            updates, state = step(grads, state, p)
            p = optax.apply_updates(p, updates)
        return p

    theirs = run(optax.apply_if_finite(optax.sgd(0.1), max_consecutive_errors=3))
    ours = run(root_optax.skip_nonfinite(optax.sgd(0.1)))
    assert bool(jnp.isnan(theirs["b"][0]))
    assert_trees_equal(ours, params)


def test_integer_leaves_are_ignored_by_the_check():
    params = {"w": jnp.ones((2, 2)), "step": jnp.zeros((), jnp.int32)}
    opt = root_optax.skip_nonfinite(optax.set_to_zero())
    state = opt.init(params)
    _, state = opt.update(params, state, params)
    assert bool(state.last_finite)
    assert int(state.skipped) == 0


def test_zero_matrix_gradient_with_zero_ns_eps_stays_finite():
    """A finite step must give a finite update even when ns_eps=0 (accepted).

    An all-zero matrix gradient (a frozen or unused layer) is finite, so
    skip_nonfinite lets it through; Newton–Schulz then divides 0 by a zero norm.
    """
    params = {"w": jnp.ones((4, 8)), "b": jnp.ones(8)}
    opt = root_optax.root(0.1, ns_eps=0.0, weight_decay=0.0)
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, state = jax.jit(opt.update)(grads, opt.init(params), params)
    assert bool(state.last_finite)
    assert_all_finite(updates, "updates")


def test_finite_gradients_with_an_overflowing_update_are_skipped_too():
    """An inner transformation can overflow on finite gradients (float16 moments,
    a huge scale): that step is skipped as well, state kept."""
    inner = optax.chain(optax.scale_by_adam(), optax.scale(1e38), optax.scale(10.0))
    tx = root_optax.skip_nonfinite(inner)
    params = jnp.ones(3)
    state = tx.init(params)
    updates, new_state = jax.jit(tx.update)(jnp.array([1.0, 2.0, 3.0]), state, params)
    assert updates.tolist() == [0.0, 0.0, 0.0]
    assert int(new_state.skipped) == 1 and not bool(new_state.last_finite)
    jax.tree.map(
        np.testing.assert_array_equal, new_state.inner_state, state.inner_state
    )


EVERY_DTYPE = pytest.mark.parametrize(
    "dtype", [jnp.float32, jnp.bfloat16, jnp.float16, jnp.complex64]
)
EVERY_KIND = pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan, "complex"])


def clean_and_dirty(dtype, bad):
    """A tree of huge finite entries (which must not count) and an integer
    leaf, and the same tree with one ``bad`` entry; skips the complex kind
    (an infinite imaginary part) for real dtypes."""
    if bad == "complex":
        if dtype != jnp.complex64:
            pytest.skip("an infinite imaginary part needs a complex dtype")
        bad = complex(0.0, np.inf)
    huge = float(jnp.finfo(dtype).max)
    clean = {"x": jnp.full((3, 5), huge, dtype), "n": jnp.arange(3)}
    return clean, {**clean, "x": clean["x"].at[1, 2].set(bad)}


@EVERY_DTYPE
@EVERY_KIND
def test_every_kind_of_nonfinite_entry_is_caught_under_jit(dtype, bad):
    """The check (a sum of x - x per leaf) is exact for each dtype and kind of
    non-finite entry, beside huge finite entries that must not count."""
    clean, dirty = clean_and_dirty(dtype, bad)
    tx = root_optax.skip_nonfinite(optax.identity())
    state = tx.init(clean)
    update = jax.jit(tx.update)
    assert bool(update(clean, state)[1].last_finite)
    assert not bool(update(dirty, state)[1].last_finite)


def test_the_skip_is_a_select_not_a_conditional():
    """The step is kept or dropped by selects: no ``conditional`` in the compiled
    step (a lax.cond around the inner step made XLA copy every state buffer
    through the branch and cost about a fifth of Muon's step time on a stacked
    model; bench_step_time measures it)."""
    params = {"w": jnp.zeros((4, 16, 8)), "b": jnp.zeros(8)}
    opt = root_optax.root(
        0.02,
        weight_dimension_numbers={
            "w": root_optax.MuonDimensionNumbers(-2, -1),
            "b": None,
        },
    )
    step = make_step(opt)
    hlo = step.lower(params, opt.init(params), params).compile().as_text()
    assert " conditional(" not in hlo
    # The select really drops a poisoned step.
    grads = {"w": jnp.ones((4, 16, 8)).at[1, 2, 3].set(jnp.nan), "b": jnp.ones(8)}
    new_params, state, updates = step(params, opt.init(params), grads)
    assert_trees_equal(new_params, params)
    assert_trees_equal(updates, jax.tree.map(jnp.zeros_like, params))
    assert int(state.skipped) == 1


@EVERY_DTYPE
@EVERY_KIND
@pytest.mark.parametrize("where", ["gradient", "update"])
def test_accelerator_check_of_gradient_and_update_together(dtype, bad, where):
    """The accelerators' form of the check (one sum per leaf for its gradient
    and update) catches every kind of non-finite entry in either, beside huge
    finite entries and integer leaves that must not count; run here on CPU."""
    clean, dirty = clean_and_dirty(dtype, bad)
    check = jax.jit(_nonfinite._all_finite_together)
    assert bool(check(clean, clean))
    pair = (dirty, clean) if where == "gradient" else (clean, dirty)
    assert not bool(check(*pair))
    # Trees of different structures fall back to one check per tree.
    assert not bool(check(pair[0], [pair[1]]))


def test_each_backend_gets_its_form_of_the_check():
    """CPU: one reduction per tree and leaf (XLA:CPU's copy insertion slows down
    on many leaves with the paired form); accelerators: one per leaf for the
    gradient and its update together (fewer temporaries in libtpu programs)."""
    tx = root_optax.skip_nonfinite(optax.scale(2.0))
    grads = {"a": jnp.ones((8, 8)), "b": jnp.ones(16), "c": jnp.ones((2, 3, 4))}
    traced = jax.jit(tx.update).trace(grads, tx.init(grads))
    for platform, reductions in (("cpu", 6), ("tpu", 3), ("cuda", 3)):
        text = traced.lower(lowering_platforms=(platform,)).as_text()
        assert text.count("stablehlo.reduce") == reductions, platform
