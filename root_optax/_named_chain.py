"""A chain whose state is a plain dict of named parts."""

import optax


def named_chain(
    *transforms: tuple[str, optax.GradientTransformation],
) -> optax.GradientTransformationExtraArgs:
    """:func:`optax.named_chain` with a plain ``dict`` state.

    The parts run in the order given; the state maps each name to its part's
    state, so users read ``state["momentum"]`` or ``optax.tree.get(state,
    "momentum")``. A plain dict (rather than optax's ``OrderedDict``) is what
    ``flax.serialization`` and Orbax restore without help.
    """
    inner = optax.named_chain(*transforms)

    def init_fn(params):
        return dict(inner.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        updates, new_state = inner.update(updates, state, params, **extra_args)
        return updates, dict(new_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
