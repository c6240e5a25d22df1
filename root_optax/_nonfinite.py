"""Skip steps whose gradients are not finite, so NaN/Inf never reach params or state."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class SkipNonfiniteState(NamedTuple):
    """State of :func:`skip_nonfinite`.

    Attributes:
      inner_state: the wrapped transformation's state (as of the last finite step).
      skipped: int32, how many steps were skipped in total.
      last_finite: bool, whether the latest step was applied (its gradients and
        updates were finite).
    """

    inner_state: Any
    skipped: jax.Array
    last_finite: jax.Array


def _all_finite(tree: Any) -> jax.Array:
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def skip_nonfinite(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    r"""Wrap ``inner`` so a step with any non-finite gradient entry changes nothing.

    If every entry of ``updates`` is finite and so is every entry of the
    updates ``inner`` computes from them, the step is ``inner``'s. Otherwise
    the emitted updates are zeros (parameters stay as they are), ``inner``'s
    state is kept from the previous step (momenta are not poisoned), and
    ``skipped`` counts the event so it can be logged. Unlike
    :func:`optax.apply_if_finite`, a non-finite update is never applied, however
    many steps in a row are skipped. The check is one global reduction, also
    under sharding.

    Args:
      inner: the transformation to protect.

    Returns:
      An :class:`optax.GradientTransformation` with state
      :class:`SkipNonfiniteState`.

    Examples:
      >>> import jax.numpy as jnp, optax, root_optax
      >>> tx = root_optax.skip_nonfinite(optax.sgd(0.1))
      >>> state = tx.init(jnp.zeros(2))
      >>> u, state = tx.update(jnp.array([1.0, jnp.nan]), state)
      >>> u.tolist(), int(state.skipped)
      ([0.0, 0.0], 1)
    """

    if not isinstance(inner, optax.GradientTransformation):
        raise TypeError(
            "skip_nonfinite(inner=...) must be an optax.GradientTransformation, got "
            f"inner={inner!r}. Pass a built optimizer, e.g. optax.adam(1e-3), not "
            "the factory."
        )

    def init_fn(params):
        return SkipNonfiniteState(
            inner_state=inner.init(params),
            skipped=jnp.zeros([], jnp.int32),
            last_finite=jnp.asarray(True),
        )

    def update_fn(updates, state, params=None, **extra_args):
        finite = _all_finite(updates)
        # Zero the bad gradients before the inner step so no NaN is ever computed
        # into a value that a `where` selects later (keeps gradients of this
        # function and debug_nans quiet too).
        safe_updates = jax.tree.map(
            lambda g: jnp.where(finite, g, jnp.zeros_like(g)), updates
        )
        new_updates, new_inner = optax.with_extra_args_support(inner).update(
            safe_updates, state.inner_state, params, **extra_args
        )
        # Finite gradients can still give a non-finite step (an overflow inside
        # the inner transformation): that step is skipped too.
        finite = finite & _all_finite(new_updates)
        keep = lambda new, old: jnp.where(finite, new, old)
        return (
            jax.tree.map(
                lambda u: jnp.where(finite, u, jnp.zeros_like(u)), new_updates
            ),
            SkipNonfiniteState(
                inner_state=jax.tree.map(keep, new_inner, state.inner_state),
                skipped=state.skipped + (~finite).astype(jnp.int32),
                last_finite=finite,
            ),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
