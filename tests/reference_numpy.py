"""Float64 NumPy ground truth for the ROOT optimizer, used by the tests only.

This module is a deliberately naive, literal transcription of shared/ROOT_ALGORITHM.md:
one matrix at a time, explicit loops, a full sort for the quantile, float64 throughout,
no JAX and no torch. It is meant to be obviously correct, not fast; never import it from
the library. Caller arrays are never mutated.
"""

import numpy as np

MUON_COEFFS = (3.4445, -4.7750, 2.0315)
# Keyed by (min(m, n), max(m, n)); any other shape falls back to MUON_COEFFS.
REFERENCE_TABLE = {
    (2048, 2048): (3.4916, -4.8224, 2.1095),
    (2048, 3072): (3.4509, -4.5790, 1.9325),
    (2048, 8192): (2.9794, -3.6674, 1.6207),
    (2048, 16384): (3.1943, -3.8221, 1.5322),
}


def torch_quantile(x, q):
    """torch.quantile(x.flatten(), q) with the default 'linear' interpolation, in float64."""
    v = np.sort(np.asarray(x, dtype=np.float64).ravel())
    pos = q * (v.size - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, v.size - 1)
    return float(v[lo] + (pos - lo) * (v[hi] - v[lo]))


def coeffs_for_shape(shape, coeffs="reference"):
    """The (a, b, c) triple, or list of per-iteration triples, for one 2-D matrix shape."""
    if isinstance(coeffs, str):
        if coeffs == "muon":
            return MUON_COEFFS
        if coeffs == "reference":
            return REFERENCE_TABLE.get((min(shape), max(shape)), MUON_COEFFS)
        raise ValueError(f"unknown coeffs {coeffs!r}")
    return coeffs


def as_wide(a):
    """float64, or complex128 for complex input (the complex extension of ROOT)."""
    return np.asarray(a, dtype=np.complex128 if np.iscomplexobj(a) else np.float64)


def newton_schulz(b, coeffs, steps=5, eps=1e-7):
    """Quintic Newton-Schulz of one 2-D matrix; a list of triples sets the step count.

    Complex matrices use the conjugate transpose (X X^H).
    """
    b = as_wide(b)
    if np.ndim(coeffs) == 1:  # one (a, b, c) triple, repeated `steps` times
        schedule = [tuple(coeffs)] * steps
    else:  # per-iteration triples: their number is the number of steps
        schedule = [tuple(t) for t in coeffs]
    m, n = b.shape
    x = b.T if m > n else b
    x = x / (np.linalg.norm(x, "fro") + eps)
    for ca, cb, cc in schedule:
        a_mat = x @ x.conj().T
        x = ca * x + (cb * a_mat + cc * a_mat @ a_mat) @ x
    return x.T if m > n else x


def shape_scale_factor(shape, shape_scale="rms"):
    """Scale on the orthogonalized step; m = rows = fan_in, n = cols = fan_out."""
    m, n = shape
    if shape_scale == "rms":
        return 0.2 * np.sqrt(max(m, n))
    if shape_scale == "muon":
        return np.sqrt(max(1.0, n / m))
    if shape_scale is None:
        return 1.0
    raise ValueError(f"unknown shape_scale {shape_scale!r}")


def root_matrix_update(
    w,
    mom,
    g,
    *,
    lr=1e-3,
    beta=0.95,
    nesterov=True,
    wd=0.1,
    clip_quantile=0.9,
    clip_threshold=None,
    coeffs="reference",
    ns_steps=5,
    shape_scale="rms",
):
    """One ROOT step for a 2-D W (or a stacked (L, m, n) W, slice by slice).

    Returns (new_w, new_mom). Clipping happens when clip_threshold (a fixed eps, used as
    given) or clip_quantile (eps = quantile(|U|, q) + 1e-9) is set; clip_threshold wins.
    """
    w, mom, g = (as_wide(a) for a in (w, mom, g))
    kw = {
        "lr": lr,
        "beta": beta,
        "nesterov": nesterov,
        "wd": wd,
        "clip_quantile": clip_quantile,
        "clip_threshold": clip_threshold,
        "coeffs": coeffs,
        "ns_steps": ns_steps,
        "shape_scale": shape_scale,
    }
    if (
        w.ndim == 3
    ):  # each slice is its own matrix: own threshold, norm and coefficients
        outs = [root_matrix_update(w[l], mom[l], g[l], **kw) for l in range(w.shape[0])]
        return np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs])
    assert w.ndim == 2, w.shape
    mom = beta * mom + g
    u = g + beta * mom if nesterov else mom
    if clip_threshold is not None or clip_quantile is not None:
        if clip_threshold is not None:
            eps = float(clip_threshold)
        else:
            eps = torch_quantile(np.abs(u), clip_quantile) + 1e-9
        # np.sign(u) = u / |u| for complex u: the magnitude is thresholded.
        outliers = np.sign(u) * np.maximum(np.abs(u) - eps, 0.0)
        base = u - outliers  # the clipped part is what gets orthogonalized
    else:
        base = u
    o_rth = newton_schulz(base, coeffs_for_shape(w.shape, coeffs), steps=ns_steps)
    w = w * (1 - lr * wd)
    w = w - lr * shape_scale_factor(w.shape, shape_scale) * o_rth
    return w, mom


