"""Sharded matrices: kernels that never gather, and distributed orthogonalization.

Two concerns of the matrix path on a mesh live here:

* running a per-matrix kernel on a leaf sharded over explicit mesh axes
  (:func:`map_leaf`), and clipping with a threshold computed by reductions only
  (:func:`clip_matrices`, :func:`clip_transform`), so no matrix is gathered;
* the distributed mode (:func:`map_owned`): every matrix (every slice of a
  stacked leaf) is moved, whole, to one device; each device runs the kernel on
  its share only, and the results go back to the leaves' shardings.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

from root_optax import _dimension_numbers, _quantile

Distributed = bool | Mesh | AbstractMesh
"""``False`` (each matrix where it lies), ``True`` (the mesh set with
:func:`jax.set_mesh`) or the :class:`jax.sharding.Mesh` to distribute over."""


def check_distributed(fn: str, distributed: Any) -> Distributed:
    """Validate a ``distributed=`` argument, reported as ``fn(distributed=...)``."""
    if isinstance(distributed, bool):
        return distributed
    if isinstance(distributed, (Mesh, AbstractMesh)):
        if distributed.empty:
            raise ValueError(
                f"{fn}(distributed=...) got an empty mesh, distributed={distributed!r};"
                " expected a mesh with at least one axis."
            )
        return distributed
    raise TypeError(
        f"{fn}(distributed=...) must be False, True (use the mesh set with "
        "jax.set_mesh) or a jax.sharding.Mesh, got "
        f"distributed={distributed!r}."
    )


def explicit_sharding(x: Any) -> NamedSharding | None:
    """``x``'s sharding when its type carries one over explicit mesh axes."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    if isinstance(sharding, NamedSharding) and AxisType.Explicit in (
        sharding.mesh.axis_types
    ):
        return sharding
    return None


def _with_auto_axes(
    kernel: Callable, args: tuple, shardings: tuple, consts: Any = ()
) -> Any:
    """``kernel(*args, consts)`` with every mesh axis Auto, outputs (a tuple) in
    ``shardings``.

    Under explicit axes, reshapes of sharded dimensions and products over
    sharded contractions need an output sharding at every step; inside
    :func:`jax.sharding.auto_axes` the compiler chooses them, as under Auto
    axes, and the outputs come back in the explicit ``shardings`` given.
    ``consts`` holds what the kernel would otherwise close over that may be
    traced (hyperparameters from :func:`optax.inject_hyperparams`): those arrays
    enter as arguments, since a traced value captured from outside keeps the
    explicit mesh's type.
    """
    flat, treedef = jax.tree.flatten(consts)
    traced = [isinstance(c, jax.Array) for c in flat]

    def inner(*inputs):
        dynamic = iter(inputs[len(args) :])
        leaves = [next(dynamic) if t else c for c, t in zip(flat, traced)]
        return kernel(*inputs[: len(args)], jax.tree.unflatten(treedef, leaves))

    dynamic = tuple(c for c, t in zip(flat, traced) if t)
    with jax.sharding.use_abstract_mesh(shardings[0].mesh):
        return jax.sharding.auto_axes(inner, out_sharding=shardings)(*args, *dynamic)


def map_leaf(
    kernel: Callable[[jax.Array, Any], jax.Array], x: jax.Array, consts: Any = ()
) -> jax.Array:
    """``kernel(x, consts)`` for a leaf that may be sharded over explicit axes.

    ``kernel`` must return an array of ``x``'s shape; it keeps ``x``'s sharding.
    ``consts`` are the values the kernel uses that may be traced, see
    :func:`_with_auto_axes`.
    """
    sharding = explicit_sharding(x)
    if sharding is None:
        return kernel(x, consts)
    wrapped = lambda y, c: (kernel(y, c),)
    return _with_auto_axes(wrapped, (x,), (sharding,), consts)[0]


def clip_matrices(batch: jax.Array, quantile, threshold, offset) -> jax.Array:
    """:func:`root_optax.robust_clip`'s rule on a ``(batch, m, n)`` stack.

    Each matrix is clipped to ``[-eps, eps]`` with ``eps = threshold`` or its own
    ``abs_quantile(quantile) + offset`` (reductions only, no reshape). Complex
    entries keep their phase: their magnitude is clipped to ``eps``.
    """
    if batch.size == 0:
        return batch
    real_dtype = jnp.finfo(batch.dtype).dtype
    if threshold is not None:
        eps = jnp.asarray(threshold, real_dtype)
    else:
        eps = jax.vmap(lambda m: _quantile.abs_quantile(m, quantile))(batch)
        eps = (eps + offset).astype(real_dtype)[:, None, None]
    if not jnp.iscomplexobj(batch):
        return jnp.clip(batch, -eps, eps)
    magnitude = jnp.abs(batch)
    shrink = jnp.where(magnitude > eps, eps / jnp.where(magnitude > 0, magnitude, 1), 1)
    return batch * shrink.astype(real_dtype)


