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


def _where(fn: str) -> str:
    return f"{fn}(weight_dimension_numbers=...)"


def _normalize_axes(axes, shape: tuple[int, ...], fn: str) -> tuple[int, ...]:
    ndim = len(shape)
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    for ax in axes:
        if not isinstance(ax, int) or not -ndim <= ax < ndim:
            raise ValueError(
                f"{_where(fn)}: axis {ax!r} is out of range for a leaf of shape "
                f"{shape} (rank {ndim})."
            )
    return tuple(ax % ndim for ax in axes)


class MatrixView:
    """How one leaf is viewed as a batch of matrices of shape (fan_in, fan_out)."""

    def __init__(self, shape: tuple[int, ...], spec: MuonDimensionNumbers, fn: str):
        shape = tuple(shape)
        ndim = len(shape)
        if not isinstance(spec, MuonDimensionNumbers):
            raise TypeError(
                f"{_where(fn)}: expected optax.contrib.MuonDimensionNumbers or None "
                f"for a leaf of shape {shape}, got {spec!r}."
            )
        if ndim < 2:
            raise ValueError(
                f"{_where(fn)}: got a leaf of shape {shape} (rank {ndim}); the "
                "matrix path needs rank >= 2. Route vectors and scalars elsewhere: "
                "give them None in weight_dimension_numbers (root() then trains "
                "them with AdamW)."
            )
        red = _normalize_axes(spec.reduction_axis, shape, fn)
        out = _normalize_axes(spec.output_axis, shape, fn)
        if not red or not out or len(set(red + out)) != len(red + out):
            raise ValueError(
                f"{_where(fn)}: reduction_axis={spec.reduction_axis!r} and "
                f"output_axis={spec.output_axis!r} must be non-empty, distinct and "
                f"disjoint for a leaf of shape {shape}."
            )
        batch = tuple(ax for ax in range(ndim) if ax not in red + out)
        self.shape = shape
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
    caller: str,
) -> Any:
    """Apply ``fn(leaf, view)`` to every matrix leaf of ``tree``.

    With ``dimension_numbers=None`` every leaf is a matrix over its last two axes
    (leading axes are batch axes). Leaves whose spec is ``None`` and
    :class:`optax.MaskedNode` leaves are returned unchanged. Errors name
    ``caller``.
    """
    if not jax.tree.leaves(tree):
        # Nothing to map (e.g. optax.tree.map_params initialises with a
        # leafless placeholder instead of the params): no spec to check.
        return tree
    specs = resolve(dimension_numbers, tree)
    if specs is None:
        specs = LAST_TWO_AXES
    if isinstance(specs, MuonDimensionNumbers):
        specs = jax.tree.map(lambda _: specs, tree)

    def per_subtree(spec, subtree):
        if spec is None or isinstance(spec, optax.MaskedNode):
            return subtree

        def per_leaf(x):
            if x is None or isinstance(x, optax.MaskedNode):
                return x
            return fn(x, MatrixView(jnp.shape(x), spec, caller))

        return jax.tree.map(
            per_leaf,
            subtree,
            is_leaf=lambda x: x is None or isinstance(x, optax.MaskedNode),
        )

    try:
        structure_ok = True
        jax.tree.map(lambda *_: None, specs, tree, is_leaf=is_spec_leaf)
    except (ValueError, TypeError) as err:
        structure_ok, reason = False, err
    if not structure_ok:
        raise ValueError(
            f"{_where(caller)} must be a tree prefix of the params/updates with "
            f"MuonDimensionNumbers or None leaves, got {specs!r}. {reason}"
        ) from None
    return jax.tree.map(per_subtree, specs, tree, is_leaf=is_spec_leaf)


def per_leaf(dimension_numbers: WeightDimensionNumbers, tree: Any) -> Any:
    """The spec of every leaf of ``tree`` (a tree of its structure), from a prefix.

    ``None`` dimension numbers mean the last two axes of every leaf.
    """
    specs = resolve(dimension_numbers, tree)
    if specs is None:
        specs = LAST_TWO_AXES
    if isinstance(specs, MuonDimensionNumbers):
        return jax.tree.map(lambda _: specs, tree)
    return jax.tree.map(
        lambda spec, sub: jax.tree.map(lambda _: spec, sub),
        specs,
        tree,
        is_leaf=is_spec_leaf,
    )


def check_fits(
    tree: Any, dimension_numbers: WeightDimensionNumbers, caller: str
) -> None:
    """Raise now (at ``init``) if the spec does not fit ``tree``'s shapes."""
    if tree is not None:
        map_matrices(lambda x, view: x, tree, dimension_numbers, caller)
