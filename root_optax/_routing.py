"""Which parameters are matrices for ROOT and which go to AdamW, and a report of it."""

import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import numpy as np
from optax.contrib import MuonDimensionNumbers

from root_optax import (
    _coefficient_table,
    _coefficients,
    _dimension_numbers,
    _validation,
)

ConvRule = Literal["adamw", "matrix"]


def _path_string(path) -> str:
    """``jax.tree_util.keystr`` of ``path``, the same for NNX Variables and arrays.

    Flax NNX initialises with Variable leaves (the path ends in ``.value``) and
    updates with plain arrays: both must give the same string.
    """
    last = path[-1] if path else None
    if isinstance(last, jax.tree_util.GetAttrKey) and last.name == "value":
        path = path[:-1]
    return jax.tree_util.keystr(path)


def _compile_patterns(fn: str, arg: str, names) -> list[re.Pattern]:
    if isinstance(names, str):
        names = (names,)
    if not isinstance(names, Sequence):
        raise TypeError(
            f"{fn}({arg}=...) must be a sequence of regular expressions, got "
            f"{arg}={names!r}."
        )
    patterns = []
    for name in names:
        try:
            patterns.append(re.compile(name, re.IGNORECASE))
        except (re.error, TypeError) as err:
            raise ValueError(
                f"{fn}({arg}=...) entries must be regular expressions, got "
                f"{name!r}: {err}."
            ) from None
    return patterns


def _leaf_spec(ndim: int, stacked: bool, conv: ConvRule) -> MuonDimensionNumbers | None:
    """Dimension numbers of one leaf from its rank (``None``: AdamW).

    A stacked leaf has one leading layer axis (a batch axis); what remains is a
    vector or scalar (AdamW), a matrix, or a convolution kernel
    ``(*window, fan_in, fan_out)`` (AdamW, or with ``conv="matrix"`` one matrix
    of fan-in ``prod(window) * fan_in`` per layer).
    """
    first = 1 if stacked else 0
    per_layer = ndim - first
    if per_layer < 2 or (per_layer > 2 and conv == "adamw"):
        return None
    if per_layer == 2 and not stacked:
        return MuonDimensionNumbers()
    reduction = tuple(range(first, ndim - 1))
    return MuonDimensionNumbers(
        reduction_axis=reduction if len(reduction) > 1 else reduction[0],
        output_axis=ndim - 1,
    )


def matrix_dimension_numbers(
    adamw_names: Sequence[str] = (),
    *,
    stacked: bool | str | Sequence[str] = False,
    conv: ConvRule = "adamw",
) -> Callable[[Any], Any]:
    r"""Build a ``weight_dimension_numbers`` callable that routes by path and rank.

    The callable maps a params tree to a tree of
    :class:`optax.contrib.MuonDimensionNumbers` (matrix path) or ``None``
    (AdamW in :func:`root`). A leaf goes to AdamW when any regular expression in
    ``adamw_names`` matches its path (``jax.tree_util.keystr``, e.g.
    ``"['embed']['embedding']"``, searched case-insensitively). Otherwise its
    rank decides, after removing the layer axis of a stacked leaf (a leaf of a
    scan-over-layers model, as Linen ``nn.scan`` and NNX ``nnx.vmap`` make it,
    has one leading layer axis):

    ========================  ===============================================
    rank without layer axis   route
    ========================  ===============================================
    0 or 1                    AdamW (biases, norm scales; a stacked ``(L, d)``
                              bias is a vector per layer)
    2                         a matrix (per layer: a batch of ``L`` matrices)
    3 or more                 a convolution kernel ``(*window, in, out)``:
                              AdamW, or with ``conv="matrix"`` one matrix of
                              shape ``(prod(window) * in, out)`` (per layer)
    ========================  ===============================================

    Print :func:`routing_table` of your params to check the result.

    Args:
      adamw_names: regular expressions for paths to send to AdamW, typically
        ``("embed", "head")``.
      stacked: which leaves have a leading layer axis: ``False`` (none),
        ``True`` (every leaf: a model whose parameters all live in the scanned
        block) or regular expressions of paths (e.g. ``"layers"`` for leaves
        under a ``layers`` module), so that leaves outside the scan keep their
        own rank.
      conv: ``"adamw"`` or ``"matrix"``, for leaves of rank 3+ (after removing a
        layer axis).

    Returns:
      A callable ``params -> tree`` to pass as ``weight_dimension_numbers``.
      Under :func:`optax.inject_hyperparams` pass
      ``static_args=("weight_dimension_numbers",)`` (it takes every callable
      for a schedule); the callable raises a ``TypeError`` saying so otherwise.

    Raises:
      TypeError: ``stacked`` or ``conv`` of the wrong type.
      ValueError: a malformed regular expression or an unknown ``conv``.

    Examples:
      >>> import jax.numpy as jnp, root_optax
      >>> dims = root_optax.matrix_dimension_numbers(["embed"], stacked="layers")
      >>> dims({"embed": jnp.ones((9, 4)), "layers": {"w": jnp.ones((2, 4, 4)),
      ...       "b": jnp.ones((2, 4))}})
      {'embed': None, 'layers': {'b': None, 'w': MuonDimensionNumbers(reduction_axis=1, output_axis=2)}}
    """
    fn = "matrix_dimension_numbers"
    patterns = _compile_patterns(fn, "adamw_names", adamw_names)
    if isinstance(stacked, bool):
        stacked_patterns = None
    elif isinstance(stacked, (str, Sequence)):
        stacked_patterns = _compile_patterns(fn, "stacked", stacked)
    else:
        raise TypeError(
            f"{fn}(stacked=...) must be a bool or regular expressions of paths, got "
            f"stacked={stacked!r}."
        )
    if conv not in ("adamw", "matrix"):
        raise ValueError(
            f"{fn}(conv=...) must be 'adamw' or 'matrix', got conv={conv!r}."
        )

    def spec(path, leaf):
        key = _path_string(path)
        if any(p.search(key) for p in patterns):
            return None
        if stacked_patterns is None:
            is_stacked = stacked
        else:
            is_stacked = any(p.search(key) for p in stacked_patterns)
        return _leaf_spec(np.ndim(leaf), is_stacked, conv)

    def dimension_numbers(params):
        _reject_step_count(params)
        return jax.tree_util.tree_map_with_path(spec, params)

    return dimension_numbers


