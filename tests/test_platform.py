"""_platform.platform_dependent: nested switches trace only their branch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import root_optax
from root_optax import _platform


def test_nested_switch_traces_only_the_enclosing_branch():
    traced = []

    def inner(x):
        return _platform.platform_dependent(
            x,
            cpu=lambda x: traced.append("inner cpu") or x + 1,
            default=lambda x: traced.append("inner default") or x + 2,
        )

    def outer(x):
        return _platform.platform_dependent(
            x,
            cpu=lambda x: inner(x) * 10,
            default=lambda x: inner(x) * 100,
        )

    lowered = jax.jit(outer).lower(jnp.float32(1))
    assert sorted(traced) == ["inner cpu", "inner default"]  # once each
    assert float(lowered.compile()(jnp.float32(1))) == 20.0  # CPU: (1 + 1) * 10
    # Outside any switch the module's switch is jax's: both branches traced.
    traced.clear()
    jax.jit(inner).lower(jnp.float32(1))
    assert sorted(traced) == ["inner cpu", "inner default"]


@pytest.mark.parametrize("platform, scatters", [("cpu", True), ("tpu", False)])
def test_stacked_clip_lowers_each_platform_to_its_own_selection(platform, scatters):
    """Stacked matrices are clipped one at a time inside the CPU loop, where
    the threshold's switch knows it is on CPU (histograms: scatters); lowered
    for TPU the batched branch counts instead (no scatter)."""
    tx = root_optax.scale_by_root(
        weight_dimension_numbers=root_optax.MuonDimensionNumbers(-2, -1)
    )
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 256, 1024)))
    x = x.astype(jnp.float32)
    step = jax.jit(lambda g, s: tx.update(g, s)[0])
    text = step.trace(x, tx.init(x)).lower(lowering_platforms=(platform,)).as_text()
    assert ("stablehlo.scatter" in text) == scatters
