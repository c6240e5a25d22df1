"""Record spectra of real clipped momenta while training the demo's transformer.

``python -m root_optax.demo.record_spectra`` trains the demo's byte-level NNX
transformer (:mod:`root_optax.demo`, on the Python standard library's source)
with :func:`root_optax.root` and, at a few steps, takes the matrix that ROOT
actually orthogonalizes for every attention and MLP kernel: the clipped
Nesterov momentum ``B = clip(G + beta M, +-eps)``. Its singular values,
normalized to unit Frobenius norm (what Newton–Schulz sees), are written to
``root_optax/coefficients/recorded_spectra.json``, one record per line: seed 0
is what :func:`root_optax.coefficients.fit` trains on, seed 1 is held out for
the precision benchmark. After re-recording, regenerate the table with
``python -m root_optax.coefficients table``.

Layer: above both the demo (it trains it, through its public API) and the
fitter (it writes the fitter's data file); nothing imports this module.
Needs the ``examples`` extra (flax).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.resources
import json
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import root_optax
from root_optax import demo

RECORD_STEPS = (10, 25, 50, 100, 150, 200)
"""Training steps at which the spectra are recorded."""

SEEDS = (0, 1)
"""Seed 0 is fitted on, seed 1 is held out."""

DEFAULT_OUT = Path(
    str(importlib.resources.files("root_optax.coefficients") / "recorded_spectra.json")
)
"""The fitter's data file (read by ``root_optax.coefficients``' ``recorded``)."""


def _matrix_leaves(tree):
    """``{path: leaf}`` for the orthogonalized kernels (2-D, not embed/head/norm)."""
    leaves = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = jax.tree_util.keystr(path)
        if leaf.ndim == 2 and not any(p in name for p in demo.ADAMW_PARAMS):
            leaves[name] = leaf
    return leaves


def _make_step(graphdef, momentum, direction):
    """One jitted ROOT training step that also returns the clipped momenta."""

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(state, mom_state, windows):
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(demo.loss_fn)(model, windows)
        optimizer.update(model, grads)
        mats = _matrix_leaves(nnx.to_pure_dict(grads))
        u, mom_state = momentum.update(mats, mom_state)
        clipped, _ = direction.update(u, direction.init(u))
        return nnx.state((model, optimizer)), mom_state, loss, clipped

    return step


def _records(seed: int, step: int, loss, clipped, shapes) -> list[dict]:
    """One record per matrix: its normalized singular values at ``step``."""
    out = []
    for name, b in clipped.items():
        s = np.linalg.svd(np.asarray(b, dtype=np.float64), compute_uv=False)
        s = s / np.linalg.norm(s)
        shape = shapes[name]
        out.append(
            {
                "seed": seed,
                "step": step,
                "param": name,
                "shape": [min(shape), max(shape)],
                "loss": round(float(loss), 4),
                "singular_values": [float(f"{v:.6g}") for v in s],
            }
        )
    return out


def record_seed(seed: int, *, d_model: int, steps: int, progress: bool) -> list:
    """Train one model from ``seed``; return the recorded spectra."""
    cfg = dataclasses.replace(
        demo.Config(), d_model=d_model, steps=steps, seed=seed, progress=False
    )
    windows = demo.train_windows(demo.load_corpus(), cfg)
    model = demo.build_model(cfg)
    optimizer = nnx.Optimizer(model, demo.make_optimizer("root", cfg), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    momentum = root_optax.momentum(0.95, nesterov=True)
    step = _make_step(graphdef, momentum, root_optax.robust_clip(0.9))
    mats0 = _matrix_leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    shapes = {name: tuple(int(d) for d in m.shape) for name, m in mats0.items()}
    mom_state = momentum.init(mats0)
    records = []
    iterator = range(1, steps + 1)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"record seed {seed}")
    for t in iterator:
        state, mom_state, loss, clipped = step(
            state, mom_state, jnp.asarray(windows[t - 1])
        )
        if t in RECORD_STEPS:
            records += _records(seed, t, loss, clipped, shapes)
    return records


def dumps(data: dict) -> str:
    """JSON with one header field and one record per line (diffable)."""
    head = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in data.items()]
    head = [line for line, key in zip(head, data, strict=True) if key != "records"]
    rows = ",\n".join("  " + json.dumps(r) for r in data["records"])
    return "{\n" + ",\n".join([*head, f' "records": [\n{rows}\n ]']) + "\n}\n"


def record(
    path: str | Path = DEFAULT_OUT,
    *,
    d_model: int = 256,
    steps: int = 200,
    progress: bool = True,
) -> dict:
    """Record both seeds and write the JSON file at ``path`` (:func:`dumps`)."""
    start = time.perf_counter()
    records = []
    for seed in SEEDS:
        records += record_seed(seed, d_model=d_model, steps=steps, progress=progress)
    data = {
        "description": (
            "Normalized singular values of ROOT's clipped Nesterov momentum "
            "(q=0.9) for the attention and MLP kernels of root_optax.demo's "
            f"byte-level transformer (d_model={d_model}, 2 layers) trained with "
            f"root() for {steps} steps on the Python standard library source. "
            "Seed 0 is used for fitting, seed 1 is held out for evaluation. "
            "Regenerate with `python -m root_optax.demo.record_spectra`."
        ),
        "jax_version": jax.__version__,
        "record_steps": list(RECORD_STEPS),
        "seconds": round(time.perf_counter() - start, 1),
        "records": records,
    }
    Path(path).write_text(dumps(data))
    return data


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m root_optax.demo.record_spectra [--out ...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m root_optax.demo.record_spectra",
        description=__doc__.split("\n")[0],
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    for flag in ("d_model", "train_steps"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    data = record(
        args.out,
        d_model=args.d_model,
        steps=args.train_steps,
        progress=not args.no_progress,
    )
    print(f"wrote {len(data['records'])} spectra to {args.out} in {data['seconds']} s")
    return data


if __name__ == "__main__":
    main()
