"""Opt-in training diagnostics: per-matrix clip, Newton–Schulz and update statistics.

With ``root(..., diagnostics=True)`` the optimizer state records, for every
matrix of the ROOT branch (every layer of a stacked leaf), as vectors of length
N (the matrices in tree order):

- ``clip_threshold``: the clip threshold :math:`\\epsilon` of the step;
- ``clipped_fraction``: the fraction of entries with :math:`|U| > \\epsilon`;
- ``ns_residual``: :math:`\\|(X X^H - I) z\\| / \\|z\\|` for a fixed random sign
  vector :math:`z`, where :math:`X` is Newton–Schulz's output: an unbiased
  estimate (in :math:`\\|\\cdot\\|^2`) of the orthogonality residual
  :math:`\\|XX^H - I\\|_F / \\sqrt{m}`, about twice the relative polar error; two
  matrix-vector products per matrix;
- ``update_rms``: the root-mean-square of the matrix's final update.

:func:`diagnostics` reads them, aggregated (for logging every step) or per
matrix, together with the non-finite guard's skipped-step count.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from root_optax import _dimension_numbers, _placement, _routing

STAT_NAMES = ("clip_threshold", "clipped_fraction", "ns_residual")


class MatrixStats(NamedTuple):
    """Per-matrix statistics of the last applied step, each of shape ``(N,)``.

    ``clip_threshold`` is ``inf`` and ``clipped_fraction`` 0 without a clip.
    """

    clip_threshold: jax.Array
    clipped_fraction: jax.Array
    ns_residual: jax.Array


class UpdateStats(NamedTuple):
    """RMS of every matrix's final update (after the learning rate), ``(N,)``."""

    update_rms: jax.Array


def _probe(m: int) -> np.ndarray:
    """A fixed random sign vector of length ``m`` (the same for every step)."""
    return np.random.default_rng(m).choice(np.array([-1.0, 1.0]), m)


def ns_residual(x: jax.Array) -> jax.Array:
    """:math:`\\|(XX^H - I)z\\|/\\|z\\|` per matrix of a wide ``(B, m, n)`` batch."""
    m = x.shape[1]
    z = jnp.asarray(_probe(m), jnp.promote_types(x.dtype, jnp.float32))
    x = x.astype(z.dtype)
    w = jnp.einsum("bmn,m->bn", x.conj(), z)
    r = jnp.einsum("bmn,bn->bm", x, w) - z[None, :]
    return (jnp.linalg.norm(r, axis=-1) / np.sqrt(m)).real.astype(jnp.float32)


def clip_stats(batch: jax.Array, eps: jax.Array | None) -> dict[str, jax.Array]:
    """``clip_threshold`` and ``clipped_fraction`` of a batch (``eps`` ``(B,)``)."""
    if eps is None:
        count = batch.shape[0]
        return {
            "clip_threshold": jnp.full((count,), jnp.inf, jnp.float32),
            "clipped_fraction": jnp.zeros((count,), jnp.float32),
        }
    over = jnp.abs(batch) > eps[:, None, None]
    return {
        "clip_threshold": eps.astype(jnp.float32),
        "clipped_fraction": jnp.mean(over, axis=(1, 2), dtype=jnp.float32),
    }


def record_update_rms(fn: str, dimension_numbers) -> optax.GradientTransformation:
    """Record :class:`UpdateStats` of the updates passing through (unchanged)."""

    def kernel(batch, shape, dynamic):
        del shape, dynamic
        rms = jnp.sqrt(jnp.mean(jnp.abs(batch.astype(jnp.float32)) ** 2, axis=(1, 2)))
        return batch, {"update_rms": rms}

    def init_fn(params):
        return UpdateStats(
            **_placement.zero_statistics(
                fn, params, dimension_numbers, UpdateStats._fields
            )
        )

    def update_fn(updates, state, params=None):
        del params, state
        _, stats = _placement.map_matrix_batches(
            fn, kernel, updates, dimension_numbers, stat_names=UpdateStats._fields
        )
        return updates, UpdateStats(**stats)

    return optax.GradientTransformation(init_fn, update_fn)


