"""One CPU / accelerator switch per program branch.

Some steps take a different form on CPU than on TPU and GPU
(:func:`jax.lax.platform_dependent`, which traces every branch and keeps the
one of the platform it lowers for). When switches nest, as the threshold's
inside the CPU loop over matrices, the inner one already knows the platform:
:func:`platform_dependent` then traces only the matching branch, so lowering
does not trace (and throw away) the other form once more per nesting level.
"""

import contextvars
from collections.abc import Callable

import jax

_BRANCH: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "root_optax_platform_branch", default=None
)


def _tracing_as(branch: str, fn: Callable) -> Callable:
    def traced(*args):
        token = _BRANCH.set(branch)
        try:
            return fn(*args)
        finally:
            _BRANCH.reset(token)

    return traced


def platform_dependent(*args, cpu: Callable, default: Callable):
    """``jax.lax.platform_dependent(*args, cpu=cpu, default=default)``, or the
    one branch an enclosing switch of this module is tracing."""
    branch = _BRANCH.get()
    if branch == "cpu":
        return cpu(*args)
    if branch == "default":
        return default(*args)
    return jax.lax.platform_dependent(
        *args, cpu=_tracing_as("cpu", cpu), default=_tracing_as("default", default)
    )