def clip_transform(
    fn: str, quantile, threshold, offset, weight_dimension_numbers
) -> optax.GradientTransformation:
    """:func:`root_optax.robust_clip` (arguments already checked) for sharded leaves.

    Same rule and state as ``robust_clip``; each matrix's threshold is computed
    by reductions over its own axes (a sharded matrix is never gathered) and a
    leaf sharded over explicit mesh axes keeps its sharding. Errors name ``fn``.
    """

    def clip_leaf(u, view):
        def kernel(x, consts):
            out = clip_matrices(view.to_batch(x), *consts)
            return view.from_batch(out).astype(x.dtype)

        return map_leaf(kernel, u, (quantile, threshold, offset))

    def init_fn(params):
        _dimension_numbers.check_fits(params, weight_dimension_numbers, fn)
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        updates = _dimension_numbers.map_matrices(
            clip_leaf, updates, weight_dimension_numbers, fn
        )
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


class _Slot:
    """Marks where the ``index``-th matrix leaf sits in a tree."""

    def __init__(self, index: int):
        self.index = index


def _mesh_for(fn: str, distributed: Distributed, leaves) -> Mesh | AbstractMesh:
    """The mesh to distribute over: the one given, the ambient one, or the mesh of
    explicitly sharded leaves."""
    if not isinstance(distributed, bool):
        return distributed
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
        return mesh
    for leaf in leaves:
        sharding = explicit_sharding(leaf)
        if sharding is not None:
            return sharding.mesh
    raise ValueError(
        f"{fn}(distributed=True) found no mesh: call update inside "
        "`with jax.set_mesh(mesh):`, shard the params over explicit mesh axes, or "
        "pass the mesh itself as distributed=mesh."
    )


def _same_axes(a, b) -> bool:
    axes = lambda mesh: (tuple(mesh.axis_names), tuple(mesh.axis_sizes))
    return axes(a) == axes(b)


def _auto_mesh(mesh: Mesh | AbstractMesh) -> Mesh | AbstractMesh:
    """``mesh`` with every axis Auto, as sharding constraints need."""
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    auto = (AxisType.Auto,) * len(mesh.axis_names)
    if isinstance(mesh, Mesh):
        return Mesh(mesh.devices, mesh.axis_names, axis_types=auto)
    return mesh.update_axis_types(dict(zip(mesh.axis_names, auto)))


Layout = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]


class _NotBlock(Exception):
    pass


def _stack_layout(
    sharding: NamedSharding, view: _dimension_numbers.MatrixView
) -> Layout | None:
    """Mesh axes of the ``(batch, fan_in, fan_out)`` dimensions of
    ``view.to_batch(leaf)`` for a leaf with this explicit sharding; ``None`` when
    that stack is not block-sharded (a merge of dimensions sharded after the
    first). Axes of size 1 are left out."""
    sizes = dict(zip(sharding.mesh.axis_names, sharding.mesh.axis_sizes))
    spec = tuple(sharding.spec) + (None,) * (len(view.shape) - len(sharding.spec))

    def axes(entry):
        if entry is None:
            return ()
        if not isinstance(entry, (str, tuple)):
            raise _NotBlock
        entry = (entry,) if isinstance(entry, str) else entry
        return tuple(a for a in entry if sizes[a] > 1)

    try:
        dims = [(view.shape[i], axes(spec[i])) for i in view.transpose]
    except _NotBlock:
        return None
    layout = []
    for target in (view.batch, view.fan_in, view.fan_out):
        size, group = 1, []
        while size != target:
            group.append(dims.pop(0))
            size *= group[-1][0]
        sharded = [a for n, a in group if n > 1]
        if any(sharded[1:]):
            return None
        layout.append(sharded[0] if sharded else ())
    if any(a for _, a in dims):
        return None
    return tuple(layout)


def _spec(batch, rows=(), cols=()) -> PartitionSpec:
    return PartitionSpec(*(tuple(a) or None for a in (batch, rows, cols)))


def _route(layout: Layout, mesh_axes: tuple[str, ...]) -> list[PartitionSpec]:
    """Shardings that take a stack from ``layout`` to whole matrices per device.

    One mesh axis moves at a time from a matrix dimension (its minor end) to
    the batch dimension, so each step is one all-to-all over that axis; the
    mesh axes the stack is replicated over come last (a local slice). The last
    entry shards the batch over every mesh axis.
    """
    batch, rows, cols = (list(a) for a in layout)
    specs = [_spec(batch, rows, cols)]
    for dim in (cols, rows):
        while dim:
            batch.append(dim.pop())
            specs.append(_spec(batch, rows, cols))
    batch += [a for a in mesh_axes if a not in batch]
    specs.append(_spec(batch))
    return specs


