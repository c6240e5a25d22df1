"""Heavy-ball momentum in the reference's form, with optional Nesterov output."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from root_optax import _validation


class MomentumConfig(NamedTuple):
    """The checked arguments of :func:`momentum` (``beta`` may be traced)."""

    beta: jax.typing.ArrayLike
    nesterov: bool
    mu_dtype: jnp.dtype | None


class MomentumState(NamedTuple):
    """State of :func:`momentum`: the buffer ``mu``, mirroring the params tree."""

    mu: optax.Updates


def momentum(
    beta: jax.typing.ArrayLike = 0.95,
    *,
    nesterov: bool = True,
    mu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Momentum without dampening, as in the ROOT reference (PyTorch SGD form).

  .. math::
    M_t = \beta M_{t-1} + G_t, \qquad
    U_t = \begin{cases} G_t + \beta M_t & \text{nesterov} \\
                        M_t & \text{otherwise,} \end{cases}

  with :math:`\beta` = ``beta``, :math:`M_0 = 0`; the transform emits
  :math:`U_t` in the gradient's dtype. Works on any tree of arrays.

  Args:
    beta: momentum coefficient in ``[0, 1)``; may be a traced array.
    nesterov: emit the Nesterov combination :math:`G_t + \beta M_t`.
    mu_dtype: dtype of the buffer; ``None`` keeps each gradient's dtype.

  Returns:
    An :class:`optax.GradientTransformation` with state :class:`MomentumState`.

  Raises:
    ValueError: ``beta`` outside ``[0, 1)``.

  Examples:
    >>> import jax.numpy as jnp, root_optax
    >>> tx = root_optax.momentum(0.5)
    >>> state = tx.init(jnp.zeros(2))
    >>> u, state = tx.update(jnp.ones(2), state)
    >>> u.tolist()  # g + beta * (beta * 0 + g)
    [1.5, 1.5]
  """
    return momentum_transform(momentum_config("momentum", beta, nesterov, mu_dtype))


def momentum_config(fn: str, beta, nesterov, mu_dtype) -> MomentumConfig:
    """Validate :func:`momentum`'s arguments, reported as ``fn(name=...)``."""
    _validation.check_unit_interval(fn, "beta", beta, closed_low=True)
    _validation.check_bool(fn, "nesterov", nesterov)
    mu_dtype = _validation.check_float_dtype(
        fn, "mu_dtype", mu_dtype, allow_complex=True
    )
    return MomentumConfig(beta, nesterov, mu_dtype)


def momentum_transform(config: MomentumConfig) -> optax.GradientTransformation:
    """:func:`momentum` from a checked config."""
    beta, nesterov, mu_dtype = config

    def init_fn(params):
        return MomentumState(mu=optax.tree.zeros_like(params, dtype=mu_dtype))

    def update_fn(updates, state, params=None):
        del params

        # The full-precision buffer feeds the Nesterov output; only storage is cast
        # to mu_dtype. (XLA shares the one computation between the two maps.)
        full_mu = lambda g, m: beta * m.astype(jnp.result_type(m, g)) + g
        new_mu = jax.tree.map(
            lambda g, m: full_mu(g, m).astype(m.dtype), updates, state.mu
        )
        if nesterov:
            new_updates = jax.tree.map(
                lambda g, m: (g + beta * full_mu(g, m)).astype(g.dtype),
                updates,
                state.mu,
            )
        else:
            new_updates = jax.tree.map(
                lambda g, m: full_mu(g, m).astype(g.dtype), updates, state.mu
            )
        return new_updates, MomentumState(mu=new_mu)

    return optax.GradientTransformation(init_fn, update_fn)
