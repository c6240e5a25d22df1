"""Bad arguments raise errors naming the function, the argument and the value."""

import ast
import inspect
import itertools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import MuonDimensionNumbers

import root_optax

W = jnp.ones((4, 8))
BIAS = jnp.ones(8)
MUON = root_optax.MUON_COEFFICIENTS
NAN = float("nan")


def check_raises(exc_type, thunk, fn, *parts):
    """``thunk()`` raises ``exc_type``: message starts with ``fn``, has each part."""
    with pytest.raises(exc_type, match=rf"^{fn}\b") as info:
        thunk()
    message = str(info.value)
    for part in parts:
        assert part in message, f"{part!r} is missing from the message {message!r}"
    return message


def jit_update(tx, tree):
    """Init, then one jitted update (shape errors surface while tracing)."""
    state = tx.init(tree)
    return jax.jit(tx.update)(tree, state, tree)


# Factories keyed by the name their errors must carry; each takes keyword
# arguments under the user-facing name and returns a transformation (or, for
# ``orthogonalize``, runs on a 4x8 matrix).
def _root(**kw):
    return root_optax.root(0.1, **kw)


def _orthogonalize(**kw):
    return root_optax.orthogonalize(W, **kw)


NS_FACTORIES = {
    "root": _root,
    "scale_by_root": root_optax.scale_by_root,
    "adaptive_newton_schulz": root_optax.adaptive_newton_schulz,
    "orthogonalize": _orthogonalize,
}


# ns_steps ------------------------------------------------------------------


@pytest.mark.parametrize("fn", NS_FACTORIES)
@pytest.mark.parametrize(
    "value, exc_type",
    [
        (0, ValueError),
        (-1, ValueError),
        (2.5, TypeError),
        (True, TypeError),
        ("5", TypeError),
    ],
    ids=["zero", "negative", "float", "bool", "str"],
)
def test_ns_steps_must_be_positive_int(fn, value, exc_type):
    check_raises(
        exc_type,
        lambda: NS_FACTORIES[fn](ns_steps=value),
        fn,
        "ns_steps",
        f"ns_steps={value!r}",
        "positive int",
    )


@pytest.mark.parametrize("fn", NS_FACTORIES)
def test_ns_steps_array_hints_at_static_args(fn):
    value = jnp.asarray(5)
    check_raises(
        TypeError,
        lambda: NS_FACTORIES[fn](ns_steps=value),
        fn,
        "ns_steps",
        repr(value),
        "inject_hyperparams",
        "static_args=('ns_steps',)",
    )


def test_inject_hyperparams_keeps_default_ns_steps_static():
    # inject_hyperparams binds defaults too: ns_steps defaults to None (meaning 5)
    # so it is not turned into an array; an explicit ns_steps must be static.
    opt = optax.inject_hyperparams(root_optax.root)(learning_rate=0.1)
    opt.init({"w": W})
    explicit = optax.inject_hyperparams(root_optax.root)(learning_rate=0.1, ns_steps=5)
    check_raises(
        TypeError, lambda: explicit.init({"w": W}), "root", "ns_steps", "static_args"
    )


@pytest.mark.parametrize("fn", NS_FACTORIES)
def test_ns_steps_numpy_int_accepted(fn):
    NS_FACTORIES[fn](ns_steps=np.int64(3))


# quantile / threshold --------------------------------------------------------

QUANTILE_FACTORIES = {
    "robust_clip": (lambda v: root_optax.robust_clip(quantile=v), "quantile"),
    "root": (lambda v: _root(clip_quantile=v), "clip_quantile"),
    "scale_by_root": (
        lambda v: root_optax.scale_by_root(clip_quantile=v),
        "clip_quantile",
    ),
}
THRESHOLD_FACTORIES = {
    "robust_clip": (lambda v: root_optax.robust_clip(threshold=v), "threshold"),
    "root": (lambda v: _root(clip_threshold=v), "clip_threshold"),
    "scale_by_root": (
        lambda v: root_optax.scale_by_root(clip_threshold=v),
        "clip_threshold",
    ),
}


