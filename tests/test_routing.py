"""Routing: matrix_dimension_numbers' rules, routing_table and the default's warning."""

import warnings

import jax
import jax.numpy as jnp
import optax
import pytest
from optax.contrib import MuonDimensionNumbers

import root_optax
from root_optax.coefficients import on_demand

SCANNED = {
    "embed": jnp.ones((16, 4)),
    "layers": {
        "w": jnp.ones((3, 8, 16)),
        "b": jnp.ones((3, 16)),
        "conv": jnp.ones((3, 2, 2, 4, 5)),
    },
    "proj": jnp.ones((4, 4)),
    "scale": jnp.ones(4),
}


def specs(dims, params=SCANNED):
    return dims(params)


def test_stacked_regex_strips_one_layer_axis_from_matching_leaves_only():
    got = specs(root_optax.matrix_dimension_numbers(["embed"], stacked="layers"))
    assert got["layers"]["w"] == MuonDimensionNumbers(1, 2)  # 3 matrices (8, 16)
    assert got["layers"]["b"] is None  # a vector per layer
    assert got["layers"]["conv"] is None  # a conv kernel per layer: AdamW
    assert got["proj"] == MuonDimensionNumbers()  # outside the scan: a matrix
    assert got["embed"] is None and got["scale"] is None


def test_stacked_true_treats_every_leaf_as_stacked():
    got = specs(root_optax.matrix_dimension_numbers(stacked=True))
    assert got["layers"]["w"] == MuonDimensionNumbers(1, 2)
    assert got["layers"]["b"] is None
    assert got["proj"] is None  # (4, 4) read as 4 layers of a 4-vector
    assert got["embed"] is None


def test_conv_matrix_flattens_window_and_fan_in():
    got = specs(root_optax.matrix_dimension_numbers(stacked="layers", conv="matrix"))
    assert got["layers"]["conv"] == MuonDimensionNumbers((1, 2, 3), 4)
    view = root_optax.routing_table(
        {"conv": SCANNED["layers"]["conv"]},
        root_optax.matrix_dimension_numbers(stacked=True, conv="matrix"),
    )[0]
    assert (view.matrix_shape, view.batch) == ((16, 5), 3)
    flat = specs(
        root_optax.matrix_dimension_numbers(conv="matrix"),
        {"k": jnp.ones((3, 3, 2, 6))},
    )
    assert flat["k"] == MuonDimensionNumbers((0, 1, 2), 3)


def test_unstacked_rank_three_goes_to_adamw_by_default():
    got = specs(root_optax.matrix_dimension_numbers())
    assert got["layers"]["w"] is None
    assert got["layers"]["b"] == MuonDimensionNumbers()


def test_routing_table_rows_and_text():
    dims = root_optax.matrix_dimension_numbers(["embed"], stacked="layers")
    table = root_optax.routing_table(SCANNED, dims)
    rows = {row.path: row for row in table}
    assert rows["['layers']['w']"] == root_optax.LeafRoute(
        "['layers']['w']", (3, 8, 16), "root", (8, 16), 3, "root table (8, 16)"
    )
    assert rows["['embed']"].branch == "adamw"
    assert rows["['embed']"].coefficients is None
    text = str(table)
    assert text.splitlines()[0].split() == [
        "path",
        "shape",
        "branch",
        "matrix",
        "batch",
        "coefficients",
    ]
    assert "2 leaves (4 matrices) to ROOT, 4 leaves to AdamW." in text


@pytest.mark.parametrize(
    "ns_coeffs, ns_steps, source",
    [
        ("muon", None, "muon"),
        ("reference", None, "muon (reference fallback, warns)"),
        ((3.0, -3.2, 1.2), None, "user coefficients"),
        ("root", 5, "root table, interpolated"),
        (on_demand, 2, "callable on_demand(100, 300)"),
    ],
)
def test_routing_table_names_the_coefficient_source(ns_coeffs, ns_steps, source):
    [row] = root_optax.routing_table(
        {"w": jax.ShapeDtypeStruct((100, 300), jnp.float32)},
        ns_coeffs=ns_coeffs,
        ns_steps=ns_steps,
    )
    assert row.coefficients == source


def test_routing_table_agrees_with_roots_state():
    dims = root_optax.matrix_dimension_numbers(["embed"], stacked="layers")
    state = root_optax.root(1e-3, weight_dimension_numbers=dims).init(SCANNED)
    [(_, momentum)] = optax.tree.get_all_with_path(state, "MomentumState")
    in_root = jax.tree.map(
        lambda x: not isinstance(x, optax.MaskedNode),
        momentum.mu,
        is_leaf=lambda x: isinstance(x, optax.MaskedNode),
    )
    branches = [row.branch == "root" for row in root_optax.routing_table(SCANNED, dims)]
    assert jax.tree.leaves(in_root) == branches


def test_default_routing_warns_only_for_rank_three_leaves():
    with pytest.warns(UserWarning, match="2 parameter"):
        root_optax.root(1e-3).init(SCANNED)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        root_optax.root(1e-3).init({"w": jnp.ones((4, 4)), "b": jnp.ones(4)})
        # Explicit routing is the user's statement: no warning.
        root_optax.root(
            1e-3, weight_dimension_numbers=root_optax.matrix_dimension_numbers()
        ).init(SCANNED)


def test_rule_called_with_a_step_count_names_static_args():
    dims = root_optax.matrix_dimension_numbers()
    with pytest.raises(TypeError, match=r"static_args=\('weight_dimension_numbers',\)"):
        dims(jnp.zeros([], jnp.int32))


@pytest.mark.parametrize(
    "kwargs, error, shown",
    [
        ({"stacked": 1}, TypeError, "stacked=1"),
        ({"stacked": "("}, ValueError, "'('"),
        ({"conv": "split"}, ValueError, "conv='split'"),
    ],
)
def test_bad_arguments(kwargs, error, shown):
    with pytest.raises(error, match=r"matrix_dimension_numbers\(") as info:
        root_optax.matrix_dimension_numbers(**kwargs)
    assert shown in str(info.value)
