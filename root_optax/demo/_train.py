"""Train one language model with ROOT, Muon and AdamW and compare them."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

import root_optax
from root_optax.demo import _data, _model, _report

OPTIMIZERS = ("root", "muon", "adamw")

# Peak learning rates of the warmup + cosine schedule, tuned for the default model
# and step budget (250 steps) with seed 1 instead of 0, by final validation loss
# (bits/byte) on a grid about 2x apart, then refined sqrt(2)x around the best:
#   AdamW 5e-4 3.53, 1e-3 3.38, 1.5e-3 3.36, 2e-3 3.35, 2.8e-3 3.38, 4e-3 3.45,
#         8e-3 3.63, 1.6e-2 3.83;
#   ROOT  5e-3 2.93, 7e-3 2.87, 1e-2 2.87, 1.4e-2 2.85, 2e-2 2.89, 4e-2 2.94;
#   Muon  1e-2 2.99, 2e-2 2.92, 2.8e-2 2.87, 4e-2 2.90, 5.6e-2 2.96, 8e-2 3.17
#         (its Adam branch at the AdamW winner, 2e-3).
# Differences under ~0.02 are within seed noise. Retune with --lr-* (and
# --seed) for other sizes or budgets.
DEFAULT_LR = {"root": 1.4e-2, "muon": 2.8e-2, "adamw": 2e-3}

NAMES = {"root": "ROOT", "muon": "Muon", "adamw": "AdamW"}


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a run (the command-line flags)."""

    steps: int = 250
    d_model: int = 128
    layers: int = 2
    heads: int = 4
    seq_len: int = 64
    batch_size: int = 16
    optimizers: tuple[str, ...] = OPTIMIZERS
    lr_root: float = DEFAULT_LR["root"]
    lr_muon: float = DEFAULT_LR["muon"]
    lr_adamw: float = DEFAULT_LR["adamw"]
    weight_decay: float = 0.1
    warmup_fraction: float = 0.1
    seed: int = 0
    eval_every: int = 25
    eval_batches: int = 8
    out: str = "demo_results"
    progress: bool = True


def schedule(peak: float, steps: int, warmup_fraction: float) -> optax.Schedule:
    """Linear warmup to ``peak``, then cosine decay to ``peak / 10`` at ``steps``."""
    warmup = max(1, int(steps * warmup_fraction))
    return optax.warmup_cosine_decay_schedule(
        0.0,
        peak,
        warmup_steps=warmup,
        decay_steps=max(steps, warmup + 1),
        end_value=peak / 10,
    )


def make_optimizer(name: str, cfg: Config) -> optax.GradientTransformation:
    """The optimizer ``name`` with the run's schedule and shared settings.

    All three use decoupled weight decay ``cfg.weight_decay`` and Adam betas
    (0.9, 0.95). ROOT and Muon orthogonalize the attention and MLP kernels and
    send the embeddings, head and norms (:data:`_model.ADAMW_PARAMS`) to their
    AdamW branch. ROOT's AdamW branch shares its learning rate (its update RMS is
    matched to AdamW's, as in the reference); Muon's Adam branch uses the AdamW
    learning rate, as is usual for Muon.
    """
    sched = functools.partial(
        schedule, steps=cfg.steps, warmup_fraction=cfg.warmup_fraction
    )
    dims = root_optax.matrix_dimension_numbers(_model.ADAMW_PARAMS)
    if name == "root":
        return root_optax.root(
            sched(cfg.lr_root),
            weight_decay=cfg.weight_decay,
            weight_dimension_numbers=dims,
        )
    if name == "muon":
        return optax.contrib.muon(
            sched(cfg.lr_muon),
            weight_decay=cfg.weight_decay,
            adam_b2=0.95,
            adam_weight_decay=cfg.weight_decay,
            adam_learning_rate=sched(cfg.lr_adamw),
            muon_weight_dimension_numbers=dims,
        )
    if name == "adamw":
        return optax.adamw(
            sched(cfg.lr_adamw), b1=0.9, b2=0.95, weight_decay=cfg.weight_decay
        )
    raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}.")


def build_model(cfg: Config) -> _model.TransformerLM:
    """The model, initialised from ``cfg.seed`` (identical for every optimizer)."""
    return _model.TransformerLM(
        vocab_size=_data.VOCAB_SIZE,
        d_model=cfg.d_model,
        num_layers=cfg.layers,
        num_heads=cfg.heads,
        max_len=cfg.seq_len,
        rngs=nnx.Rngs(cfg.seed),
    )


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
        loss, grads = nnx.value_and_grad(_model.loss_fn)(model, windows)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    @jax.jit
    def eval_loss(state, windows):
        model, _ = nnx.merge(graphdef, state)
        return jax.lax.map(functools.partial(_model.loss_fn, model), windows).mean()

    return state, train_step, eval_loss


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
        for name, bar in bars.items():
            bar.set_postfix(
                loss=f"{records[name]['train_loss'][-1] / math.log(2):.3f}",
                val=f"{records[name]['eval_loss'][-1] / math.log(2):.3f}",
                refresh=False,
            )
            bar.update()
    for bar in bars.values():
        bar.close()
    return records


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


