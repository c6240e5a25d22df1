"""Does ROOT train more robustly than Muon and AdamW under gradient and label noise?

The paper's robustness experiment at small scale: the demo's byte-level NNX
transformer (``root_optax.demo``) on the Python standard-library source, trained
from the same initialisation on the same batches by ROOT, two ROOT ablations,
``optax.contrib.muon`` and ``optax.adamw``, under four conditions:

* ``clean``: the demo's training.
* ``outliers``: on a fraction of steps a few gradient entries of every
  orthogonalized matrix are multiplied by a large factor (sparse outliers).
* ``heavy_tail``: every step, Student-t noise (infinite variance) scaled by each
  matrix's gradient RMS is added to that matrix's gradient.
* ``label_noise``: a fraction of the training target bytes are replaced by
  random bytes (validation stays clean).

The noise is drawn from ``(seed, step, leaf)`` only, so every optimizer gets the
same outlier positions and the same noise draws, and is injected into the
gradients before ``tx.update``. Each (condition, optimizer) is run for several
seeds (seed = model init, data order and noise). Reports final validation and
train loss (bits per byte), their spread, divergences and steps skipped by
ROOT's non-finite guard; writes ``benchmarks/results/bench_robustness.{json,md,png}``.

Layout: the conditions are in ``_noise.py``, the optimizer variants in
``_optimizers.py``, the trainer over the demo's public API in ``_training.py``
and the tables, text and plot in ``_robustness_report.py``; this script holds
the setup, the loop over runs and the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from typing import Any

import _common  # first: puts the checkout's root_optax on sys.path
import _robustness_report as report
from _noise import CONDITIONS, Noise
from _optimizers import (
    OPTIMIZER_DETAILS,
    OPTIMIZERS,
    identical_coefficients,
    learning_rate,
    make_optimizer,
)
from _training import Trainer, load_windows, run_one

from root_optax import demo

MODEL = dataclasses.replace(demo.Config(), d_model=64, eval_every=50, progress=False)
"""The demo's configuration at half its width, evaluated every 50 steps."""


@dataclasses.dataclass(frozen=True)
class Setup:
    """The demo model to train (:data:`MODEL` by default) and the runs."""

    config: demo.Config = MODEL
    seeds: tuple[int, ...] = (0, 1, 2)
    conditions: tuple[str, ...] = CONDITIONS
    optimizers: tuple[str, ...] = (
        "root",
        "root_noclip",
        "root_muon_ns",
        "muon",
        "adamw",
    )
    noise: Noise = dataclasses.field(default_factory=Noise)


MODEL_FLAGS = (
    "steps",
    "d_model",
    "layers",
    "heads",
    "seq_len",
    "batch_size",
    "eval_every",
    "eval_batches",
)
"""Fields of the demo config that flags (and ``--quick``) may change."""

QUICK = {
    "steps": 40,
    "d_model": 32,
    "layers": 1,
    "heads": 2,
    "seq_len": 32,
    "batch_size": 8,
    "eval_every": 20,
    "eval_batches": 2,
}
"""``--quick``'s model: a pipeline check (2 seeds, no files written)."""


def _log_run(log, done: int, total: int, row: dict[str, Any]) -> None:
    skipped = row["skipped_steps"]
    log(
        f"[{done:>3}/{total}] {row['condition']:<11} seed {row['seed']} "
        f"{OPTIMIZERS[row['optimizer']]:<22} valid {row['final_valid_bpb']:.3f} "
        f"train {row['final_train_bpb']:.3f} bits/byte"
        + (" DIVERGED" if row["diverged"] else "")
        + ("" if skipped is None else f", skipped {skipped}")
        + f" ({row['wall_s']:.1f} s)"
    )


def run_all(setup: Setup, log=print) -> tuple[Trainer, list[dict[str, Any]]]:
    """Every (condition, seed, optimizer) run, in that loop order."""
    trainer = Trainer(setup.config, setup.noise)
    txs = {name: make_optimizer(name, setup.config) for name in setup.optimizers}
    _, windows, eval_windows = load_windows(setup.config, setup.seeds)
    runs = []
    total = len(setup.conditions) * len(setup.seeds) * len(setup.optimizers)
    for condition in setup.conditions:
        for seed in setup.seeds:
            for name in setup.optimizers:
                result = run_one(
                    trainer, txs[name], condition, seed, windows[seed], eval_windows
                )
                row = {"condition": condition, "optimizer": name, "seed": seed}
                runs.append({**row, **result})
                if log is not None:
                    _log_run(log, len(runs), total, runs[-1])
    return trainer, runs


