"""Polar error of Newton–Schulz when every product is one bf16 pass.

On TPU (and on GPU with TF32/bf16 matmuls) a float32 product at the
backend's default precision rounds its operands to bfloat16 and accumulates
in float32: one MXU / tensor-core pass. That is what ``root()`` runs by
default (``ns_precision=None``, as ``optax.contrib.muon`` does); XLA:CPU
ignores the precision and multiplies in full float32, so this machine cannot
show the cost of the default by running the library. This module renders the
iteration straight-line, with each product's operands rounded to bfloat16
(float32 accumulation and iterate), and measures the relative polar error
against the float64 SVD polar factor. The same rendering with exact products
is checked against ``root_optax.orthogonalize`` (``self_check``), so the only
difference between the two columns is the rounding of the operands.

Also measured: ``ns_dtype=jnp.bfloat16`` through the library itself (the
iterate stored in bfloat16 too), an upper bound on what low precision costs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import root_optax
from root_optax import _coefficients

CONFIGS = {
    "root": {"ns_coeffs": "root", "ns_steps": 5, "ns_normalization": "frobenius"},
    "muon": {"ns_coeffs": "muon", "ns_steps": 5, "ns_normalization": "frobenius"},
    "root 4 steps, schatten4": {
        "ns_coeffs": "root",
        "ns_steps": 4,
        "ns_normalization": "schatten4",
    },
}
"""The configurations compared (the fast one without the Gram form, which
restarts on its own schedule and is not rendered here)."""

SHAPES = [(256, 256), (512, 512), (256, 1024), (512, 2048), (1024, 4096)]
FAMILIES = ("gaussian", "power_law")


def _product(bf16_pass: bool):
    if not bf16_pass:
        return lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST)

    def product(x, y):
        return jnp.matmul(
            x.astype(jnp.bfloat16),
            y.astype(jnp.bfloat16),
            preferred_element_type=jnp.float32,
        )

    return product


def rendered_newton_schulz(x, coeffs, normalization: str, bf16_pass: bool):
    """The iteration on a wide float32 matrix, products exact or one bf16 pass."""
    mul = _product(bf16_pass)
    x = x / jnp.max(jnp.abs(x))
    gram = None
    if normalization == "schatten4":
        gram = mul(x, x.T)
        norm = jnp.sqrt(jnp.linalg.norm(gram))
        gram = gram / norm**2
    else:
        norm = jnp.linalg.norm(x)
    x = x / norm
    for k, (a, b, c) in enumerate(np.asarray(coeffs).tolist()):
        if k > 0 or gram is None:
            gram = mul(x, x.T)
        x = a * x + mul(b * gram + c * mul(gram, gram), x)
    return x


def test_matrix(family: str, shape, rng) -> np.ndarray:
    """A float32 ``shape`` matrix: i.i.d. Gaussian, or power-law singular
    values :math:`\\sigma_i \\propto i^{-1/2}` between random orthogonal bases."""
    m, n = shape
    if family == "gaussian":
        return rng.standard_normal(shape).astype(np.float32)
    u, _ = np.linalg.qr(rng.standard_normal((m, m)))
    v, _ = np.linalg.qr(rng.standard_normal((n, m)))
    s = np.arange(1, m + 1) ** -0.5
    return ((u * s) @ v.T).astype(np.float32)


def _error(got, polar) -> float:
    got = np.asarray(got, np.float64)
    return float(np.linalg.norm(got - polar) / np.linalg.norm(polar))


def measure(shapes=SHAPES, families=FAMILIES, seed: int = 0) -> list[dict]:
    """One row per shape, family and configuration: errors with exact products,
    bf16-pass products, the library with ``ns_dtype=bfloat16``, and the
    rendering's distance to the library (``self_check``)."""
    rng = np.random.default_rng(seed)
    run = jax.jit(rendered_newton_schulz, static_argnums=(1, 2, 3))
    rows = []
    for shape in shapes:
        for family in families:
            x = test_matrix(family, shape, rng)
            xj = jnp.asarray(x)
            u, _, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
            polar = u @ vt
            for name, kwargs in CONFIGS.items():
                steps, norm = kwargs["ns_steps"], kwargs["ns_normalization"]
                coeffs = _coefficients.coefficients_for_shape(
                    "bench_precision", kwargs["ns_coeffs"], shape, steps, norm
                )
                table = tuple(map(tuple, coeffs.tolist()))  # static, hashable
                exact = run(xj, table, norm, False)
                bf16 = run(xj, table, norm, True)
                library = root_optax.orthogonalize(
                    xj,
                    coeffs,
                    ns_steps=steps,
                    ns_normalization=norm,
                    ns_precision="highest",
                )
                low = root_optax.orthogonalize(
                    xj,
                    coeffs,
                    ns_steps=steps,
                    ns_normalization=norm,
                    ns_dtype=jnp.bfloat16,
                )
                rows.append(
                    {
                        "shape": list(shape),
                        "family": family,
                        "config": name,
                        "float32": _error(exact, polar),
                        "bf16_pass": _error(bf16, polar),
                        "bf16_iterate": _error(low, polar),
                        "self_check": _error(exact, np.asarray(library, np.float64)),
                    }
                )
    return rows


def summary(rows: list[dict]) -> dict:
    """Worst ratios over the rows: bf16-pass / float32 error per configuration,
    and root's bf16-pass error over Muon's (same shape and family)."""
    out = {}
    for name in CONFIGS:
        mine = [r for r in rows if r["config"] == name]
        out[name] = {
            "max_bf16_over_float32": max(r["bf16_pass"] / r["float32"] for r in mine),
            "max_bf16_pass_error": max(r["bf16_pass"] for r in mine),
        }
    muon = {(tuple(r["shape"]), r["family"]): r for r in rows if r["config"] == "muon"}
    for name in CONFIGS:
        if name == "muon":
            continue
        ratios = [
            r["bf16_pass"] / muon[(tuple(r["shape"]), r["family"])]["bf16_pass"]
            for r in rows
            if r["config"] == name
        ]
        out[name]["max_bf16_pass_over_muon"] = max(ratios)
    out["max_self_check"] = max(r["self_check"] for r in rows)
    return out