@pytest.mark.parametrize("fn", QUANTILE_FACTORIES)
@pytest.mark.parametrize("value", [0.0, -0.1, 1.5, NAN])
def test_quantile_outside_unit_interval(fn, value):
    make, arg = QUANTILE_FACTORIES[fn]
    check_raises(
        ValueError,
        lambda: make(value),
        fn,
        f"{arg}=...",
        f"{arg}={value!r}",
        "(0.0, 1.0]",
    )


@pytest.mark.parametrize("fn", QUANTILE_FACTORIES)
def test_quantile_not_a_number(fn):
    make, arg = QUANTILE_FACTORIES[fn]
    check_raises(TypeError, lambda: make("0.9"), fn, f"{arg}=...", f"{arg}='0.9'")


@pytest.mark.parametrize("fn", QUANTILE_FACTORIES)
def test_quantile_one_accepted(fn):
    QUANTILE_FACTORIES[fn][0](1.0)


@pytest.mark.parametrize("fn", THRESHOLD_FACTORIES)
@pytest.mark.parametrize("value", [-1.0, -1e-12, NAN])
def test_threshold_negative_or_nan(fn, value):
    make, arg = THRESHOLD_FACTORIES[fn]
    check_raises(ValueError, lambda: make(value), fn, f"{arg}=...", f"{arg}={value!r}")


def test_robust_clip_needs_quantile_or_threshold():
    check_raises(
        ValueError,
        lambda: root_optax.robust_clip(quantile=None, threshold=None),
        "robust_clip",
        "quantile=None",
        "threshold=None",
    )


def test_robust_clip_negative_offset():
    check_raises(
        ValueError,
        lambda: root_optax.robust_clip(offset=-1.0),
        "robust_clip",
        "offset=-1.0",
    )


@pytest.mark.parametrize("q", [-0.5, 1.5, NAN])
def test_abs_quantile_static_q_outside_unit_interval(q):
    x = jnp.arange(4.0)
    check_raises(
        ValueError, lambda: root_optax.abs_quantile(x, q), "abs_quantile", f"q={q!r}"
    )


def test_abs_quantile_integer_input():
    check_raises(
        TypeError,
        lambda: root_optax.abs_quantile(jnp.arange(4), 0.5),
        "abs_quantile",
        "x.dtype=int32",
    )


# beta, Adam betas, non-negative scalars ---------------------------------------

BETA_FACTORIES = {
    "momentum": lambda v: root_optax.momentum(v),
    "root": lambda v: _root(beta=v),
    "scale_by_root": lambda v: root_optax.scale_by_root(beta=v),
}


@pytest.mark.parametrize("fn", BETA_FACTORIES)
@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, NAN])
def test_beta_outside_half_open_unit_interval(fn, value):
    check_raises(
        ValueError,
        lambda: BETA_FACTORIES[fn](value),
        fn,
        "beta=...",
        f"beta={value!r}",
        "[0.0, 1.0)",
    )


@pytest.mark.parametrize("arg", ["adam_b1", "adam_b2"])
@pytest.mark.parametrize("value", [-0.1, 1.0, NAN])
def test_adam_betas_outside_half_open_unit_interval(arg, value):
    check_raises(
        ValueError,
        lambda: _root(**{arg: value}),
        "root",
        f"{arg}=...",
        f"{arg}={value!r}",
        "[0.0, 1.0)",
    )


NON_NEGATIVE = [
    ("root", "learning_rate", lambda v: root_optax.root(v)),
    ("root", "adam_learning_rate", lambda v: _root(adam_learning_rate=v)),
    ("root", "weight_decay", lambda v: _root(weight_decay=v)),
    ("root", "adam_weight_decay", lambda v: _root(adam_weight_decay=v)),
    ("root", "adam_eps", lambda v: _root(adam_eps=v)),
    ("root", "rms", lambda v: _root(rms=v)),
    ("root", "ns_eps", lambda v: _root(ns_eps=v)),
    ("scale_by_root", "ns_eps", lambda v: root_optax.scale_by_root(ns_eps=v)),
    ("scale_by_lr", "learning_rate", lambda v: root_optax.scale_by_lr(v)),
    (
        "scale_by_lr",
        "weight_decay",
        lambda v: root_optax.scale_by_lr(0.1, weight_decay=v),
    ),
    ("scale_by_lr", "rms", lambda v: root_optax.scale_by_lr(0.1, rms=v)),
    (
        "adaptive_newton_schulz",
        "eps",
        lambda v: root_optax.adaptive_newton_schulz(eps=v),
    ),
    ("orthogonalize", "eps", lambda v: _orthogonalize(eps=v)),
]


