"""Record spectra of real clipped momenta while training a small transformer.

``python -m root_optax.coefficients record`` trains the demo's byte-level NNX
transformer (:mod:`root_optax.demo`, on the Python standard library's source)
with :func:`root_optax.root` and, at a few steps, takes the matrix that ROOT
actually orthogonalizes for every attention and MLP kernel: the clipped
Nesterov momentum ``B = clip(G + beta M, +-eps)``. Its singular values,
normalized to unit Frobenius norm (what Newton–Schulz sees), are written to
``recorded_spectra.json``: seed 0 is what :func:`root_optax.coefficients.fit`
trains on, seed 1 is held out for the precision benchmark.

Needs the ``examples`` extra (flax).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import root_optax

RECORD_STEPS = (10, 25, 50, 100, 150, 200)
SEEDS = (0, 1)


def _matrix_leaves(tree):
    """``{path: leaf}`` for the orthogonalized kernels (2-D, not embed/head/norm)."""
    from root_optax.demo import _model

    leaves = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = jax.tree_util.keystr(path)
        if leaf.ndim == 2 and not any(p in name for p in _model.ADAMW_PARAMS):
            leaves[name] = leaf
    return leaves


def record_seed(seed: int, *, d_model: int, steps: int, progress: bool) -> list:
    """Train one model from ``seed``; return the recorded spectra."""
    from flax import nnx

    from root_optax.demo import _data, _model, _train

    cfg = dataclasses.replace(
        _train.Config(), d_model=d_model, steps=steps, seed=seed, progress=False
    )
    corpus = _data.load_corpus()
    starts = _data.train_batches(
        corpus.train,
        steps=steps,
        batch_size=cfg.batch_size,
        seq_len=cfg.seq_len,
        seed=seed,
    )
    model = _train.build_model(cfg)
    optimizer = nnx.Optimizer(model, _train.make_optimizer("root", cfg), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    direction = root_optax.robust_clip(0.9)
    momentum = root_optax.momentum(0.95, nesterov=True)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(state, mom_state, windows):
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(_model.loss_fn)(model, windows)
        optimizer.update(model, grads)
        mats = _matrix_leaves(nnx.to_pure_dict(grads))
        u, mom_state = momentum.update(mats, mom_state)
        clipped, _ = direction.update(u, direction.init(u))
        return nnx.state((model, optimizer)), mom_state, loss, clipped

    mats0 = _matrix_leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    mom_state = momentum.init(mats0)
    records = []
    iterator = range(1, steps + 1)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"record seed {seed}")
    for t in iterator:
        windows = jnp.asarray(_data.gather(corpus.train, starts[t - 1], cfg.seq_len))
        state, mom_state, loss, clipped = step(state, mom_state, windows)
        if t in RECORD_STEPS:
            for name, b in clipped.items():
                s = np.linalg.svd(np.asarray(b, dtype=np.float64), compute_uv=False)
                s = s / np.linalg.norm(s)
                shape = tuple(int(d) for d in mats0[name].shape)
                records.append(
                    {
                        "seed": seed,
                        "step": t,
                        "param": name,
                        "shape": [min(shape), max(shape)],
                        "loss": round(float(loss), 4),
                        "singular_values": [float(f"{v:.6g}") for v in s],
                    }
                )
    return records


def record(
    path: str | Path, *, d_model: int = 256, steps: int = 200, progress: bool = True
) -> dict:
    """Record both seeds and write the JSON file at ``path``."""
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
            "Regenerate with `python -m root_optax.coefficients record`."
        ),
        "jax_version": jax.__version__,
        "record_steps": list(RECORD_STEPS),
        "seconds": round(time.perf_counter() - start, 1),
        "records": records,
    }
    Path(path).write_text(json.dumps(data, separators=(",", ":")))
    return data
