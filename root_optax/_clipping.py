"""Outlier suppression: clip each matrix to a quantile of its own magnitudes."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from root_optax import _dimension_numbers, _placement, _quantile, _validation


class ClipConfig(NamedTuple):
    """The checked clip rule: ``eps = threshold``, or ``quantile(|u|) + offset``.

    A pytree: ``quantile`` and ``threshold`` may be traced arrays (from
    :func:`optax.inject_hyperparams`); exactly one of them is used, the
    threshold when it is not ``None``.
    """

    quantile: jax.typing.ArrayLike | None
    threshold: jax.typing.ArrayLike | None
    offset: jax.typing.ArrayLike


def clip_config(
    fn: str,
    quantile,
    threshold,
    offset=1e-9,
    *,
    names: tuple[str, str] = ("quantile", "threshold"),
) -> ClipConfig:
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
    return ClipConfig(quantile, threshold, offset)


def thresholds(batch: jax.Array, config: ClipConfig) -> jax.Array:
    """Each matrix's ``eps`` of a ``(B, m, n)`` batch, shape ``(B,)``, real dtype."""
    real = jnp.finfo(batch.dtype).dtype
    if config.threshold is not None:
        return jnp.broadcast_to(jnp.asarray(config.threshold, real), batch.shape[:1])
    eps = _quantile.abs_quantile_batched(batch, config.quantile)
    return (eps + config.offset).astype(real)


def clip_to(batch: jax.Array, eps: jax.Array) -> jax.Array:
    """Clip each matrix of a ``(B, m, n)`` batch to its ``eps`` of shape ``(B,)``;
    complex entries keep their phase (the magnitude is clipped)."""
    eps = eps[:, None, None]
    if not jnp.iscomplexobj(batch):
        return jnp.clip(batch, -eps.astype(batch.dtype), eps.astype(batch.dtype))
    magnitude = jnp.abs(batch)
    over = magnitude > eps
    shrink = jnp.where(over, eps / jnp.where(over, magnitude, 1), 1)
    return batch * shrink.astype(magnitude.dtype)


def clip_batch(batch: jax.Array, config: ClipConfig) -> jax.Array:
    r"""ROOT's robust base of every matrix of a ``(B, m, n)`` batch.

    .. math::
      B = U - \mathrm{sign}(U)\max(|U| - \epsilon, 0)
        = \mathrm{clip}(U, -\epsilon, \epsilon)

    per matrix, with :math:`\epsilon` from :func:`thresholds` (reductions over
    the matrix only: a sharded matrix is never gathered). Complex entries keep
    their phase: their magnitude is clipped to :math:`\epsilon`.
    """
    if batch.size == 0:
        return batch
    return clip_to(batch, thresholds(batch, config))


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
    computed by selection, not sorting (see :func:`abs_quantile`); the
    matrices of one shape are clipped as one batch. Complex entries keep their
    phase (the magnitude is clipped). Useful on its own too, e.g.
    ``optax.chain(robust_clip(), optax.adamw(1e-3))``.

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
    config = clip_config(fn, quantile, threshold, offset)
    kernel = lambda batch, shape, config: (clip_batch(batch, config), {})

    def init_fn(params):
        _dimension_numbers.check_fits(params, weight_dimension_numbers, fn)
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        updates, _ = _placement.map_matrix_batches(
            fn, kernel, updates, weight_dimension_numbers, dynamic=config
        )
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)