@pytest.mark.parametrize(
    "fn, arg, make", NON_NEGATIVE, ids=[f"{f}-{a}" for f, a, _ in NON_NEGATIVE]
)
@pytest.mark.parametrize("value", [-0.1, NAN])
def test_negative_or_nan_scalars(fn, arg, make, value):
    check_raises(ValueError, lambda: make(value), fn, f"{arg}=...", f"{arg}={value!r}")


# Newton–Schulz coefficients ---------------------------------------------------

BAD_COEFFS = {
    "pair": ((1, 2), ["(1, 2)", "shape (3,)"]),
    "ragged": ([[1, 2, 3], [4, 5]], ["[[1, 2, 3], [4, 5]]"]),
    "short_table": (np.ones((4, 3)), ["4 per-iteration triples", "ns_steps=5"]),
    "nan_triple": ((1.0, NAN, 1.0), ["(1.0, nan, 1.0)", "finite"]),
    "inf_table": ([MUON] * 4 + [(1.0, math.inf, 1.0)], ["inf", "finite"]),
    "scalar": (5, ["from 5"]),
    "map_str_key": ({"a": MUON}, ["'a'", "(min, max) int pairs"]),
    "map_short_key": ({(4,): MUON}, ["(4,)", "(min, max) int pairs"]),
    "map_float_key": ({(4.0, 8.0): MUON}, ["(4.0, 8.0)"]),
    "map_bad_value": ({(4, 8): (1, 2)}, ["(4, 8)", "(1, 2)"]),
    "map_nan_value": ({(4, 8): (1, NAN, 2)}, ["(4, 8)", "nan"]),
}


@pytest.mark.parametrize("fn", NS_FACTORIES)
def test_unknown_preset(fn):
    check_raises(
        ValueError,
        lambda: NS_FACTORIES[fn](ns_coeffs="polar"),
        fn,
        "ns_coeffs=...",
        "'polar'",
        "'root'",
        "'reference'",
        "'muon'",
    )


@pytest.mark.parametrize("fn", NS_FACTORIES)
@pytest.mark.parametrize("case", BAD_COEFFS)
def test_malformed_coefficients_rejected_at_construction(fn, case):
    value, parts = BAD_COEFFS[case]
    check_raises(
        ValueError,
        lambda: NS_FACTORIES[fn](ns_coeffs=value, ns_steps=5),
        fn,
        "ns_coeffs=...",
        *parts,
    )


def _update_on_matrix(fn, **kw):
    """Build ``fn`` with ``kw`` (must not raise), then run it on a 4x8 matrix."""
    if fn == "orthogonalize":
        return lambda: _orthogonalize(**kw)
    tx = NS_FACTORIES[fn](**kw)
    return lambda: jit_update(tx, {"w": W})


@pytest.mark.parametrize("fn", NS_FACTORIES)
def test_mapping_missing_shape_raised_at_first_update(fn):
    table = {(2, 2): MUON}
    check_raises(
        ValueError,
        _update_on_matrix(fn, ns_coeffs=table),
        fn,
        "ns_coeffs=...",
        "(4, 8)",
        "(2, 2)",
    )


@pytest.mark.parametrize("fn", NS_FACTORIES)
@pytest.mark.parametrize(
    "returned, parts",
    [
        ((1.0, 2.0), ["(1.0, 2.0)", "shape (3,)"]),
        ((1.0, NAN, 1.0), ["(1.0, nan, 1.0)", "finite"]),
        (None, ["None"]),
    ],
    ids=["pair", "nan", "none"],
)
def test_callable_returning_malformed_coefficients(fn, returned, parts):
    calls = []

    def coeffs(shape, ns_steps):
        calls.append((shape, ns_steps))
        return returned

    check_raises(
        ValueError,
        _update_on_matrix(fn, ns_coeffs=coeffs),
        fn,
        "ns_coeffs=...",
        "for shape (4, 8)",
        *parts,
    )
    assert calls[0] == ((4, 8), 5)


