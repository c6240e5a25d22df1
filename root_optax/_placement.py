"""Batches of matrices: grouped by shape, placed on the mesh, and put back.

The matrix path of ROOT runs one kernel (clip, Newton–Schulz, or both) on every
matrix of a tree, where a leaf may hold many matrices (the layers of a stacked
weight, or any batch axes its dimension numbers name). :func:`map_matrix_batches`
does it once for every mode:

1. every matrix leaf is viewed as a ``(batch, rows, cols)`` stack
   (:class:`~root_optax._dimension_numbers.MatrixView`);
2. stacks of the same wide shape ``(min, max)`` and dtype are turned to the
   wide orientation and concatenated into one batch per shape;
3. the batch axis is *placed*: left where the leaves lie (the default: a
   sharded matrix stays sharded and the compiler partitions its products), or
   distributed (``distributed=``): padded to a multiple of the device count
   and resharded so that every device holds whole matrices, its share;
4. the kernel runs on each batch, and the results go back to the leaves'
   layouts and shardings.

Leaves sharded over explicit mesh axes run inside :func:`jax.sharding.auto_axes`
(the compiler chooses intermediate shardings) and come back in exactly their
shardings. Under explicit axes the distributed moves are all-to-alls over one
mesh axis at a time, never gathers; a mesh axis of more than
:data:`_MAX_ALL_TO_ALL_GROUP` devices is split into sub-axes first (the same
devices in the same order) and moved one sub-axis at a time. Under Auto axes
(layouts unknown while tracing) the compiler is steered through the same
one-axis-at-a-time steps (:func:`_unknown_route`).
"""

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

from root_optax import _dimension_numbers

Distributed = bool | Mesh | AbstractMesh
"""``False`` (each matrix where it lies), ``True`` (the mesh set with
:func:`jax.set_mesh`) or the :class:`jax.sharding.Mesh` to distribute over."""

Kernel = Callable[[jax.Array, tuple[int, int], Any], tuple[jax.Array, dict]]
"""``kernel(batch, (m, n), dynamic) -> (batch, stats)``: a ``(B, m, n)`` batch of
wide (``m <= n``) matrices in, the same shape and dtype out, each matrix on its
own, and a dict of per-matrix statistics of shape ``(B,)`` (often empty).
``dynamic`` holds the values it uses that may be traced."""

Layout = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]
"""Mesh axes of the ``(batch, rows, cols)`` dimensions of a stack."""


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
    compute: Callable, args: tuple, shardings: tuple, dynamic: Any
) -> Any:
    """``compute(*args, dynamic)`` with every mesh axis Auto, outputs in
    ``shardings`` (a tree of shardings matching the outputs).

    Under explicit axes, reshapes of sharded dimensions and products over
    sharded contractions need an output sharding at every step; inside
    :func:`jax.sharding.auto_axes` the compiler chooses them, and the outputs
    come back in the explicit ``shardings`` given. The arrays in ``dynamic``
    (hyperparameters from :func:`optax.inject_hyperparams`) enter as arguments:
    a traced value captured from outside keeps the explicit mesh's type.
    """
    flat, treedef = jax.tree.flatten(dynamic)
    traced = [isinstance(c, jax.Array) for c in flat]

    def inner(*inputs):
        rest = iter(inputs[len(args) :])
        leaves = [next(rest) if t else c for c, t in zip(flat, traced)]
        return compute(*inputs[: len(args)], jax.tree.unflatten(treedef, leaves))

    extra = tuple(c for c, t in zip(flat, traced) if t)
    mesh = jax.tree.leaves(shardings)[0].mesh
    with jax.sharding.use_abstract_mesh(mesh):
        return jax.sharding.auto_axes(inner, out_sharding=shardings)(*args, *extra)


def _mesh_for(fn: str, distributed: Distributed, leaves) -> Mesh | AbstractMesh:
    """The mesh to distribute over: the one given, the ambient one, or the mesh
    of explicitly sharded leaves."""
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


