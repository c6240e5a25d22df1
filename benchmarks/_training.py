"""Training the demo model with any optimizer under a noise condition.

Built on :mod:`root_optax.demo`'s public surface (config, model, corpus,
batches): :class:`Trainer` compiles one jitted step per optimizer that computes
the loss and gradients, injects the condition's gradient noise
(:func:`_noise.corrupt_gradients`) and applies the update; :func:`run_one`
trains one seed and returns its losses (bits per byte) and diagnostics.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence
from typing import Any

import _common  # noqa: F401  (first: puts the checkout's root_optax on sys.path)
import _noise
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from optax.contrib import MuonDimensionNumbers

import root_optax
from root_optax import demo

BITS = 1 / math.log(2)
"""Bits per nat: losses are reported in bits per byte."""


def matrix_leaves(params: Any) -> tuple[bool, ...]:
    """Per leaf of ``params`` (in ``jax.tree.leaves`` order): is it a matrix that
    ROOT and Muon orthogonalize (attention and MLP kernels)? Noise goes there."""
    dims = root_optax.matrix_dimension_numbers(demo.ADAMW_PARAMS)(params)
    specs = jax.tree.leaves(
        dims, is_leaf=lambda x: x is None or isinstance(x, MuonDimensionNumbers)
    )
    return tuple(spec is not None for spec in specs)


def cross_entropy(model, inputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-byte cross-entropy (nats); the demo's ``loss_fn`` with the
    targets given separately so that they can be noisy."""
    logits = model(inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def load_windows(cfg: demo.Config, seeds: Sequence[int]):
    """The corpus, ``{seed: training windows}`` and the clean validation windows."""
    corpus = demo.load_corpus()
    windows = {
        seed: demo.train_windows(corpus, dataclasses.replace(cfg, seed=seed))
        for seed in seeds
    }
    return corpus, windows, jax.device_put(demo.eval_windows(corpus, cfg))


class Trainer:
    """Jitted train and eval steps of the demo model ``cfg`` under ``noise``.

    One train step is compiled per optimizer (:meth:`train_step`); the model
    is built once to read its structure, and per seed by :meth:`init_params`.
    """

    def __init__(self, cfg: demo.Config, noise: _noise.Noise | None = None):
        self.cfg, self.noise = cfg, _noise.Noise() if noise is None else noise
        self.graphdef, state = nnx.split(demo.build_model(cfg), nnx.Param)
        params = nnx.to_pure_dict(state)
        self.is_matrix = matrix_leaves(params)
        self.num_params = sum(x.size for x in jax.tree.leaves(params))
        self.matrix_shapes = [
            list(x.shape) for x, m in zip(jax.tree.leaves(params), self.is_matrix) if m
        ]
        self.noise_size = sum(math.prod(s) for s in self.matrix_shapes)
        self._steps: dict[optax.GradientTransformation, Any] = {}

        @jax.jit
        def eval_loss(params, windows):
            model = nnx.merge(self.graphdef, params)
            return jax.lax.map(functools.partial(demo.loss_fn, model), windows).mean()

        self.eval_loss = eval_loss

    def init_params(self, seed: int) -> dict:
        """The model's parameters (a pure dict) initialised from ``seed``."""
        model = demo.build_model(dataclasses.replace(self.cfg, seed=seed))
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))

    def train_step(self, tx: optax.GradientTransformation):
        """``step(params, opt_state, inputs, targets, seed, t, outlier_on,
        t_scale, t_draws) -> (params, opt_state, loss)``: loss and gradients on
        the batch, noise injected into the gradients, then ``tx``'s update.
        Compiled once per ``tx`` (build each optimizer once)."""
        if tx in self._steps:
            return self._steps[tx]
        graphdef, is_matrix, noise = self.graphdef, self.is_matrix, self.noise

        @functools.partial(jax.jit, donate_argnums=(0, 1))
        def step(
            params, opt_state, inputs, targets, seed, t, outlier_on, t_scale, t_draws
        ):
            loss, grads = jax.value_and_grad(
                lambda p: cross_entropy(nnx.merge(graphdef, p), inputs, targets)
            )(params)
            grads = _noise.corrupt_gradients(
                grads,
                is_matrix,
                _noise.step_key(seed, t),
                outlier_on=outlier_on,
                t_scale=t_scale,
                t_draws=t_draws,
                noise=noise,
            )
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        self._steps[tx] = step
        return step


