"""AdamW as the ROOT reference code writes it (epsilon before bias correction)."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from root_optax import _named_chain, _scaling, _validation


def _at_least_float32(dtype) -> jnp.dtype:
    """``dtype`` promoted to at least float32 precision (complex stays complex)."""
    return jnp.promote_types(dtype, jnp.float32)


def _widen(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.astype(_at_least_float32(x.dtype)), tree)


def scale_by_adam_reference(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.95,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    mu_dtype: jax.typing.DTypeLike | None = None,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    r"""Adam's direction with the reference's epsilon placement.

    .. math::
        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \quad
        d_t = \frac{m_t}{\sqrt{v_t} + \epsilon}
              \frac{\sqrt{1 - \beta_2^t}}{1 - \beta_1^t},

    i.e. :func:`optax.scale_by_adam` with :math:`\epsilon / \sqrt{1 - \beta_2^t}`
    in place of :math:`\epsilon` (the two agree unless :math:`|g| \sim \epsilon`).
    With ``nesterov`` the first moment is optax's NAdam combination. The state
    is an :class:`optax.ScaleByAdamState`.
    """
    fn = "scale_by_adam_reference"
    for name, value in (("b1", b1), ("b2", b2)):
        _validation.check_in_range(fn, name, value, 0.0, 1.0, high_open=True)
    _validation.check_in_range(fn, "eps", eps, 0.0, float("inf"))
    mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

    def init_fn(params: Any) -> optax.ScaleByAdamState:
        return optax.ScaleByAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params, dtype=mu_dtype),
            nu=optax.tree.zeros_like(params),
        )

    def update_fn(updates, state, params=None):
        del params
        # The moment arithmetic runs in at least float32 (complex stays
        # complex): in float16, 1e-8 / sqrt(1 - b2^t) underflows to 0 and an
        # exactly zero gradient entry gives 0 / 0. Storage keeps its dtypes.
        wide = jax.tree.map(lambda g: g.astype(_at_least_float32(g.dtype)), updates)
        mu = optax.tree.update_moment(wide, _widen(state.mu), b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(wide, _widen(state.nu), b2, 2)
        count = optax.safe_increment(state.count)
        if nesterov:
            mu_hat = jax.tree.map(
                lambda m, g: b1 * m + (1 - b1) * g,
                optax.tree.bias_correction(mu, b1, optax.safe_increment(count)),
                optax.tree.bias_correction(wide, b1, count),
            )
        else:
            mu_hat = optax.tree.bias_correction(mu, b1, count)
        nu_hat = optax.tree.bias_correction(nu, b2, count)
        eps_t = eps / jnp.sqrt(1 - b2 ** count.astype(jnp.float32))
        new_updates = jax.tree.map(
            lambda g, m, v: (m / (jnp.sqrt(v) + eps_t.astype(v.dtype))).astype(g.dtype),
            updates,
            mu_hat,
            nu_hat,
        )
        new_mu = jax.tree.map(lambda new, old: new.astype(old.dtype), mu, state.mu)
        new_nu = jax.tree.map(lambda new, old: new.astype(old.dtype), nu, state.nu)
        return new_updates, optax.ScaleByAdamState(count=count, mu=new_mu, nu=new_nu)

    return optax.GradientTransformation(init_fn, update_fn)


class AdamWConfig(NamedTuple):
    """The checked AdamW arguments of :func:`root` (scalars may be traced)."""

    b1: jax.typing.ArrayLike
    b2: jax.typing.ArrayLike
    eps: jax.typing.ArrayLike
    nesterov: bool
    mu_dtype: jnp.dtype | None
    learning_rate: optax.ScalarOrSchedule
    weight_decay: jax.typing.ArrayLike
    weight_decay_mask: Any


def adamw_config(
    fn: str,
    *,
    b1,
    b2,
    eps,
    nesterov,
    mu_dtype,
    learning_rate,
    weight_decay,
    weight_decay_mask,
) -> AdamWConfig:
    """Validate :func:`root`'s ``adam_*`` arguments, reported as ``fn(adam_...)``."""
    _validation.check_bool(fn, "adam_nesterov", nesterov)
    for name, value in (("adam_b1", b1), ("adam_b2", b2)):
        _validation.check_unit_interval(fn, name, value, closed_low=True)
    _validation.check_non_negative(fn, "adam_eps", eps)
    _validation.check_non_negative(fn, "adam_weight_decay", weight_decay)
    if not callable(learning_rate):
        _validation.check_non_negative(fn, "adam_learning_rate", learning_rate)
    return AdamWConfig(
        b1, b2, eps, nesterov, mu_dtype, learning_rate, weight_decay, weight_decay_mask
    )


def adamw_branch(fn: str, config: AdamWConfig) -> optax.GradientTransformation:
    """AdamW in the reference's form: direction, decoupled decay, learning rate.

    A :func:`optax.named_chain` with parts ``"adam"``, ``"decay"``, ``"lr"``.
    """
    return _named_chain.named_chain(
        (
            "adam",
            scale_by_adam_reference(
                config.b1,
                config.b2,
                config.eps,
                mu_dtype=config.mu_dtype,
                nesterov=config.nesterov,
            ),
        ),
        (
            "decay",
            _scaling.decoupled_weight_decay(
                fn, config.weight_decay, config.weight_decay_mask
            ),
        ),
        ("lr", optax.scale_by_learning_rate(config.learning_rate)),
    )
