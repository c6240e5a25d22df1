"""Training the demo's optimizers in lockstep on the same model and batches."""

from __future__ import annotations

import functools
import math
import time

import jax
import numpy as np
from flax import nnx

from root_optax.demo._config import NAMES, Config
from root_optax.demo._model import build_model, loss_fn
from root_optax.demo._optimizers import make_optimizer


def _make_run(name: str, cfg: Config):
    """A fresh model and optimizer ``name``: ``(state, train_step, eval_loss)``.

    ``train_step(state, windows) -> (state, loss)`` and ``eval_loss(state,
    windows) -> loss`` are jitted functions of the split ``(model, optimizer)``
    state (``nnx.split``/``nnx.merge`` keep the Python overhead per step low).
    """
    model = build_model(cfg)
    optimizer = nnx.Optimizer(model, make_optimizer(name, cfg), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state, windows):
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(loss_fn)(model, windows)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    @jax.jit
    def eval_loss(state, windows):
        model, _ = nnx.merge(graphdef, state)
        return jax.lax.map(functools.partial(loss_fn, model), windows).mean()

    return state, train_step, eval_loss


def _progress_bars(names, total, enabled):
    """One tqdm bar per optimizer, stacked (tqdm imported only when enabled)."""
    if not enabled:
        return {}
    from tqdm.auto import tqdm

    return {
        name: tqdm(
            total=total,
            desc=f"{NAMES[name]:>5}",
            unit="step",
            position=i,
            dynamic_ncols=True,
        )
        for i, name in enumerate(names)
    }


def _show(bars, records) -> None:
    """Advance each bar, showing the latest train and validation loss in bits."""
    for name, bar in bars.items():
        bar.set_postfix(
            loss=f"{records[name]['train_loss'][-1] / math.log(2):.3f}",
            val=f"{records[name]['eval_loss'][-1] / math.log(2):.3f}",
            refresh=False,
        )
        bar.update()


def train(
    cfg: Config, train_windows: np.ndarray, eval_windows: jax.Array
) -> dict[str, dict[str, list]]:
    """Train one fresh model per optimizer in ``cfg.optimizers``, in lockstep.

    Every model starts from the same initialisation and sees the same batches.
    Step ``t`` of every optimizer runs before step ``t + 1`` of any (in an order
    rotated each step), so a busy or throttling machine slows all of them alike
    and their step times stay comparable.

    Args:
      cfg: the run configuration.
      train_windows: ``(steps, batch, seq_len + 1)`` token windows, in order.
      eval_windows: ``(eval_batches, batch, seq_len + 1)`` validation windows.

    Returns:
      For each optimizer: per-step train losses and step seconds, and
      validation losses at the evaluation steps (0 is the initial model), all
      losses in nats per byte.
    """
    names = list(cfg.optimizers)
    states, steps_fn, evals, records = {}, {}, {}, {}
    for name in names:
        states[name], steps_fn[name], evals[name] = _make_run(name, cfg)
        records[name] = {
            "train_loss": [],
            "step_seconds": [],
            "eval_steps": [0],
            "eval_loss": [float(evals[name](states[name], eval_windows))],
        }
    num_steps = len(train_windows)
    bars = _progress_bars(names, num_steps, cfg.progress)
    for step in range(num_steps):
        windows = jax.device_put(train_windows[step])
        k = step % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            states[name], loss = steps_fn[name](states[name], windows)
            loss = float(loss)  # waits for the step
            records[name]["step_seconds"].append(time.perf_counter() - start)
            records[name]["train_loss"].append(loss)
        done = step + 1
        if done % cfg.eval_every == 0 or done == num_steps:
            for name in names:
                records[name]["eval_steps"].append(done)
                loss = float(evals[name](states[name], eval_windows))
                records[name]["eval_loss"].append(loss)
        _show(bars, records)
    for bar in bars.values():
        bar.close()
    return records