def _auto_mesh(mesh: Mesh | AbstractMesh) -> Mesh | AbstractMesh:
    """``mesh`` with every axis Auto, as sharding constraints need."""
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    auto = (AxisType.Auto,) * len(mesh.axis_names)
    if isinstance(mesh, Mesh):
        return Mesh(mesh.devices, mesh.axis_names, axis_types=auto)
    return mesh.update_axis_types(dict(zip(mesh.axis_names, auto)))


def _current_auto_mesh(mesh: Mesh | AbstractMesh) -> Mesh | AbstractMesh:
    """The Auto twin of ``mesh``; inside auto_axes, the ambient one."""
    ambient = jax.sharding.get_abstract_mesh()
    same = lambda a, b: (
        (tuple(a.axis_names), tuple(a.axis_sizes))
        == (
            tuple(b.axis_names),
            tuple(b.axis_sizes),
        )
    )
    if not ambient.empty and same(ambient, mesh):
        mesh = ambient
    return _auto_mesh(mesh)


class _NotBlock(Exception):
    pass


def stack_layout(
    sharding: NamedSharding, view: _dimension_numbers.MatrixView
) -> Layout | None:
    """Mesh axes of the ``(batch, rows, cols)`` dimensions of
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


_MAX_ALL_TO_ALL_GROUP = 64
"""Most devices one distributed move crosses in one all-to-all. libtpu's compile
time of an all-to-all grows steeply past this (v5e, one resharding of a stack:
0.4 s over 64 devices, 1.6 s over 128, 11.5 s over 256), so a larger mesh axis is
moved in factors (a 256-device axis as two all-to-alls over 16)."""


def _factors(size: int) -> list[int]:
    """``size`` as a product of factors of at most :data:`_MAX_ALL_TO_ALL_GROUP`
    (major first) where its divisors allow, else fewer, larger ones."""
    if size <= _MAX_ALL_TO_ALL_GROUP:
        return [size]
    major = max(p for p in range(1, math.isqrt(size) + 1) if size % p == 0)
    if major == 1:  # a prime: one all-to-all it is
        return [size]
    return _factors(major) + _factors(size // major)


class _Refined(NamedTuple):
    """An Auto mesh with every large axis split into sub-axes (major first, the
    same devices in the same order), and each original axis's sub-axes."""

    mesh: Mesh | AbstractMesh
    parts: dict[str, tuple[str, ...]]

    def axes(self, names: Sequence[str]) -> tuple[str, ...]:
        """The sub-axes of ``names``, in the same major-to-minor order."""
        return tuple(sub for name in names for sub in self.parts[name])


def _refine(mesh: Mesh | AbstractMesh) -> _Refined:
    """:class:`_Refined` of an Auto ``mesh``: ``P(None, 'fsdp')`` over a
    256-device axis is ``P(None, ('fsdp#0', 'fsdp#1'))`` over ``16 x 16``."""
    names, sizes, parts = [], [], {}
    for name, size in zip(mesh.axis_names, mesh.axis_sizes):
        factors = _factors(size)
        sub = (
            (name,)
            if len(factors) == 1
            else tuple(f"{name}#{i}" for i in range(len(factors)))
        )
        parts[name] = sub
        names += sub
        sizes += factors
    if len(names) == len(mesh.axis_names):
        return _Refined(mesh, parts)
    types = (AxisType.Auto,) * len(names)
    if isinstance(mesh, Mesh):
        fine = Mesh(mesh.devices.reshape(sizes), tuple(names), axis_types=types)
    else:
        fine = mesh.update(
            axis_sizes=tuple(sizes), axis_names=tuple(names), axis_types=types
        )
    return _Refined(fine, parts)


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