def _choices(text: str, allowed: Sequence[str], flag: str) -> tuple[str, ...]:
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in items if x not in allowed]
    if bad or not items or len(set(items)) != len(items):
        raise SystemExit(
            f"{flag} must be distinct names from {','.join(allowed)}, got {text!r}"
        )
    return items


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = Setup().config
    add = parser.add_argument
    add("--steps", type=int, default=None, help=f"steps per run ({d.steps})")
    add(
        "--seeds",
        default=None,
        help="number of seeds (0..N-1) or a comma-separated list (3)",
    )
    add("--conditions", default=",".join(CONDITIONS), help="subset, in this order")
    add(
        "--optimizers",
        default=",".join(Setup().optimizers),
        help="subset, in this order",
    )
    add("--d-model", type=int, default=None, help=f"model width ({d.d_model})")
    add("--layers", type=int, default=None, help=f"blocks ({d.layers})")
    add("--heads", type=int, default=None, help=f"attention heads ({d.heads})")
    add("--seq-len", type=int, default=None, help=f"bytes per sequence ({d.seq_len})")
    add("--batch-size", type=int, default=None, help=f"batch ({d.batch_size})")
    add("--eval-every", type=int, default=None, help=f"({d.eval_every})")
    add("--eval-batches", type=int, default=None, help=f"({d.eval_batches})")
    n = Noise()
    for field in dataclasses.fields(Noise):
        add(
            f"--{field.name.replace('_', '-')}",
            type=float,
            default=getattr(n, field.name),
            help=f"noise setting ({getattr(n, field.name):g})",
        )
    add(
        "--quick",
        action="store_true",
        help="tiny model, 40 steps, 2 seeds, to check the pipeline; writes no files",
    )
    add(
        "--run-identical",
        action="store_true",
        help="run the root_muon_ns ablation even when its Newton–Schulz "
        "coefficients equal ROOT's for every matrix shape (bit-identical runs)",
    )
    add("--no-plot", action="store_true", help="skip the PNG")
    return parser


def _seeds(text: str) -> tuple[int, ...]:
    if "," in text:
        return tuple(int(s) for s in text.split(",") if s)
    return tuple(range(int(text)))


def parse_args(argv: Sequence[str] | None = None) -> tuple[Setup, argparse.Namespace]:
    """Flags to a :class:`Setup` (and the parsed namespace)."""
    parser = _parser()
    args = parser.parse_args(argv)
    model = dict(QUICK) if args.quick else {}
    for field in MODEL_FLAGS:
        if getattr(args, field) is not None:
            if getattr(args, field) < 1:
                parser.error(f"--{field.replace('_', '-')} must be at least 1")
            model[field] = getattr(args, field)
    values = {"seeds": (0, 1)} if args.quick else {}
    if args.seeds is not None:
        values["seeds"] = _seeds(args.seeds)
        if not values["seeds"]:
            parser.error("--seeds needs at least one seed")
    setup = Setup(
        config=dataclasses.replace(MODEL, **model),
        conditions=_choices(args.conditions, CONDITIONS, "--conditions"),
        optimizers=_choices(args.optimizers, tuple(OPTIMIZERS), "--optimizers"),
        noise=Noise(
            **{f.name: getattr(args, f.name) for f in dataclasses.fields(Noise)}
        ),
        **values,
    )
    if setup.config.d_model % setup.config.heads:
        parser.error(f"--d-model {setup.config.d_model} must be divisible by --heads")
    return setup, args


