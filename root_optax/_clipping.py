"""Outlier suppression: clip each matrix to a quantile of its own magnitudes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from root_optax import _dimension_numbers, _quantile, _validation


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
    fn = "robust_clip"
    if threshold is None:
        if quantile is None:
            raise ValueError(
                f"{fn}() needs quantile or threshold, got quantile=None and "
                "threshold=None. To skip clipping, leave robust_clip out of the chain "
                "(root(clip_quantile=None) does that)."
            )
        _validation.check_in_range(fn, "quantile", quantile, 0.0, 1.0, low_open=True)
    else:
        _validation.check_in_range(fn, "threshold", threshold, 0.0, float("inf"))
    _validation.check_in_range(fn, "offset", offset, 0.0, float("inf"))

    def clip_leaf(u, view):
        if threshold is not None:
            eps = jnp.asarray(threshold, u.dtype)
            return jnp.clip(u, -eps, eps)
        batch = view.to_batch(u).reshape(view.batch, -1)
        eps = jax.vmap(lambda row: _quantile.abs_quantile(row, quantile))(batch)
        eps = (eps + offset).astype(u.dtype)[:, None]
        return view.from_batch(jnp.clip(batch, -eps, eps)).astype(u.dtype)

    def update_fn(updates, state, params=None):
        del params
        updates = _dimension_numbers.map_matrices(
            clip_leaf, updates, weight_dimension_numbers, fn
        )
        return updates, state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)