def _unknown_route(refined: _Refined) -> list[PartitionSpec]:
    """Shardings that take a stack of unknown layout (Auto axes) to whole
    matrices per device.

    First the batch unsharded (the stack as concatenated, its matrices sharded
    as the compiler likes), then the mesh axes join the batch one at a time,
    the last mesh axis first and the sub-axes of a split one minor first, the
    matrix dimensions left to the compiler: from a matrix sharded over that
    axis each step is one all-to-all over it. Asked for the whole batch split
    at once, XLA moves a 256-device axis in one all-to-all over all of it and
    gathers some stacks outright (8 CPU devices, 2 x 4 mesh: 13 all-gathers,
    18.5 MiB, against 2, 3 MiB, staged); without the first step it gathers the
    leaves to concatenate them (the 1B model on 256 TPU chips). The last entry
    shards the batch over every mesh axis.
    """
    free = PartitionSpec.UNCONSTRAINED
    batch, specs = [], [PartitionSpec(None, free, free)]
    for subs in reversed(list(refined.parts.values())):
        for sub in reversed(subs):
            batch.append(sub)
            specs.append(PartitionSpec(tuple(batch), free, free))
    batch += [a for a in refined.mesh.axis_names if a not in batch]
    return specs + [_spec(batch)]


def _wide(x: jax.Array, tall: bool) -> jax.Array:
    return jnp.swapaxes(x, 1, 2) if tall else x


def _concat(parts: Sequence[jax.Array]) -> jax.Array:
    return jnp.concatenate(parts) if len(parts) > 1 else parts[0]


def _split(x: jax.Array, sizes: Sequence[int]) -> list[jax.Array]:
    if len(sizes) == 1:
        return [x]
    bounds = np.cumsum((0, *sizes)).tolist()
    return [x[a:b] for a, b in itertools.pairwise(bounds)]


def _split_with_stats(
    out: jax.Array, stats: dict[str, jax.Array], sizes: Sequence[int]
) -> list[tuple[jax.Array, dict]]:
    """``out`` and each ``(B,)`` statistic cut into consecutive ``sizes``."""
    pieces = _split(out, sizes)
    stat_pieces = {n: _split(v, sizes) for n, v in stats.items()}
    return [
        (piece, {n: v[k] for n, v in stat_pieces.items()})
        for k, piece in enumerate(pieces)
    ]


def apply_by_shape(
    kernel: Kernel, parts: Sequence[jax.Array], keys: Sequence[Any], dynamic: Any
) -> list[tuple[jax.Array, dict]]:
    """Run ``kernel`` once per batch of ``parts`` with equal keys.

    Each part is a ``(b, rows, cols)`` stack; parts with the same ``key`` (which
    must determine the wide shape and dtype) are turned wide, concatenated,
    processed by one kernel call and split back into their own orientation,
    each with its slice of the per-matrix statistics.
    """
    batches: dict[Any, list[int]] = {}
    for j, key in enumerate(keys):
        batches.setdefault(key, []).append(j)
    outs: list[Any] = [None] * len(parts)
    for js in batches.values():
        tall = [parts[j].shape[1] > parts[j].shape[2] for j in js]
        wide = _concat([_wide(parts[j], t) for j, t in zip(js, tall)])
        out, stats = kernel(wide, tuple(wide.shape[1:]), dynamic)
        sizes = [parts[j].shape[0] for j in js]
        for j, t, (piece, s) in zip(js, tall, _split_with_stats(out, stats, sizes)):
            outs[j] = (_wide(piece, t), s)
    return outs


class _Matrices(NamedTuple):
    """The matrix leaves of a tree and how to view each as a stack."""

    leaves: tuple[jax.Array, ...]
    views: tuple[_dimension_numbers.MatrixView, ...]
    layouts: tuple[Layout | None, ...]
    marked: Any  # the tree, with _Slot where each matrix leaf was


class _Slot(NamedTuple):
    index: int