def divergence(train_losses, eval_losses) -> tuple[bool, int | None, str]:
    """``(diverged, first non-finite train step or None, reason)``.

    A run diverged if any train or validation loss is non-finite, or if its
    final validation loss is above its initial (untrained) validation loss.
    """
    train = np.asarray(train_losses, dtype=float)
    bad = np.flatnonzero(~np.isfinite(train))
    first = int(bad[0]) + 1 if bad.size else None
    if first is not None or not np.all(np.isfinite(eval_losses)):
        return True, first, "non-finite loss"
    if eval_losses[-1] > eval_losses[0]:
        return True, None, "final validation loss above initial"
    return False, None, ""


def _train(trainer: Trainer, tx, data, seed: int, eval_windows: jax.Array):
    """The training loop: ``(train losses, eval steps, eval losses, opt_state)``."""
    inputs, targets, flags, t_scale, t_draws = data
    step = trainer.train_step(tx)
    params = trainer.init_params(seed)
    opt_state = tx.init(params)
    eval_steps = [0]
    eval_losses = [float(trainer.eval_loss(params, eval_windows))]
    losses = []
    t_scale = jnp.float32(t_scale)
    no_draws = jnp.zeros(trainer.noise_size, jnp.float32)
    steps, every = len(inputs), trainer.cfg.eval_every
    for t in range(steps):
        params, opt_state, loss = step(
            params,
            opt_state,
            inputs[t],
            targets[t],
            jnp.int32(seed),
            jnp.int32(t),
            jnp.bool_(flags[t]),
            t_scale,
            no_draws if t_draws is None else t_draws[t],
        )
        losses.append(loss)
        if (t + 1) % every == 0 or t + 1 == steps:
            eval_steps.append(t + 1)
            eval_losses.append(float(trainer.eval_loss(params, eval_windows)))
    return [float(x) for x in losses], eval_steps, eval_losses, opt_state


def run_one(
    trainer: Trainer,
    tx: optax.GradientTransformation,
    condition: str,
    seed: int,
    train_windows: np.ndarray,
    eval_windows: jax.Array,
) -> dict[str, Any]:
    """Train ``tx`` under ``condition`` from ``seed``: losses (bits per byte),
    divergence, steps skipped by ROOT's non-finite guard, curves, wall time."""
    started = time.perf_counter()
    data = _noise.condition_data(
        condition, train_windows, seed, trainer.noise, trainer.noise_size
    )
    train, eval_steps, eval_losses, opt_state = _train(
        trainer, tx, data, seed, eval_windows
    )
    skipped = None
    if isinstance(opt_state, root_optax.SkipNonfiniteState):
        skipped = int(opt_state.skipped)
    diverged, first_bad, reason = divergence(train, eval_losses)
    window = max(1, min(10, len(train) // 10))
    return {
        "final_valid_bpb": eval_losses[-1] * BITS,
        "final_train_bpb": float(np.mean(train[-window:])) * BITS,
        "initial_valid_bpb": eval_losses[0] * BITS,
        "diverged": diverged,
        "divergence_reason": reason,
        "first_nonfinite_step": first_bad,
        "skipped_steps": skipped,
        "outlier_steps": int(data[2].sum()),
        "wall_s": time.perf_counter() - started,
        "train_loss_window": window,
        "eval_steps": eval_steps,
        "eval_bpb": [x * BITS for x in eval_losses],
        "train_bpb": [x * BITS for x in train],
    }
