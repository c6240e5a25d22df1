"""Outlier suppression: clip each matrix to a quantile of its own magnitudes."""

import jax
import optax

from root_optax import _dimension_numbers, _distributed, _validation


def robust_clip(
    quantile: jax.typing.ArrayLike | None = 0.9,
    threshold: jax.typing.ArrayLike | None = None,
    *,
    offset: float = 1e-9,
    weight_dimension_numbers: _dimension_numbers.WeightDimensionNumbers = None,
) -> optax.GradientTransformation:
    r"""Keep the robust base of each matrix: clip it to its own magnitude quantile.

    For every matrix :math:`U` (every slice of a stacked leaf) ROOT splits
    :math:`U = B + O` with the soft-thresholded outliers
    :math:`O = \mathrm{sign}(U)\max(|U| - \epsilon, 0)` and emits the base

    .. math::
      B = U - O = \mathrm{clip}(U, -\epsilon, \epsilon), \qquad
      \epsilon = \mathrm{quantile}(|U|, q) + \text{offset}

    with :math:`q` = ``quantile`` (linear interpolation over all entries), or
    :math:`\epsilon` = ``threshold`` when given. The quantile is exact and
    computed by selection, not sorting (see :func:`abs_quantile`). Useful on its
    own too, e.g. ``optax.chain(robust_clip(), optax.adamw(1e-3))``.

    Args:
      quantile: :math:`q` in ``(0, 1]``; may be a traced array. Ignored when
        ``threshold`` is given.
      threshold: a fixed :math:`\epsilon \ge 0` for every matrix instead of the
        quantile; may be a traced array.
      offset: added to the quantile (``1e-9`` in the reference).
      weight_dimension_numbers: which axes form each matrix; see
        :func:`adaptive_newton_schulz`. ``None``: the last two axes.

    Returns:
      A stateless :class:`optax.GradientTransformation`.

    Raises:
      ValueError: ``quantile`` outside ``(0, 1]``, negative ``threshold``, or
        neither given.

    Examples:
      >>> import jax.numpy as jnp, root_optax
      >>> tx = root_optax.robust_clip(threshold=1.0)
      >>> u, _ = tx.update(jnp.array([[0.5, -3.0], [2.0, 0.1]]), tx.init(None))
      >>> u.tolist()
      [[0.5, -1.0], [1.0, 0.10000000149011612]]
    """
    check_args("robust_clip", quantile, threshold, offset)
    return clip_transform(
        "robust_clip", quantile, threshold, offset, weight_dimension_numbers
    )


def check_args(
    fn: str,
    quantile,
    threshold,
    offset=1e-9,
    *,
    names: tuple[str, str] = ("quantile", "threshold"),
) -> None:
    """Validate :func:`robust_clip`'s arguments, reported as ``fn(name=...)``."""
    if quantile is None and threshold is None:
        raise ValueError(
            f"{fn}() needs {names[0]} or {names[1]}, got {names[0]}=None and "
            f"{names[1]}=None. To skip clipping, leave robust_clip out of the "
            "chain (root(clip_quantile=None) does that)."
        )
    if quantile is not None:
        _validation.check_unit_interval(fn, names[0], quantile, closed_low=False)
    if threshold is not None:
        _validation.check_non_negative(fn, names[1], threshold)
    _validation.check_non_negative(fn, "offset", offset)


def clip_transform(
    fn: str, quantile, threshold, offset, weight_dimension_numbers
) -> optax.GradientTransformation:
    """:func:`robust_clip` without argument checks; errors name ``fn``.

    Each matrix's threshold is computed by reductions over its own axes, so a
    sharded matrix is never gathered, and leaves sharded over explicit mesh
    axes keep their shardings (see :mod:`root_optax._distributed`).
    """
    return _distributed.clip_transform(
        fn, quantile, threshold, offset, weight_dimension_numbers
    )