# Dimension numbers ------------------------------------------------------------

DIMS_FACTORIES = {
    "robust_clip": lambda d: root_optax.robust_clip(weight_dimension_numbers=d),
    "adaptive_newton_schulz": lambda d: root_optax.adaptive_newton_schulz(
        weight_dimension_numbers=d
    ),
    "scale_by_root": lambda d: root_optax.scale_by_root(weight_dimension_numbers=d),
    "scale_by_lr": lambda d: root_optax.scale_by_lr(0.1, weight_dimension_numbers=d),
    "root": lambda d: _root(weight_dimension_numbers=d),
}


@pytest.mark.parametrize("fn", DIMS_FACTORIES)
@pytest.mark.parametrize(
    "dims, parts",
    [
        (MuonDimensionNumbers(5, 1), ["axis 5", "rank 2"]),
        (MuonDimensionNumbers(-3, 1), ["axis -3", "rank 2"]),
        (MuonDimensionNumbers(0, 0), ["reduction_axis=0", "output_axis=0"]),
        (MuonDimensionNumbers((0, 1), 1), ["reduction_axis=(0, 1)", "output_axis=1"]),
        (MuonDimensionNumbers((), 1), ["reduction_axis=()"]),
    ],
    ids=["axis_too_big", "axis_too_small", "overlap", "overlap_tuple", "empty"],
)
def test_dimension_numbers_that_do_not_fit_a_leaf(fn, dims, parts):
    tx = DIMS_FACTORIES[fn](dims)
    check_raises(
        ValueError,
        lambda: jit_update(tx, {"w": W}),
        fn,
        "weight_dimension_numbers",
        "(4, 8)",
        *parts,
    )


@pytest.mark.parametrize("fn", DIMS_FACTORIES)
@pytest.mark.parametrize(
    "dims, parts",
    [
        ({"w": MuonDimensionNumbers(), "v": MuonDimensionNumbers()}, ["'v'"]),
        ({"v": MuonDimensionNumbers()}, ["'v'"]),
        ([MuonDimensionNumbers()], ["[MuonDimensionNumbers"]),
        ({"w": {"k": MuonDimensionNumbers()}}, ["'k'"]),
    ],
    ids=["extra_key", "wrong_key", "wrong_container", "too_deep"],
)
def test_dimension_numbers_not_a_prefix_of_params(fn, dims, parts):
    tx = DIMS_FACTORIES[fn](dims)
    check_raises(
        ValueError,
        lambda: jit_update(tx, {"w": W}),
        fn,
        "weight_dimension_numbers",
        "prefix",
        *parts,
    )


@pytest.mark.parametrize("fn", ["robust_clip", "adaptive_newton_schulz"])
def test_dimension_numbers_leaf_of_wrong_type(fn):
    tx = DIMS_FACTORIES[fn]({"w": "rows"})
    check_raises(
        TypeError,
        lambda: jit_update(tx, {"w": W}),
        fn,
        "MuonDimensionNumbers",
        "'rows'",
    )


def test_root_empty_dimension_numbers_tree():
    check_raises(
        ValueError,
        lambda: _root(weight_dimension_numbers={}),
        "root",
        "weight_dimension_numbers=...",
        "empty",
    )


# Rank < 2 on the matrix path --------------------------------------------------

RANK_FACTORIES = {
    "robust_clip": root_optax.robust_clip,
    "adaptive_newton_schulz": root_optax.adaptive_newton_schulz,
    "scale_by_root": root_optax.scale_by_root,
    "scale_by_lr": lambda: root_optax.scale_by_lr(0.1),
    # One MuonDimensionNumbers for every leaf sends the bias to the matrix path.
    "root": lambda: _root(weight_dimension_numbers=MuonDimensionNumbers()),
}