def _one(state, name: str):
    found = optax.tree.get_all_with_path(state, name)
    return found[0][1] if found else None


def _summary(stats: MatrixStats | None, update: UpdateStats | None) -> dict:
    out = {}
    if stats is not None and stats.ns_residual.size:
        finite = jnp.isfinite(stats.clip_threshold)
        out["clip_threshold_mean"] = jnp.sum(
            jnp.where(finite, stats.clip_threshold, 0)
        ) / jnp.maximum(jnp.sum(finite), 1)
        out["clipped_fraction_mean"] = jnp.mean(stats.clipped_fraction)
        out["ns_residual_mean"] = jnp.mean(stats.ns_residual)
        out["ns_residual_max"] = jnp.max(stats.ns_residual)
    if update is not None and update.update_rms.size:
        out["update_rms_mean"] = jnp.mean(update.update_rms)
        out["update_rms_max"] = jnp.max(update.update_rms)
    return out


def _per_matrix(stats, update, params, weight_dimension_numbers) -> dict:
    vectors = {}
    if stats is not None:
        vectors.update(stats._asdict())
    if update is not None:
        vectors.update(update._asdict())
    rows = [
        r
        for r in _routing.routing_table(params, weight_dimension_numbers)
        if r.branch == "root" and np.prod(r.shape) > 0
    ]
    out, start = {}, 0
    for row in rows:
        out[row.path] = {n: v[start : start + row.batch] for n, v in vectors.items()}
        start += row.batch
    return out


def diagnostics(
    opt_state: Any,
    params: Any = None,
    weight_dimension_numbers: _dimension_numbers.WeightDimensionNumbers = None,
) -> dict[str, Any]:
    r"""Read the training diagnostics of a :func:`root` state.

    Always: ``skipped_steps`` (int32, steps the non-finite guard skipped) and
    ``last_step_applied``. With ``root(..., diagnostics=True)`` also, over the
    matrices of the ROOT branch: ``clip_threshold_mean`` (over clipped
    matrices), ``clipped_fraction_mean``, ``ns_residual_mean`` and
    ``ns_residual_max`` (see the module docstring: about twice the relative
    polar error), ``update_rms_mean`` and ``update_rms_max``. Given the params
    (and the ``weight_dimension_numbers`` passed to :func:`root`), also
    ``per_matrix``: ``{path: {statistic: (batch,)}}``.

    Everything is a JAX array (call it inside a jitted step, or on the state
    after it) and describes the last applied step.

    Args:
      opt_state: the state of :func:`root` (or of a chain containing it).
      params: the params tree, for per-matrix values.
      weight_dimension_numbers: as passed to :func:`root`.

    Returns:
      A flat dict of scalars (and ``per_matrix`` when ``params`` is given).

    Examples:
      >>> import jax.numpy as jnp, root_optax
      >>> params = {"w": jnp.ones((4, 8)), "b": jnp.zeros(8)}
      >>> opt = root_optax.root(1e-2, diagnostics=True)
      >>> grads = {"w": jnp.arange(32.0).reshape(4, 8), "b": jnp.ones(8)}
      >>> _, state = opt.update(grads, opt.init(params), params)
      >>> d = root_optax.diagnostics(state)
      >>> int(d["skipped_steps"]), round(float(d["clipped_fraction_mean"]), 3)
      (0, 0.125)
    """
    skip = _one(opt_state, "SkipNonfiniteState")
    stats = _one(opt_state, "MatrixStats")
    update = _one(opt_state, "UpdateStats")
    out = {}
    if skip is not None:
        out["skipped_steps"] = skip.skipped
        out["last_step_applied"] = skip.last_finite
    out.update(_summary(stats, update))
    if params is not None and (stats is not None or update is not None):
        out["per_matrix"] = _per_matrix(stats, update, params, weight_dimension_numbers)
    return out