def map_owned(
    fn: str,
    kernel: Callable[[jax.Array, tuple[int, int], Any], jax.Array],
    tree: Any,
    dimension_numbers: _dimension_numbers.WeightDimensionNumbers,
    distributed: Distributed,
    consts: Any = (),
) -> Any:
    """Apply ``kernel`` to every matrix of ``tree``, each device on whole matrices.

    The matrices (every slice of a stacked leaf) of one shape, dtype and (under
    explicit axes) sharding layout are stacked into a ``(batch, m, n)`` array,
    padded with zero matrices to a multiple of the mesh's device count and
    resharded so that the batch is split over all mesh axes: each device holds
    whole matrices. Under :func:`jax.shard_map` each device then takes its
    matrices of one ``(min(m, n), max(m, n))`` shape, tall ones transposed, and
    runs ``kernel(local_stack, (min, max), consts)`` on them: local work, no
    communication (``consts``: values the kernel uses that may be traced, see
    :func:`_with_auto_axes`). The results go back the same way to the leaves' shardings.

    Under explicit axes the leaves' shardings are known when tracing: a stack
    moves to its owners one mesh axis at a time (all-to-alls, see
    :func:`_route`), never gathered, and the updates come back in exactly the
    leaves' shardings. Under Auto axes one sharding constraint leaves the
    transfer to the compiler (which may gather a stack sharded over several
    axes), and the updates' shardings are the compiler's choice.

    ``kernel`` must treat each matrix of the stack independently and return an
    array of the stack's shape and dtype.
    """
    slots: list[tuple[jax.Array, _dimension_numbers.MatrixView]] = []

    def collect(u, view):
        slots.append((u, view))
        return _Slot(len(slots) - 1)

    marked = _dimension_numbers.map_matrices(collect, tree, dimension_numbers, fn)
    if not slots:
        return tree
    leaves = tuple(u for u, _ in slots)
    views = [view for _, view in slots]
    mesh = _mesh_for(fn, distributed, leaves)
    explicit = tuple(explicit_sharding(u) for u in leaves)
    layouts = [
        None if sharding is None else _stack_layout(sharding, view)
        for sharding, view in zip(explicit, views)
    ]

    def compute(*inputs):
        *leaves, consts = inputs
        ambient = jax.sharding.get_abstract_mesh()
        # Inside auto_axes the ambient mesh is the Auto-typed twin of the mesh.
        use = ambient if not ambient.empty and _same_axes(ambient, mesh) else mesh
        use = _auto_mesh(use)
        mesh_axes = tuple(use.axis_names)
        devices = math.prod(use.axis_sizes)
        constrain = lambda x, spec: jax.lax.with_sharding_constraint(
            x, NamedSharding(use, spec)
        )
        # Stacks: one per matrix shape, dtype and layout (moved alike).
        members: dict[tuple, list[int]] = {}
        for i, view in enumerate(views):
            key = (*view.matrix_shape, np.dtype(leaves[i].dtype), layouts[i])
            members.setdefault(key, []).append(i)
        stacks, routes = [], []
        for (rows, cols, dtype, layout), items in members.items():
            parts = [views[i].to_batch(leaves[i]) for i in items]
            pad = -sum(p.shape[0] for p in parts) % devices
            if pad:
                parts.append(jnp.zeros((pad, rows, cols), dtype))
            stack = jnp.concatenate(parts) if len(parts) > 1 else parts[0]
            route = _route(layout, mesh_axes) if layout else [_spec(mesh_axes)]
            for spec in route:
                stack = constrain(stack, spec)
            stacks.append(stack)
            routes.append(route)
        # Kernel calls: one per wide shape and dtype, over the local stacks.
        calls: dict[tuple, list[int]] = {}
        for j, (rows, cols, dtype, _) in enumerate(members):
            calls.setdefault((min(rows, cols), max(rows, cols), dtype), []).append(j)
        tall = [rows > cols for rows, cols, _, _ in members]

        def local(stacks):
            outs = list(stacks)
            for (rows, cols, _), js in calls.items():
                wide = [
                    jnp.swapaxes(stacks[j], 1, 2) if tall[j] else stacks[j] for j in js
                ]
                stack = jnp.concatenate(wide) if len(wide) > 1 else wide[0]
                out = kernel(stack, (rows, cols), consts)
                start = 0
                for j in js:
                    piece = out[start : start + stacks[j].shape[0]]
                    start += stacks[j].shape[0]
                    outs[j] = jnp.swapaxes(piece, 1, 2) if tall[j] else piece
            return outs

        # No collectives inside, so no varying-axes bookkeeping is needed (and
        # the quantile's fori_loop starts from unvarying constants).
        owned_specs = [route[-1] for route in routes]
        owned = jax.shard_map(
            local,
            mesh=use,
            in_specs=(owned_specs,),
            out_specs=owned_specs,
            check_vma=False,
        )
        outs = owned(stacks)
        results: list[Any] = [None] * len(leaves)
        for items, out, route in zip(members.values(), outs, routes):
            for spec in reversed(route[:-1]):
                out = constrain(out, spec)
            start = 0
            for i in items:
                piece = out[start : start + views[i].batch]
                start += views[i].batch
                results[i] = views[i].from_batch(piece).astype(leaves[i].dtype)
        return tuple(results)

    if any(s is not None for s in explicit):
        shardings = tuple(jax.typeof(u).sharding for u in leaves)
        outs = _with_auto_axes(compute, leaves, shardings, consts)
    else:
        outs = compute(*leaves, consts)
    return jax.tree.map(
        lambda x: outs[x.index] if isinstance(x, _Slot) else x,
        marked,
        is_leaf=lambda x: isinstance(x, _Slot),
    )