def adamw_update(
    w, m, v, g, t, *, lr=1e-3, wd=0.1, b1=0.9, b2=0.95, eps=1e-8, form="optax"
):
    """One AdamW step (t counts from 1). Returns (new_w, new_m, new_v).

    form='optax' (default, = torch.optim.AdamW):
        step = mu_hat / (sqrt(nu_hat) + eps), mu_hat = m/(1-b1^t), nu_hat = v/(1-b2^t).
    form='reference' (the ROOT/Moonlight code, as worded in ROOT_ALGORITHM.md):
        step = m / (sqrt(v) + eps) * sqrt(1-b2^t) / (1-b1^t).
    The two differ only in where eps sits (by a factor sqrt(1-b2^t) on eps).
    """
    w, m, v, g = (as_wide(a) for a in (w, m, v, g))
    m = m + (1 - b1) * (g - m)  # lerp(m, g, 1 - b1)
    v = v + (1 - b2) * (np.abs(g) ** 2 - v)  # lerp(v, |g|^2, 1 - b2)
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    if form == "optax":
        step = (m / bc1) / (np.sqrt(v / bc2) + eps)
    elif form == "reference":
        step = m / (np.sqrt(v) + eps) * np.sqrt(bc2) / bc1
    else:
        raise ValueError(f"unknown form {form!r}")
    w = w * (1 - lr * wd)
    w = w - lr * step
    return w, m, v


def reference_root(
    params,
    grads_per_step,
    *,
    lr=1e-3,
    beta=0.95,
    nesterov=True,
    wd=0.1,
    clip_quantile=0.9,
    clip_threshold=None,
    coeffs="reference",
    ns_steps=5,
    shape_scale="rms",
    adam_b1=0.9,
    adam_b2=0.95,
    adam_eps=1e-8,
    adam_lr=None,
    adam_wd=None,
    matrix_keys=None,
    stacked_keys=(),
    adam_form="optax",
):
    """Run ROOT on a dict of float64 arrays; returns the params dict after every step.

    Matrix branch: keys in stacked_keys (3-D, per slice), plus 2-D arrays (or exactly the
    keys in matrix_keys when given). Everything else goes to AdamW.
    """
    params = {k: as_wide(p).copy() for k, p in params.items()}
    is_matrix = {
        k: k in stacked_keys
        or (p.ndim == 2 if matrix_keys is None else k in matrix_keys)
        for k, p in params.items()
    }
    mkw = {
        "lr": lr,
        "beta": beta,
        "nesterov": nesterov,
        "wd": wd,
        "clip_quantile": clip_quantile,
        "clip_threshold": clip_threshold,
        "coeffs": coeffs,
        "ns_steps": ns_steps,
        "shape_scale": shape_scale,
    }
    akw = {
        "lr": lr if adam_lr is None else adam_lr,
        "wd": wd if adam_wd is None else adam_wd,
        "b1": adam_b1,
        "b2": adam_b2,
        "eps": adam_eps,
        "form": adam_form,
    }
    mom = {k: np.zeros_like(p) for k, p in params.items()}
    vel = {k: np.zeros_like(p) for k, p in params.items()}
    history = []
    for t, grads in enumerate(grads_per_step, start=1):
        new = {}
        for k, p in params.items():
            g = as_wide(grads[k])
            if is_matrix[k]:
                new[k], mom[k] = root_matrix_update(p, mom[k], g, **mkw)
            else:
                new[k], mom[k], vel[k] = adamw_update(p, mom[k], vel[k], g, t, **akw)
        params = new
        history.append({k: p.copy() for k, p in params.items()})
    return history


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    # (1) many cubic Newton-Schulz steps converge to the polar factor U V^T.
    u_ = np.linalg.qr(rng.standard_normal((20, 20)))[0]
    v_ = np.linalg.qr(rng.standard_normal((30, 20)))[0]
    mat, polar = u_ @ np.diag(np.linspace(1.0, 3.0, 20)) @ v_.T, u_ @ v_.T
    for m_, p_ in ((mat, polar), (mat.T, polar.T)):
        err = np.abs(newton_schulz(m_, (1.5, -0.5, 0.0), steps=30) - p_).max()
        assert err < 1e-8, err
    # (2) torch_quantile is numpy's 'linear' quantile.
    for n in (1, 2, 7, 1000):
        x = rng.standard_normal(n)
        for q in (0.0, 0.1, 0.5, 0.9, 0.95, 1.0):
            assert np.isclose(
                torch_quantile(x, q),
                np.quantile(x, q, method="linear"),
                rtol=0,
                atol=1e-15,
            )
    # (3) three steps on a mixed tree.
    shapes = {
        "w_sq": (64, 64),
        "w_wide": (32, 96),
        "w_tall": (96, 32),
        "bias": (32,),
        "stack": (3, 16, 24),
    }
    params = {k: rng.standard_normal(s) * 0.1 for k, s in shapes.items()}
    before = {k: p.copy() for k, p in params.items()}
    grads = [{k: rng.standard_normal(s) for k, s in shapes.items()} for _ in range(3)]
    hist = reference_root(params, grads, stacked_keys=("stack",))
    assert all(np.array_equal(params[k], before[k]) for k in params)
    for t, p in enumerate(hist, start=1):
        print(t, {k: round(float(np.linalg.norm(v)), 6) for k, v in p.items()})
    print("reference_numpy self-check OK")