def _reject_step_count(params: Any) -> None:
    """Raise when a dimension-numbers rule is called with a step count.

    :func:`optax.inject_hyperparams` takes every callable argument for a
    schedule and calls it with the step count (an int32 scalar); the routing
    would then silently fall back to the default.
    """
    is_count = (
        isinstance(params, (jax.Array, np.ndarray, int))
        and not isinstance(params, bool)
        and np.ndim(params) == 0
        and np.issubdtype(np.asarray(params).dtype, np.integer)
    )
    if is_count:
        raise TypeError(
            "matrix_dimension_numbers(...) rule was called with an integer "
            f"scalar ({params!r}) instead of a params tree: "
            "optax.inject_hyperparams takes callables for schedules. Pass "
            "static_args=('weight_dimension_numbers',) to "
            "optax.inject_hyperparams."
        )


def labels(weight_dimension_numbers, params) -> Any:
    """``"root"`` for matrix leaves, ``"adamw"`` for the rest; checks the specs.

    With ``weight_dimension_numbers=None`` exactly the 2-D leaves are matrices.
    """
    if weight_dimension_numbers is None or not jax.tree.leaves(params):
        # (A leafless tree is optax.tree.map_params' placeholder.)
        return jax.tree.map(lambda x: "root" if np.ndim(x) == 2 else "adamw", params)
    # Raises (naming root) if a spec does not fit its leaf, e.g. a bias sent to
    # the matrix path, before any state is built.
    _dimension_numbers.check_fits(params, weight_dimension_numbers, "root")
    specs = _dimension_numbers.resolve(weight_dimension_numbers, params)
    if isinstance(specs, MuonDimensionNumbers):
        return jax.tree.map(lambda _: "root", params)
    label_subtree = lambda spec, sub: jax.tree.map(
        lambda _: "adamw" if spec is None else "root", sub
    )
    return jax.tree.map(
        label_subtree, specs, params, is_leaf=_dimension_numbers.is_spec_leaf
    )


def warn_if_default_routing_looks_stacked(fn: str, params) -> None:
    """Warn when the default routing (2-D leaves are matrices) meets rank 3+ leaves.

    Those are stacked layers or convolution kernels: by default they go to
    AdamW, and the 2-D biases of a stacked model go to Newton–Schulz.
    """
    leaves = jax.tree_util.tree_leaves_with_path(params)
    high = [(_path_string(p), np.shape(x)) for p, x in leaves if np.ndim(x) > 2]
    if not high:
        return
    path, shape = high[0]
    warnings.warn(
        f"{fn}(): {len(high)} parameter(s) of rank >= 3 (e.g. {path} of shape "
        f"{shape}) go to AdamW under the default routing, which treats exactly "
        "the 2-D leaves as matrices (in a scan-over-layers model that also "
        "orthogonalizes stacked (layers, d) biases). For stacked layers pass "
        "weight_dimension_numbers=root_optax.matrix_dimension_numbers([...], "
        "stacked=...); for convolutions conv='matrix'. Check with "
        "root_optax.routing_table(params, weight_dimension_numbers).",
        UserWarning,
        stacklevel=3,
    )