def summarize(name: str, run: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """Table row of one run: final losses in bits per byte, speed."""
    bits = 1 / math.log(2)
    last = max(1, min(10, len(run["train_loss"]) // 10))
    timed = run["step_seconds"][1:] or run["step_seconds"]  # drop the compile
    median = float(np.median(timed))
    return {
        "optimizer": NAMES[name],
        "learning_rate": getattr(cfg, f"lr_{name}"),
        "train_bpb": float(np.mean(run["train_loss"][-last:])) * bits,
        "valid_bpb": run["eval_loss"][-1] * bits,
        "tokens_per_s": cfg.batch_size * cfg.seq_len / median,
        "median_step_ms": 1e3 * median,
        "first_step_s": run["step_seconds"][0],
        "train_loss_window": last,
    }


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """Command-line flags to a :class:`Config`."""
    d = Config()
    parser = argparse.ArgumentParser(
        prog="python -m root_optax.demo",
        description=(
            "Train a small byte-level transformer language model on Python "
            "standard-library source with ROOT, Muon and AdamW, and compare "
            "losses and step times."
        ),
    )
    add = parser.add_argument
    add("--steps", type=int, default=d.steps, help="training steps per optimizer")
    add("--d-model", type=int, default=d.d_model, help="model width")
    add("--layers", type=int, default=d.layers, help="transformer blocks")
    add("--heads", type=int, default=d.heads, help="attention heads")
    add("--seq-len", type=int, default=d.seq_len, help="tokens (bytes) per sequence")
    add("--batch-size", type=int, default=d.batch_size, help="sequences per step")
    add(
        "--optimizers",
        default=",".join(d.optimizers),
        help="comma-separated subset of root,muon,adamw, trained in this order",
    )
    for name in OPTIMIZERS:
        add(
            f"--lr-{name}",
            type=float,
            default=getattr(d, f"lr_{name}"),
            help=f"peak learning rate of {NAMES[name]}",
        )
    add("--weight-decay", type=float, default=d.weight_decay, help="all optimizers")
    add("--seed", type=int, default=d.seed, help="model init and data order")
    add("--eval-every", type=int, default=d.eval_every, help="steps between evals")
    add(
        "--eval-batches",
        type=int,
        default=d.eval_batches,
        help="validation batches per evaluation",
    )
    add("--out", default=d.out, help="output directory for PNG, JSON and Markdown")
    add("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    optimizers = tuple(o.strip().lower() for o in args.optimizers.split(",") if o)
    bad = [o for o in optimizers if o not in OPTIMIZERS]
    if bad or not optimizers or len(set(optimizers)) != len(optimizers):
        parser.error(
            f"--optimizers must be distinct names from {','.join(OPTIMIZERS)}, "
            f"got {args.optimizers!r}"
        )
    positive = ("steps", "d_model", "layers", "heads", "seq_len", "batch_size")
    for field in (*positive, "eval_every", "eval_batches"):
        if getattr(args, field) < 1:
            parser.error(f"--{field.replace('_', '-')} must be at least 1")
    if args.d_model % args.heads:
        parser.error(f"--d-model {args.d_model} must be divisible by --heads")
    return Config(
        steps=args.steps,
        d_model=args.d_model,
        layers=args.layers,
        heads=args.heads,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        optimizers=optimizers,
        lr_root=args.lr_root,
        lr_muon=args.lr_muon,
        lr_adamw=args.lr_adamw,
        weight_decay=args.weight_decay,
        seed=args.seed,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        out=args.out,
        progress=not args.no_progress,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the demo with command-line ``argv``; returns what it writes to JSON."""
    cfg = parse_args(argv)
    started = time.perf_counter()
    corpus = _data.load_corpus()
    if len(corpus.valid) <= cfg.seq_len + 1:
        raise ValueError(f"--seq-len {cfg.seq_len} is longer than the validation text.")
    train_windows = _data.gather(
        corpus.train,
        _data.train_batches(
            corpus.train,
            steps=cfg.steps,
            batch_size=cfg.batch_size,
            seq_len=cfg.seq_len,
            seed=cfg.seed,
        ),
        cfg.seq_len,
    )
    eval_windows = jax.device_put(
        _data.gather(
            corpus.valid,
            _data.eval_batches(
                corpus.valid,
                num_batches=cfg.eval_batches,
                batch_size=cfg.batch_size,
                seq_len=cfg.seq_len,
            ),
            cfg.seq_len,
        )
    )
    num_params = sum(
        x.size for x in jax.tree.leaves(nnx.state(build_model(cfg), nnx.Param))
    )
    print(_report.header(cfg, corpus, num_params))

    print("Training all optimizers in lockstep (bits per byte; val: last eval):")
    runs = train(cfg, train_windows, eval_windows)
    rows = [summarize(name, runs[name], cfg) for name in cfg.optimizers]
    if "adamw" in cfg.optimizers:
        reference = rows[cfg.optimizers.index("adamw")]["median_step_ms"]
        for row in rows:
            row["step_time_vs_adamw"] = row["median_step_ms"] / reference
    else:
        for row in rows:
            row["step_time_vs_adamw"] = None

    results = _report.results(cfg, corpus, num_params, runs, rows)
    results["wall_seconds"] = time.perf_counter() - started
    paths = _report.write(results, Path(cfg.out))
    print()
    print(_report.markdown_table(rows))
    print()
    print(f"Wrote {', '.join(str(p) for p in paths)}")
    print(f"Total wall time {results['wall_seconds']:.1f} s")
    return results