def omit_identical(setup: Setup) -> tuple[Setup, dict[str, str]]:
    """Drop ``root_muon_ns`` when it would repeat ROOT's runs bit for bit."""
    if not {"root", "root_muon_ns"} <= set(setup.optimizers):
        return setup, {}
    shapes = Trainer(setup.config, setup.noise).matrix_shapes
    if not identical_coefficients(shapes):
        return setup, {}
    reason = (
        f"not run: ns_coeffs='root' and 'muon' give bit-identical "
        f"Newton–Schulz results for every matrix shape of this model "
        f"({', '.join('x'.join(map(str, s)) for s in shapes)}), so it "
        "would repeat ROOT's runs exactly (--run-identical runs it anyway)"
    )
    print(f"{OPTIMIZERS['root_muon_ns']}: {reason}.")
    kept = tuple(o for o in setup.optimizers if o != "root_muon_ns")
    return dataclasses.replace(setup, optimizers=kept), {"root_muon_ns": reason}


def _config_record(setup: Setup, trainer: Trainer, omitted) -> dict[str, Any]:
    """The ``config`` written to the JSON file (flat, as before the split)."""
    cfg = setup.config
    record = {field: getattr(cfg, field) for field in MODEL_FLAGS[:6]}
    record.update(seeds=setup.seeds, conditions=setup.conditions)
    record.update(optimizers=setup.optimizers, eval_every=cfg.eval_every)
    record.update(eval_batches=cfg.eval_batches, noise=dataclasses.asdict(setup.noise))
    record.update(
        num_params=int(trainer.num_params),
        noise_matrix_shapes=trainer.matrix_shapes,
        learning_rates={name: learning_rate(name, cfg) for name in setup.optimizers},
        optimizers={name: OPTIMIZER_DETAILS[name] for name in setup.optimizers},
        omitted_optimizers=omitted,
        schedule=f"linear warmup {cfg.warmup_fraction:.0%} then cosine to "
        "peak/10 (the demo's)",
        weight_decay=cfg.weight_decay,
    )
    return record


def _write(setup, args, env, trainer, runs, rows, omitted, wall) -> list:
    """Write ``benchmarks/results/bench_robustness.{json,md,png}``."""
    pivot, table = report.pivot_table(rows, setup), report.results_table(rows)
    sections = [
        ("Final validation loss (bits/byte, mean ± std over seeds)", pivot),
        ("All numbers", table),
        ("Setup", report.setup_text(setup, trainer)),
        ("Wall time", f"{wall:.0f} s for {len(runs)} runs."),
    ]
    if omitted:
        text = "\n".join(f"- {OPTIMIZERS[k]}: {v}." for k, v in omitted.items())
        sections.insert(2, ("Omitted", text))
    plt = None if args.no_plot else _common.pyplot()
    figure = None if plt is None else report.plot(plt, setup, rows, runs)
    return _common.write_results(
        "bench_robustness",
        title="Robustness to gradient outliers, heavy-tailed gradient noise and "
        "label noise: ROOT vs Muon vs AdamW",
        env=env,
        data={
            "config": _config_record(setup, trainer, omitted),
            "units": "bits per byte (nats / ln 2); null: non-finite",
            "divergence_rule": "any non-finite train/validation loss, or final "
            "validation loss above the run's initial validation loss",
            "summary": report.json_safe(rows),
            "runs": report.json_safe(runs),
            "wall_seconds": wall,
        },
        sections=sections,
        figure=figure,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from command-line ``argv``; 0 on success."""
    setup, args = parse_args(argv)
    started = time.perf_counter()
    env = _common.environment()
    omitted = {}
    if not args.run_identical:
        setup, omitted = omit_identical(setup)
    print(
        f"{env['platform']} / {env['device_kind']}, {env['cpu_count']} CPUs; "
        f"{len(setup.conditions)} conditions x {len(setup.optimizers)} optimizers "
        f"x {len(setup.seeds)} seeds, {setup.config.steps} steps each"
    )
    trainer, runs = run_all(setup)
    rows = report.summarize(runs, setup)
    wall = time.perf_counter() - started
    print()
    print(report.pivot_table(rows, setup))
    print()
    print(report.results_table(rows))
    print(f"\nTotal wall time {wall:.0f} s")
    if args.quick:
        print("--quick: no files written.")
        return 0
    _write(setup, args, env, trainer, runs, rows, omitted, wall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