@pytest.mark.parametrize("fn", RANK_FACTORIES)
def test_bias_on_matrix_path(fn):
    tx = RANK_FACTORIES[fn]()
    check_raises(
        ValueError,
        lambda: jit_update(tx, {"w": W, "b": BIAS}),
        fn,
        "shape (8,)",
        "rank >= 2",
        "weight_dimension_numbers",
    )


@pytest.mark.parametrize("x", [BIAS, jnp.asarray(1.0)], ids=["1d", "0d"])
def test_orthogonalize_needs_a_matrix(x):
    check_raises(
        ValueError,
        lambda: root_optax.orthogonalize(x),
        "orthogonalize",
        "x=...",
        f"shape {x.shape}",
        "rank >= 2",
    )


# Wrong types --------------------------------------------------------------------

NESTEROV_FACTORIES = {
    "momentum": lambda v: root_optax.momentum(nesterov=v),
    "root": lambda v: _root(nesterov=v),
    "scale_by_root": lambda v: root_optax.scale_by_root(nesterov=v),
}


@pytest.mark.parametrize("fn", NESTEROV_FACTORIES)
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_nesterov_must_be_bool(fn, value):
    check_raises(
        TypeError,
        lambda: NESTEROV_FACTORIES[fn](value),
        fn,
        "nesterov=...",
        repr(value),
        "bool",
    )


@pytest.mark.parametrize("arg", ["adam_nesterov", "skip_nonfinite"])
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_root_switches_must_be_bool(arg, value):
    check_raises(
        TypeError,
        lambda: _root(**{arg: value}),
        "root",
        f"{arg}=...",
        f"{arg}={value!r}",
        "bool",
    )


@pytest.mark.parametrize(
    "fn, make",
    [
        ("scale_by_lr", lambda v: root_optax.scale_by_lr(0.1, shape_scale=v)),
        ("root", lambda v: _root(shape_scale=v)),
    ],
    ids=["scale_by_lr", "root"],
)
def test_unknown_shape_scale(fn, make):
    check_raises(
        ValueError,
        lambda: make("bogus"),
        fn,
        "shape_scale=...",
        "shape_scale='bogus'",
        "'rms'",
        "'muon'",
    )


@pytest.mark.parametrize("fn", NS_FACTORIES)
@pytest.mark.parametrize(
    "dtype, shown",
    [(jnp.int32, "int32"), (jnp.complex64, "complex64"), ("bogus", "bogus")],
    ids=["int32", "complex64", "not_a_dtype"],
)
def test_ns_dtype_must_be_floating(fn, dtype, shown):
    check_raises(
        TypeError,
        lambda: NS_FACTORIES[fn](ns_dtype=dtype),
        fn,
        "ns_dtype=...",
        shown,
        "float32",
    )


@pytest.mark.parametrize(
    "stacked, exc_type, shown",
    [(1.5, TypeError, "1.5"), (None, TypeError, "None"), (["("], ValueError, "'('")],
    ids=["float", "none", "bad_regex"],
)
def test_matrix_dimension_numbers_stacked_is_a_bool_or_regexes(
    stacked, exc_type, shown
):
    check_raises(
        exc_type,
        lambda: root_optax.matrix_dimension_numbers(stacked=stacked),
        "matrix_dimension_numbers",
        "stacked=...",
        shown,
    )


@pytest.mark.parametrize(
    "names, exc_type, shown",
    [
        (["("], ValueError, "'('"),
        ([5], ValueError, "5"),
        (None, TypeError, "None"),
        (5, TypeError, "5"),
    ],
    ids=["bad_regex", "non_str_entry", "none", "not_iterable"],
)
def test_matrix_dimension_numbers_bad_names(names, exc_type, shown):
    check_raises(
        exc_type,
        lambda: root_optax.matrix_dimension_numbers(names),
        "matrix_dimension_numbers",
        "adamw_names=...",
        shown,
    )


@pytest.mark.parametrize("inner", [optax.adam, "adam"], ids=["factory", "str"])
def test_skip_nonfinite_needs_a_transformation(inner):
    check_raises(
        TypeError,
        lambda: root_optax.skip_nonfinite(inner),
        "skip_nonfinite",
        "inner",
        "GradientTransformation",
    )