def _coefficient_source(ns_coeffs, matrix_shape, ns_steps: int) -> str:
    """Where ``ns_coeffs`` takes the coefficients of one matrix shape from."""
    key = (min(matrix_shape), max(matrix_shape))
    if callable(ns_coeffs) and not isinstance(ns_coeffs, str):
        return f"callable {getattr(ns_coeffs, '__name__', repr(ns_coeffs))}{key}"
    if not isinstance(ns_coeffs, str):
        return "user mapping" if isinstance(ns_coeffs, dict) else "user coefficients"
    if ns_coeffs == "reference":
        if key in _coefficients.REFERENCE_TABLE:
            return f"reference {key}"
        return "muon (reference fallback, warns)"
    if ns_coeffs == "muon":
        return "muon"
    return _root_source(key, ns_steps)


def _root_source(key, ns_steps: int) -> str:
    """Where the ``"root"`` preset takes one shape's coefficients from."""
    table = _coefficient_table.load()
    if key in table[ns_steps]:
        return f"root table {key}"
    return "root table, interpolated"


class LeafRoute(NamedTuple):
    """One row of :func:`routing_table`.

    Attributes:
      path: the leaf's path (``jax.tree_util.keystr``).
      shape: the leaf's shape.
      branch: ``"root"`` (momentum, clip, Newton–Schulz) or ``"adamw"``.
      matrix_shape: ``(fan_in, fan_out)`` of each matrix, or ``None``.
      batch: how many matrices the leaf holds (layers of a stack), or 0.
      coefficients: where the Newton–Schulz coefficients come from, or ``None``.
    """

    path: str
    shape: tuple[int, ...]
    branch: str
    matrix_shape: tuple[int, int] | None
    batch: int
    coefficients: str | None


class RoutingTable(tuple):
    """A tuple of :class:`LeafRoute` rows that prints as a table."""

    def __str__(self) -> str:
        header = ("path", "shape", "branch", "matrix", "batch", "coefficients")
        rows = [header] + [
            (
                r.path,
                str(r.shape),
                r.branch,
                "" if r.matrix_shape is None else "x".join(map(str, r.matrix_shape)),
                str(r.batch) if r.batch else "",
                r.coefficients or "",
            )
            for r in self
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows
        ]
        counts = {b: sum(r.branch == b for r in self) for b in ("root", "adamw")}
        matrices = sum(r.batch for r in self)
        lines.append(
            f"{counts['root']} leaves ({matrices} matrices) to ROOT, "
            f"{counts['adamw']} leaves to AdamW."
        )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)


def routing_table(
    params: Any,
    weight_dimension_numbers: _dimension_numbers.WeightDimensionNumbers = None,
    *,
    ns_coeffs: _coefficients.CoefficientSpec = "root",
    ns_steps: int | None = None,
) -> RoutingTable:
    """How :func:`root` routes ``params``: per leaf, the branch and the matrices.

    Takes the same routing arguments as :func:`root` and returns one
    :class:`LeafRoute` per leaf: its path, shape, branch (ROOT or AdamW), the
    matrix shape and how many matrices it holds, and the source of its
    Newton–Schulz coefficients. ``print(...)`` shows it as a table.

    Args:
      params: the params tree (arrays, ``jax.ShapeDtypeStruct`` or NNX state).
      weight_dimension_numbers: as in :func:`root`.
      ns_coeffs: as in :func:`root`.
      ns_steps: as in :func:`root`.

    Returns:
      A :class:`RoutingTable` (a tuple of :class:`LeafRoute`).

    Examples:
      >>> import jax.numpy as jnp, root_optax
      >>> table = root_optax.routing_table({"w": jnp.ones((4, 8)), "b": jnp.ones(8)})
      >>> [(r.path, r.branch, r.matrix_shape) for r in table]
      [("['b']", 'adamw', None), ("['w']", 'root', (4, 8))]
    """
    fn = "routing_table"
    ns_steps = _validation.check_positive_int(fn, "ns_steps", ns_steps, 5)
    _coefficients.check_spec(fn, ns_coeffs, ns_steps)
    if weight_dimension_numbers is None:
        specs = jax.tree.map(
            lambda x: MuonDimensionNumbers() if np.ndim(x) == 2 else None, params
        )
    else:
        _dimension_numbers.check_fits(params, weight_dimension_numbers, fn)
        specs = _dimension_numbers.per_leaf(weight_dimension_numbers, params)
    rows = []
    for (path, leaf), spec in zip(
        jax.tree_util.tree_leaves_with_path(params),
        jax.tree.leaves(specs, is_leaf=_dimension_numbers.is_spec_leaf),
    ):
        shape = tuple(np.shape(leaf))
        if spec is None:
            rows.append(LeafRoute(_path_string(path), shape, "adamw", None, 0, None))
            continue
        view = _dimension_numbers.MatrixView(shape, spec, fn)
        source = _coefficient_source(ns_coeffs, view.matrix_shape, ns_steps)
        rows.append(
            LeafRoute(
                _path_string(path), shape, "root", view.matrix_shape, view.batch, source
            )
        )
    return RoutingTable(rows)