def _collect(fn: str, tree: Any, dimension_numbers) -> _Matrices:
    found: list[tuple[jax.Array, _dimension_numbers.MatrixView]] = []

    def collect(u, view):
        if math.prod(view.shape) == 0:
            return u  # zero-size: nothing to compute, passes through
        found.append((u, view))
        return _Slot(len(found) - 1)

    marked = _dimension_numbers.map_matrices(collect, tree, dimension_numbers, fn)
    leaves = tuple(u for u, _ in found)
    views = tuple(v for _, v in found)
    layouts = []
    for u, v in found:
        sharding = explicit_sharding(u)
        layouts.append(None if sharding is None else stack_layout(sharding, v))
    return _Matrices(leaves, views, tuple(layouts), marked)


def _wide_key(view, layout, dtype) -> tuple:
    """Batch key of the default placement: wide shape, dtype, and the stack's
    layout in the wide orientation (stacks that lie differently are not merged,
    so nothing is resharded)."""
    rows, cols = view.matrix_shape
    if layout is not None and rows > cols:
        layout = (layout[0], layout[2], layout[1])
    return (min(rows, cols), max(rows, cols), np.dtype(dtype), layout)


def _in_place(kernel: Kernel, mats: _Matrices, arrays, dynamic) -> list:
    """Default placement: every batch where its matrices lie."""
    parts = [v.to_batch(x) for v, x in zip(mats.views, arrays)]
    keys = [
        _wide_key(v, layout, x.dtype)
        for v, layout, x in zip(mats.views, mats.layouts, arrays)
    ]
    return apply_by_shape(kernel, parts, keys, dynamic)


def _distributed(kernel: Kernel, mats: _Matrices, arrays, dynamic, mesh) -> list:
    """Distributed placement: batches padded and split over all mesh devices.

    Stacks are formed per shape, dtype and layout (they move alike, see
    ``_route``); on each device the local stacks of one wide shape are
    merged for one kernel call, with no communication.
    """
    use = _current_auto_mesh(mesh)
    refined = _refine(use)
    if refined.mesh is use:
        return _distributed_on(kernel, mats, arrays, dynamic, refined)
    # Sharding constraints and shard_map over the refined mesh need it ambient.
    fine = refined.mesh
    with jax.sharding.use_abstract_mesh(
        fine.abstract_mesh if isinstance(fine, Mesh) else fine
    ):
        return _distributed_on(kernel, mats, arrays, dynamic, refined)


def _distributed_on(kernel, mats: _Matrices, arrays, dynamic, refined: _Refined):
    """:func:`_distributed` on the refined mesh (the ambient mesh)."""
    use = refined.mesh
    axes, devices = tuple(use.axis_names), math.prod(use.axis_sizes)
    constrain = lambda x, spec: jax.lax.with_sharding_constraint(
        x, NamedSharding(use, spec)
    )
    groups: dict[tuple, list[int]] = {}
    for i, (view, layout) in enumerate(zip(mats.views, mats.layouts)):
        if layout is not None:
            layout = tuple(refined.axes(entry) for entry in layout)
        key = (*view.matrix_shape, np.dtype(arrays[i].dtype), layout)
        groups.setdefault(key, []).append(i)
    stacks, routes = [], []
    for (rows, cols, dtype, layout), members in groups.items():
        parts = [mats.views[i].to_batch(arrays[i]) for i in members]
        pad = -sum(p.shape[0] for p in parts) % devices
        if pad:
            parts.append(jnp.zeros((pad, rows, cols), dtype))
        route = _route(layout, axes) if layout else _unknown_route(refined)
        stack = _concat(parts)
        for spec in route:
            stack = constrain(stack, spec)
        stacks.append(stack)
        routes.append(route)
    keys = [(min(r, c), max(r, c), d) for r, c, d, _ in groups]
    owned = [route[-1] for route in routes]
    batch_only = [PartitionSpec(axes)] * len(owned)
    # No collectives inside, so no varying-axes bookkeeping is needed (and
    # loops inside the kernel may start from unvarying constants).
    outs = jax.shard_map(
        lambda local: tuple(
            map(list, zip(*apply_by_shape(kernel, local, keys, dynamic)))
        ),
        mesh=use,
        in_specs=(owned,),
        out_specs=(owned, batch_only),
        check_vma=False,
    )(stacks)
    results: list[Any] = [None] * len(arrays)
    for members, out, stats, route in zip(groups.values(), *outs, routes):
        for spec in reversed(route[:-1]):
            out = constrain(out, spec)
        stats = {n: constrain(v, PartitionSpec()) for n, v in stats.items()}
        sizes = [mats.views[i].batch for i in members]
        total = sum(sizes)  # drop the padding
        stats = {n: v[:total] for n, v in stats.items()}
        for i, result in zip(members, _split_with_stats(out[:total], stats, sizes)):
            results[i] = result
    return results


