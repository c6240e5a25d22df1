"""The step size: learning rate times a shape factor, with decoupled weight decay."""

import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import optax

from root_optax import _dimension_numbers, _validation

ShapeScale = Literal["rms", "muon"] | None


def _shape_factor(fan_in: int, fan_out: int, shape_scale: ShapeScale, rms) -> Any:
    if shape_scale == "rms":
        return rms * math.sqrt(max(fan_in, fan_out))
    if shape_scale == "muon":
        return math.sqrt(max(1.0, fan_out / fan_in))
    return 1.0


def scale_by_lr(
    learning_rate: optax.ScalarOrSchedule,
    *,
    shape_scale: ShapeScale = "rms",
    rms: jax.typing.ArrayLike = 0.2,
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_decay_mask: Any | Callable[[optax.Params], Any] | None = None,
    weight_dimension_numbers: _dimension_numbers.WeightDimensionNumbers = None,
) -> optax.GradientTransformation:
    r"""Turn orthogonalized directions into steps: shape factor, weight decay, lr.

  For a matrix with fan-in :math:`m` and fan-out :math:`n` (products of the
  reduction and output axes),

  .. math::
    \Delta W = -\eta \, (s_{m,n} \, O + \lambda W), \qquad
    s_{m,n} = \begin{cases} r \sqrt{\max(m, n)} & \texttt{"rms"} \\
                            \sqrt{\max(1, n / m)} & \texttt{"muon"} \\
                            1 & \texttt{None,} \end{cases}

  with :math:`\eta` = ``learning_rate``, :math:`r` = ``rms``,
  :math:`\lambda` = ``weight_decay``. So :math:`W \leftarrow W(1 - \eta\lambda)
  - \eta s O`: the decay uses the plain learning rate, as in the reference,
  not the shape-scaled one.

  Args:
    learning_rate: a float or an :class:`optax.Schedule`.
    shape_scale: ``"rms"`` (Moonlight's RMS matching, the reference),
      ``"muon"`` (Keller Jordan's width factor) or ``None``.
    rms: target update RMS for ``"rms"`` (0.2 matches AdamW's).
    weight_decay: decoupled weight decay :math:`\lambda` (needs ``params``).
    weight_decay_mask: as in :func:`optax.add_decayed_weights`.
    weight_dimension_numbers: which axes are fan-in/fan-out; see
      :func:`adaptive_newton_schulz`. ``None``: the last two axes.

  Returns:
    An :class:`optax.GradientTransformation`.

  Raises:
    ValueError: unknown ``shape_scale`` or negative ``rms``/``weight_decay``.

  Examples:
    >>> import jax.numpy as jnp, root_optax
    >>> tx = root_optax.scale_by_lr(0.5, shape_scale=None)
    >>> u, _ = tx.update(jnp.ones((2, 2)), tx.init(jnp.zeros((2, 2))))
    >>> u.tolist()
    [[-0.5, -0.5], [-0.5, -0.5]]
  """
    fn = "scale_by_lr"
    config = scale_config(
        fn, learning_rate, shape_scale, rms, weight_decay, weight_decay_mask
    )
    return lr_transform(fn, config, weight_dimension_numbers)


class ScaleConfig(NamedTuple):
    """The checked arguments of :func:`scale_by_lr` (scalars may be traced)."""

    learning_rate: optax.ScalarOrSchedule
    shape_scale: ShapeScale
    rms: jax.typing.ArrayLike
    weight_decay: jax.typing.ArrayLike
    weight_decay_mask: Any


def scale_config(
    fn: str, learning_rate, shape_scale, rms, weight_decay, weight_decay_mask
) -> ScaleConfig:
    """Validate :func:`scale_by_lr`'s arguments, reported as ``fn(name=...)``."""
    if shape_scale not in ("rms", "muon", None):
        raise ValueError(
            f"{fn}(shape_scale=...) must be 'rms', 'muon' or None, got "
            f"shape_scale={shape_scale!r}."
        )
    _validation.check_non_negative(fn, "rms", rms)
    _validation.check_non_negative(fn, "weight_decay", weight_decay)
    if not callable(learning_rate):
        _validation.check_non_negative(fn, "learning_rate", learning_rate)
    return ScaleConfig(learning_rate, shape_scale, rms, weight_decay, weight_decay_mask)


def lr_transform(
    fn: str, config: ScaleConfig, weight_dimension_numbers
) -> optax.GradientTransformation:
    """:func:`scale_by_lr` from a checked config; errors name ``fn``."""
    shape_scale, rms = config.shape_scale, config.rms

    def scale_leaf(u, view):
        factor = _shape_factor(view.fan_in, view.fan_out, shape_scale, rms)
        return (u * factor).astype(u.dtype)

    def shape_init_fn(params):
        if shape_scale is not None:
            _dimension_numbers.check_fits(params, weight_dimension_numbers, fn)
        return optax.EmptyState()

    def shape_update_fn(updates, state, params=None):
        del params
        if shape_scale is not None:
            updates = _dimension_numbers.map_matrices(
                scale_leaf, updates, weight_dimension_numbers, fn
            )
        return updates, state

    return optax.chain(
        optax.GradientTransformation(shape_init_fn, shape_update_fn),
        decoupled_weight_decay(fn, config.weight_decay, config.weight_decay_mask),
        optax.scale_by_learning_rate(config.learning_rate),
    )


def decoupled_weight_decay(
    fn: str, weight_decay, weight_decay_mask
) -> optax.GradientTransformation:
    r"""``u + weight_decay * W`` in ``u``'s dtype (the step's lr multiplies both).

    Like :func:`optax.add_decayed_weights`, but a float32 parameter never
    promotes a bfloat16 update, and the state structure does not depend on
    whether ``weight_decay`` is zero (it may be injected).
    """

    def update_fn(updates, state, params=None):
        if _validation.is_static_number(weight_decay) and weight_decay == 0:
            return updates, state
        if params is None:
            raise ValueError(
                f"{fn}(weight_decay=...) needs the params: call update(updates, "
                "state, params)."
            )
        decayed = jax.tree.map(
            lambda u, p: None if u is None else (u + weight_decay * p).astype(u.dtype),
            updates,
            params,
            is_leaf=lambda x: x is None,
        )
        return decayed, state

    decay = optax.GradientTransformation(optax.init_empty_state, update_fn)
    if weight_decay_mask is not None:
        decay = optax.masked(decay, weight_decay_mask)
    return decay
