"""The command line of ``python -m root_optax.demo``: flags, run, report."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from root_optax.demo import _data, _extra, _report
from root_optax.demo._config import NAMES, OPTIMIZERS, Config
from root_optax.demo._model import build_model
from root_optax.demo._train import train

_POSITIVE = ("steps", "d_model", "layers", "heads", "seq_len", "batch_size")


def _parser(d: Config) -> argparse.ArgumentParser:
    """The flags, with ``d``'s values as defaults."""
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
    return parser


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """Command-line flags to a :class:`Config`."""
    parser = _parser(Config())
    args = parser.parse_args(argv)
    optimizers = tuple(o.strip().lower() for o in args.optimizers.split(",") if o)
    bad = [o for o in optimizers if o not in OPTIMIZERS]
    if bad or not optimizers or len(set(optimizers)) != len(optimizers):
        parser.error(
            f"--optimizers must be distinct names from {','.join(OPTIMIZERS)}, "
            f"got {args.optimizers!r}"
        )
    for field in (*_POSITIVE, "eval_every", "eval_batches"):
        if getattr(args, field) < 1:
            parser.error(f"--{field.replace('_', '-')} must be at least 1")
    if args.d_model % args.heads:
        parser.error(f"--d-model {args.d_model} must be divisible by --heads")
    flags = ("lr_root", "lr_muon", "lr_adamw", "weight_decay", "seed", "out")
    return dataclasses.replace(
        Config(),
        **{f: getattr(args, f) for f in (*_POSITIVE, "eval_every", "eval_batches")},
        **{f: getattr(args, f) for f in flags},
        optimizers=optimizers,
        progress=not args.no_progress,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the demo with command-line ``argv``; returns what it writes to JSON."""
    cfg = parse_args(argv)
    _extra.require("matplotlib", "it plots the loss curves")
    if cfg.progress:
        _extra.require("tqdm", "progress bars; --no-progress runs without")
    started = time.perf_counter()
    corpus = _data.load_corpus()
    if len(corpus.valid) <= cfg.seq_len + 1:
        raise ValueError(
            f"root_optax.demo: --seq-len {cfg.seq_len} is longer than the "
            "validation text."
        )
    train_windows = _data.train_windows(corpus, cfg)
    eval_windows = jax.device_put(_data.eval_windows(corpus, cfg))
    num_params = sum(
        x.size for x in jax.tree.leaves(nnx.state(build_model(cfg), nnx.Param))
    )
    print(_report.header(cfg, corpus, num_params))

    print("Training all optimizers in lockstep (bits per byte; val: last eval):")
    runs = train(cfg, train_windows, eval_windows)
    rows = _report.table_rows(cfg, runs)
    results = _report.results(cfg, corpus, num_params, runs, rows)
    results["wall_seconds"] = time.perf_counter() - started
    paths = _report.write(results, Path(cfg.out))
    print()
    print(_report.markdown_table(rows))
    print()
    print(f"Wrote {', '.join(str(p) for p in paths)}")
    print(f"Total wall time {results['wall_seconds']:.1f} s")
    return results
