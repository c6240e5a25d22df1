"""Which axes of a parameter form the matrix, and how to map a kernel over them."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from optax.contrib import MuonDimensionNumbers

WeightDimensionNumbers = MuonDimensionNumbers | Any | Callable[[Any], Any] | None
"""``None``, one :class:`optax.contrib.MuonDimensionNumbers` for every leaf, a
tree (or tree prefix) of them with ``None`` for leaves left alone, or a callable
from the params (or updates) tree to such a tree."""

LAST_TWO_AXES = MuonDimensionNumbers(reduction_axis=-2, output_axis=-1)


def is_spec_leaf(x: Any) -> bool:
    return x is None or isinstance(x, (MuonDimensionNumbers, optax.MaskedNode))


def _normalize_axes(axes, ndim: int, where: str) -> tuple[int, ...]:
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    for ax in axes:
        if not isinstance(ax, int) or not -ndim <= ax < ndim:
            raise ValueError(
                f"{where}: axis {ax!r} is out of range for a leaf of rank {ndim}."
            )
    return tuple(ax % ndim for ax in axes)


class MatrixView:
    """How one leaf is viewed as a batch of matrices of shape (reduction, output)."""

    def __init__(self, shape: tuple[int, ...], spec: MuonDimensionNumbers, where: str):
        ndim = len(shape)
        if ndim < 2:
            raise ValueError(
                f"{where}: got a leaf of shape {shape} (rank {ndim}); the matrix path "
                "needs rank >= 2. Route vectors and scalars elsewhere: root() sends "
                "them to AdamW, or pass weight_dimension_numbers with None for them."
            )
        if not isinstance(spec, MuonDimensionNumbers):
            raise TypeError(
                f"{where}: expected optax.contrib.MuonDimensionNumbers, got {spec!r}."
            )
        red = _normalize_axes(spec.reduction_axis, ndim, where)
        out = _normalize_axes(spec.output_axis, ndim, where)
        if (
            not red
            or not out
            or set(red) & set(out)
            or len(set(red + out)) != len(red + out)
        ):
            raise ValueError(
                f"{where}: reduction_axis={spec.reduction_axis!r} and "
                f"output_axis={spec.output_axis!r} must be non-empty, distinct and "
                f"disjoint for a leaf of shape {shape}."
            )
        batch = tuple(ax for ax in range(ndim) if ax not in red + out)
        self.shape = tuple(shape)
        self.transpose = batch + red + out
        self.inverse = tuple(sorted(range(ndim), key=lambda i: self.transpose[i]))
        self.fan_in = math.prod(shape[ax] for ax in red)
        self.fan_out = math.prod(shape[ax] for ax in out)
        self.batch = math.prod(shape[ax] for ax in batch)
        self.matrix_shape = (self.fan_in, self.fan_out)

    def to_batch(self, x: jax.Array) -> jax.Array:
        """Reshape to ``(batch, fan_in, fan_out)``."""
        return x.transpose(self.transpose).reshape(
            (self.batch, self.fan_in, self.fan_out)
        )

    def from_batch(self, x: jax.Array) -> jax.Array:
        unflat = tuple(self.shape[ax] for ax in self.transpose)
        return x.reshape(unflat).transpose(self.inverse)


def resolve(dimension_numbers: WeightDimensionNumbers, tree: Any) -> Any:
    """Turn the user's spec into a tree prefix of specs for ``tree``."""
    if callable(dimension_numbers) and not isinstance(
        dimension_numbers, MuonDimensionNumbers
    ):
        return dimension_numbers(tree)
    return dimension_numbers


def map_matrices(
    fn: Callable[[jax.Array, MatrixView], Any],
    tree: Any,
    dimension_numbers: WeightDimensionNumbers,
    where: str,
    *rest: Any,
) -> Any:
    """Apply ``fn(leaf, view, *rest_leaves)`` to every matrix leaf of ``tree``.

    With ``dimension_numbers=None`` every leaf is a matrix over its last two axes
    (leading axes are batch axes). Leaves whose spec is ``None`` and
    :class:`optax.MaskedNode` leaves are returned unchanged.
    """
    specs = resolve(dimension_numbers, tree)
    if specs is None:
        specs = jax.tree.map(lambda _: LAST_TWO_AXES, tree)
    elif isinstance(specs, MuonDimensionNumbers):
        specs = jax.tree.map(lambda _: specs, tree)

    def per_subtree(spec, subtree, *rest_subtrees):
        if spec is None or isinstance(spec, optax.MaskedNode):
            return subtree

        def per_leaf(x, *rest_leaves):
            if x is None or isinstance(x, optax.MaskedNode):
                return x
            return fn(x, MatrixView(jnp.shape(x), spec, where), *rest_leaves)

        return jax.tree.map(
            per_leaf,
            subtree,
            *rest_subtrees,
            is_leaf=lambda x: x is None or isinstance(x, optax.MaskedNode),
        )

    try:
        return jax.tree.map(per_subtree, specs, tree, *rest, is_leaf=is_spec_leaf)
    except ValueError as err:
        if "Custom node type mismatch" in str(err) or "structure" in str(err):
            raise ValueError(
                f"{where}: weight_dimension_numbers does not fit the updates tree: "
                f"it must be a prefix of it (got {specs!r}). {err}"
            ) from None
        raise