# What is accepted ---------------------------------------------------------------


def _constant_has_attribute_docstring(name):
    """A module-level ``NAME = ...`` followed by a string literal, in the package."""
    for path in pathlib.Path(root_optax.__file__).parent.glob("*.py"):
        body = ast.parse(path.read_text()).body
        for stmt, after in itertools.pairwise(body):
            targets = getattr(stmt, "targets", None) or [getattr(stmt, "target", None)]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return (
                    isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)
                    and after.value.value.strip() != ""
                )
    return False


@pytest.mark.parametrize("name", root_optax.__all__)
def test_public_names_import_and_have_docstrings(name):
    obj = getattr(root_optax, name)
    if inspect.isclass(obj) or callable(obj):
        doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
        assert doc and doc.strip(), f"{name} has no docstring"
        # NamedTuple fills in "Name(field, ...)" when the class has no docstring.
        assert not doc.startswith(f"{name}("), f"{name} has only the default docstring"
    else:
        assert _constant_has_attribute_docstring(name), f"{name} has no docstring"


def test_all_lists_every_public_name():
    assert len(set(root_optax.__all__)) == len(root_optax.__all__)
    exported = {
        n
        for n, v in vars(root_optax).items()
        if not n.startswith("_") and not inspect.ismodule(v)
    }
    assert exported <= set(root_optax.__all__)


def test_out_of_range_arrays_are_not_checked():
    # Arrays may be traced, so only Python/NumPy scalars are range-checked.
    root_optax.momentum(jnp.asarray(1.5))
    root_optax.robust_clip(quantile=jnp.asarray(2.0))
    root_optax.robust_clip(threshold=jnp.asarray(-1.0))
    root_optax.scale_by_lr(jnp.asarray(-1.0))
    root_optax.root(jnp.asarray(-1.0), beta=jnp.asarray(1.5))
    root_optax.root(0.1, clip_quantile=np.asarray([0.0]))


def test_traced_hyperparameters_under_jit():
    params = {"w": W, "b": BIAS}
    grads = jax.tree.map(jnp.ones_like, params)

    @jax.jit
    def step(lr, beta, q):
        opt = root_optax.root(lr, beta=beta, clip_quantile=q, adam_b1=beta)
        updates, _ = opt.update(grads, opt.init(params), params)
        return updates

    updates = step(0.1, 0.9, 0.8)
    assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_inject_hyperparams_round_trip(rng):
    params = {"w": W, "b": BIAS}
    grads = {k: jnp.asarray(rng.standard_normal(v.shape)) for k, v in params.items()}
    opt = optax.inject_hyperparams(root_optax.root, static_args=("ns_steps",))(
        learning_rate=0.1, beta=0.9, clip_quantile=0.8, ns_steps=3
    )
    state = opt.init(params)
    update = jax.jit(opt.update)

    def with_hyperparams(**changes):
        return state._replace(hyperparams={**state.hyperparams, **changes})

    base, _ = update(grads, state, params)
    half, _ = update(grads, with_hyperparams(learning_rate=jnp.asarray(0.05)), params)
    clipped, _ = update(grads, with_hyperparams(clip_quantile=jnp.asarray(0.3)), params)
    for k in params:
        np.testing.assert_allclose(half[k], 0.5 * base[k], rtol=1e-6, atol=1e-7)
    assert not np.allclose(clipped["w"], base["w"])
    np.testing.assert_array_equal(clipped["b"], base["b"])


def test_inject_hyperparams_on_blocks():
    x = jnp.arange(6.0).reshape(2, 3)
    for opt in (
        optax.inject_hyperparams(root_optax.robust_clip)(quantile=0.5),
        optax.inject_hyperparams(root_optax.momentum)(beta=0.5),
        optax.inject_hyperparams(root_optax.scale_by_lr)(0.1, rms=0.3),
    ):
        updates, _ = jax.jit(opt.update)(x, opt.init(x), x)
        assert updates.shape == x.shape
