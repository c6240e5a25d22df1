"""Gradient- and label-noise conditions for training the demo model.

Four conditions (:data:`CONDITIONS`): ``clean``; ``outliers`` (on a fraction
of steps a few entries of every orthogonalized matrix's gradient are
multiplied by a large factor); ``heavy_tail`` (Student-t noise scaled by each
matrix's gradient RMS, every step); ``label_noise`` (a fraction of the target
bytes replaced by random bytes). Every draw depends on ``(seed, step)`` and
the matrix shapes only, so all optimizers of a seed see the same noise.
:func:`condition_data` prepares a condition's data, :func:`corrupt_gradients`
injects the gradient noise inside a jitted step.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import _common  # noqa: F401  (first: puts the checkout's root_optax on sys.path)
import jax
import jax.numpy as jnp
import numpy as np

from root_optax import demo

CONDITIONS = ("clean", "outliers", "heavy_tail", "label_noise")


@dataclasses.dataclass(frozen=True)
class Noise:
    """The corruptions (all conditions' settings; each condition uses its own)."""

    outlier_step_fraction: float = 0.1
    outlier_entry_fraction: float = 1e-3
    outlier_factor: float = 1000.0
    t_df: float = 1.5
    t_scale: float = 1.0
    label_fraction: float = 0.2


def outlier_count(size: int, fraction: float) -> int:
    """Entries of a ``size``-entry matrix that an outlier step corrupts (>= 1)."""
    return max(1, round(fraction * size))


def outlier_schedule(steps: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean ``(steps,)``: exactly ``round(fraction * steps)`` outlier steps.

    Drawn from ``seed`` alone (uniformly without replacement), so every optimizer
    of a seed has the same outlier steps.
    """
    flags = np.zeros(steps, dtype=bool)
    count = min(steps, round(fraction * steps))
    rng = np.random.default_rng([seed, 1])
    flags[rng.choice(steps, size=count, replace=False)] = True
    return flags


def corrupt_targets(
    targets: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Replace ``round(fraction * B * L)`` target bytes of every batch at random.

    ``targets`` is ``(steps, B, L)``; in each step's batch exactly that many
    positions, uniformly without replacement, get a uniformly random byte (equal
    to the true one 1/256 of the time). Returns the noisy targets and the mask of
    replaced positions. Inputs and validation data are not touched.
    """
    steps, batch, length = targets.shape
    count = round(fraction * batch * length)
    rng = np.random.default_rng([seed, 2])
    noisy = targets.copy().reshape(steps, batch * length)
    mask = np.zeros_like(noisy, dtype=bool)
    for t in range(steps):
        where = rng.choice(batch * length, size=count, replace=False)
        noisy[t, where] = rng.integers(0, demo.VOCAB_SIZE, size=count)
        mask[t, where] = True
    return noisy.reshape(targets.shape), mask.reshape(targets.shape)


def step_key(seed: int | jax.Array, step: int | jax.Array) -> jax.Array:
    """The noise key of ``(seed, step)``, independent of the optimizer."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), step)


@functools.lru_cache(maxsize=1)
def heavy_tail_draws(seed: int, steps: int, size: int, df: float) -> np.ndarray:
    """I.i.d. Student-t(``df``) draws ``(steps, size)`` float32 from ``seed``.

    Row ``t`` is step ``t``'s noise for all noisy matrices (flattened in leaf
    order); the same for every optimizer. Cached for the latest arguments.
    """
    rng = np.random.default_rng([seed, 3])
    return rng.standard_t(df, size=(steps, size)).astype(np.float32)


def _split(flat: jax.Array, matrices: list[int], offsets: list[int]) -> dict:
    """``{leaf index: its slice of flat}`` (matrices flattened in leaf order)."""
    return {i: flat[offsets[j] : offsets[j + 1]] for j, i in enumerate(matrices)}


def _add_outliers(gs, key, matrices, offsets, noise: Noise) -> list:
    """Multiply ``outlier_count`` uniform entries of each matrix by the factor."""
    gs = list(gs)
    scores = _split(jax.random.uniform(key, (offsets[-1],)), matrices, offsets)
    for i in matrices:
        g = gs[i]
        count = outlier_count(g.size, noise.outlier_entry_fraction)
        _, where = jax.lax.top_k(-scores[i], count)
        factor = jnp.asarray(noise.outlier_factor, g.dtype)
        gs[i] = g.reshape(-1).at[where].multiply(factor).reshape(g.shape)
    return gs


def _add_heavy_tail(gs, t_scale, t_draws, matrices, offsets) -> list:
    """Add ``t_scale * rms(g) * T`` to each matrix ``g``, ``T`` from ``t_draws``."""
    gs = list(gs)
    draws = _split(jnp.asarray(t_draws), matrices, offsets)
    for i in matrices:
        g = gs[i]
        rms = jnp.sqrt(jnp.mean(jnp.square(g)))
        t = draws[i].reshape(g.shape).astype(g.dtype)
        gs[i] = g + (jnp.asarray(t_scale, g.dtype) * rms) * t
    return gs


def corrupt_gradients(
    grads: Any,
    is_matrix: Sequence[bool],
    key: jax.Array,
    *,
    outlier_on: jax.typing.ArrayLike = False,
    t_scale: jax.typing.ArrayLike = 0.0,
    t_draws: jax.typing.ArrayLike | None = None,
    noise: Noise = Noise(),
) -> Any:
    """The gradients with this step's noise injected into the matrix leaves.

    The draws depend only on ``key``, ``t_draws`` and the leaves' shapes, never
    on the gradient values or the optimizer. If ``outlier_on``,
    ``outlier_count`` entries (uniform, without replacement: the smallest of
    i.i.d. uniform scores) of each matrix are multiplied by
    ``noise.outlier_factor``. If ``t_scale > 0``, ``t_scale * rms(g) * T`` is
    added to each matrix ``g`` (``rms`` of this step's clean gradient of that
    matrix), ``T`` its slice of ``t_draws`` (one flat vector for all matrices in
    leaf order, from :func:`heavy_tail_draws`; JAX's Student-t sampler is
    ~50x slower than NumPy's on CPU). Other leaves are unchanged. Both switches
    may be traced (``lax.cond`` computes only what is on).
    """
    leaves, treedef = jax.tree.flatten(grads)
    if len(leaves) != len(is_matrix):
        raise ValueError(
            f"corrupt_gradients(is_matrix=...) has {len(is_matrix)} flags but the "
            f"gradients have {len(leaves)} leaves."
        )
    matrices = [i for i, m in enumerate(is_matrix) if m]
    offsets = np.cumsum([0] + [leaves[i].size for i in matrices]).tolist()
    if t_draws is not None and jnp.shape(t_draws) != (offsets[-1],):
        raise ValueError(
            f"corrupt_gradients(t_draws=...) must have shape ({offsets[-1]},), got "
            f"{jnp.shape(t_draws)}."
        )
    if not matrices:
        return grads
    identity = lambda gs: list(gs)
    outliers = functools.partial(
        _add_outliers, key=key, matrices=matrices, offsets=offsets, noise=noise
    )
    leaves = jax.lax.cond(jnp.asarray(outlier_on), outliers, identity, leaves)
    if t_draws is not None:
        heavy = functools.partial(
            _add_heavy_tail,
            t_scale=t_scale,
            t_draws=t_draws,
            matrices=matrices,
            offsets=offsets,
        )
        leaves = jax.lax.cond(jnp.asarray(t_scale) > 0, heavy, identity, leaves)
    return jax.tree.unflatten(treedef, leaves)


def condition_data(
    condition: str,
    train_windows: np.ndarray,
    seed: int,
    noise: Noise,
    noise_size: int,
):
    """``(inputs, targets, outlier_flags, t_scale, t_draws)`` of ``condition``.

    ``train_windows`` is ``(steps, B, L + 1)`` for ``seed``; ``noise_size`` is
    the total entry count of the noisy matrices. ``t_draws`` is ``None`` unless
    the condition is ``heavy_tail``.
    """
    if condition not in CONDITIONS:
        raise ValueError(
            f"condition_data(condition=...) got {condition!r}; expected one of "
            f"{CONDITIONS}."
        )
    steps = len(train_windows)
    inputs, targets = train_windows[..., :-1], train_windows[..., 1:]
    if condition == "label_noise":
        targets, _ = corrupt_targets(targets, noise.label_fraction, seed)
    flags = np.zeros(steps, dtype=bool)
    if condition == "outliers":
        flags = outlier_schedule(steps, noise.outlier_step_fraction, seed)
    t_scale, t_draws = 0.0, None
    if condition == "heavy_tail":
        t_scale = noise.t_scale
        t_draws = heavy_tail_draws(seed, steps, noise_size, noise.t_df)
    return inputs, targets, flags, t_scale, t_draws