def matrix_count(fn: str, tree: Any, dimension_numbers) -> int:
    """How many matrices :func:`map_matrix_batches` processes in ``tree`` (the
    length of its statistics vectors)."""
    return sum(v.batch for v in _collect(fn, tree, dimension_numbers).views)


def zero_statistics(
    fn: str, tree: Any, dimension_numbers, names: Sequence[str]
) -> dict[str, jax.Array]:
    """``{name: zeros((N,))}`` for the :func:`matrix_count` matrices of ``tree``
    (``N = 0`` when ``tree`` is ``None``): the initial statistics state."""
    count = 0 if tree is None else matrix_count(fn, tree, dimension_numbers)
    return {n: jnp.zeros((count,), jnp.float32) for n in names}


def map_matrix_batches(
    fn: str,
    kernel: Kernel,
    tree: Any,
    dimension_numbers: _dimension_numbers.WeightDimensionNumbers,
    distributed: Distributed = False,
    dynamic: Any = (),
    stat_names: Sequence[str] = (),
) -> tuple[Any, dict[str, jax.Array]]:
    """Apply ``kernel`` to every matrix of ``tree``, as batches of one wide shape.

    See the module docstring for the steps. ``distributed`` (checked) places
    each batch on the mesh's devices, whole matrices per device; ``dynamic``
    holds the values ``kernel`` uses that may be traced; ``stat_names`` the
    statistics it returns. Leaves that are not
    matrices (``None`` specs, :class:`optax.MaskedNode`) and zero-size leaves
    pass through. Errors name ``fn``.

    Returns:
      The new tree, and the kernel's statistics: ``{name: (N,)}`` over the
      :func:`matrix_count` matrices in tree order (the layers of a stacked
      leaf in order), replicated.
    """
    mats = _collect(fn, tree, dimension_numbers)
    if not mats.leaves:
        return mats.marked, {n: jnp.zeros((0,), jnp.float32) for n in stat_names}
    if distributed is False:
        place = _in_place
    else:
        mesh = _mesh_for(fn, distributed, mats.leaves)
        place = lambda *args: _distributed(*args, mesh=mesh)

    def compute(*inputs):
        *arrays, dyn = inputs
        outs = place(kernel, mats, arrays, dyn)
        leaves = tuple(
            v.from_batch(out).astype(x.dtype)
            for v, (out, _), x in zip(mats.views, outs, arrays)
        )
        stats = {n: _concat([s[n] for _, s in outs]) for n in stat_names}
        return leaves, stats

    if any(explicit_sharding(u) is not None for u in mats.leaves):
        shardings = tuple(jax.typeof(u).sharding for u in mats.leaves)
        replicated = NamedSharding(shardings[0].mesh, PartitionSpec())
        stat_shardings = {n: replicated for n in stat_names}
        outs, stats = _with_auto_axes(
            compute, mats.leaves, (shardings, stat_shardings), dynamic
        )
    else:
        outs, stats = compute(*mats.leaves, dynamic)
    tree = jax.tree.map(
        lambda x: outs[x.index] if isinstance(x, _Slot) else x,
        mats.marked,
        is_leaf=lambda x: isinstance(x, _Slot),
    )
    return tree, stats
