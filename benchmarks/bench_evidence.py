"""Does ROOT train better than Muon, and which of its parts is responsible?

A fairly tuned comparison on the demo's byte-level transformer
(``root_optax.demo``) at two widths. Six optimizers:

* ``root``: ``root_optax.root`` as shipped;
* ``root_noclip``: without its outlier clip (``clip_quantile=None``);
* ``root_muon_ns``: with Muon's fixed Newton–Schulz coefficients;
* ``muon_root_recipe``: ``optax.contrib.muon`` configured like ROOT (shape
  scale ``0.2 sqrt(max(m, n))``, Adam branch at the same learning rate, same
  momentum direction), so that against ``root`` only ROOT's two mechanisms
  differ;
* ``muon``: ``optax.contrib.muon`` as the demo ships it;
* ``adamw``: ``optax.adamw``.

Per width: a learning-rate sweep of every optimizer on one seed (5 values 2x
apart around the demo's tuned rates, extended by one value past an edge
winner), then 3 fresh seeds at each optimizer's best rate, clean and under
sparse gradient outliers and heavy-tailed gradient noise (``_noise.py``, 2 of
the seeds), and
the step time of each optimizer in interleaved rounds (ratios to Muon). The
report (``_evidence_report.py``) gives final validation loss (mean ± std,
min/max), the sensitivity curves, steps to reach Muon's and AdamW's final
loss, and which paired differences exceed the seed spread. Writes
``benchmarks/results/bench_evidence.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from typing import Any

import _common  # first: puts the checkout's root_optax on sys.path
import _evidence_report as report
import jax
import jax.numpy as jnp
from _noise import Noise
from _optimizers import OPTIMIZERS, SWEPT_LR, identical_coefficients, make_optimizer
from _training import Trainer, load_windows, run_one

from root_optax import demo

VARIANTS = ("root", "root_noclip", "root_muon_ns", "muon_root_recipe", "muon", "adamw")
"""The optimizers compared, in report order."""

BASE = dataclasses.replace(
    demo.Config(), steps=1000, batch_size=8, eval_every=50, progress=False
)
"""The demo's model and data at batch 8 (1000 steps fit the hour on 2 cores)."""

WIDTHS = {"d64": 64, "d128": 128}
"""The two model sizes (``d_model``; 2 blocks, 4 heads each)."""


@dataclasses.dataclass(frozen=True)
class Setup:
    """What to run: the base config, widths, optimizers, grid, seeds, noise."""

    base: demo.Config = BASE
    widths: tuple[tuple[str, int], ...] = tuple(WIDTHS.items())
    optimizers: tuple[str, ...] = VARIANTS
    factors: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    """Multiples of the demo's tuned learning rate (``demo.DEFAULT_LR``)."""
    extend: int = 1
    """Extra grid points (2x further) allowed when the best rate is at an edge."""
    sweep_seed: int = 0
    final_seeds: tuple[int, ...] = (1, 2, 3)
    conditions: tuple[str, ...] = ("outliers", "heavy_tail")
    noise_seeds: tuple[int, ...] = (1, 2)
    """Seeds of the noise conditions (a subset of ``final_seeds``, for time)."""
    noise: Noise = dataclasses.field(default_factory=Noise)
    timing_repeats: int = 15


QUICK = Setup(
    base=dataclasses.replace(
        BASE,
        steps=8,
        layers=1,
        heads=2,
        seq_len=16,
        batch_size=4,
        eval_every=4,
        eval_batches=1,
    ),
    widths=(("d16", 16),),
    factors=(0.5, 2.0),
    extend=0,
    final_seeds=(1, 2),
    conditions=("outliers",),
    noise_seeds=(1,),
    timing_repeats=2,
)
"""``--quick``: a pipeline check in seconds (every stage, every optimizer)."""


def config_at(cfg: demo.Config, name: str, factor: float) -> demo.Config:
    """``cfg`` with ``name``'s swept learning rate at ``factor`` x the demo's."""
    field = SWEPT_LR[name]
    default = {"lr_root": "root", "lr_muon": "muon", "lr_adamw": "adamw"}[field]
    return dataclasses.replace(cfg, **{field: demo.DEFAULT_LR[default] * factor})


class Runner:
    """Trains one width: caches each (optimizer, factor) optimizer and logs."""

    def __init__(self, setup: Setup, label: str, width: int, log=print):
        self.setup, self.label, self.log = setup, label, log
        self.cfg = dataclasses.replace(setup.base, d_model=width)
        self.trainer = Trainer(self.cfg, setup.noise)
        seeds = (setup.sweep_seed, *setup.final_seeds)
        _, self.windows, self.eval_windows = load_windows(self.cfg, seeds)
        self._txs: dict[tuple[str, float], Any] = {}
        self.runs: list[dict[str, Any]] = []

    def tx(self, name: str, factor: float):
        key = (name, factor)
        if key not in self._txs:
            self._txs[key] = make_optimizer(name, config_at(self.cfg, name, factor))
        return self._txs[key]

    def run(self, stage: str, name: str, factor: float, condition: str, seed: int):
        result = run_one(
            self.trainer,
            self.tx(name, factor),
            condition,
            seed,
            self.windows[seed],
            self.eval_windows,
        )
        lr = SWEPT_LR[name]
        row = {"width": self.label, "stage": stage, "optimizer": name}
        row.update(condition=condition, seed=seed, factor=factor)
        row["learning_rate"] = getattr(config_at(self.cfg, name, factor), lr)
        self.runs.append({**row, **result})
        if self.log is not None:
            self.log(
                f"[{self.label} {stage:<6}] {OPTIMIZERS[name]:<22} x{factor:<6g} "
                f"{condition:<10} seed {seed}: valid "
                f"{result['final_valid_bpb']:.3f} bits/byte"
                + (" DIVERGED" if result["diverged"] else "")
                + f" ({result['wall_s']:.1f} s)"
            )
        return result

    def sweep(self, name: str) -> float:
        """The best factor of ``name`` on the sweep seed (clean)."""
        score = {}
        for factor in self.setup.factors:
            score[factor] = self._score(name, factor)
        for _ in range(self.setup.extend):
            best = min(score, key=score.get)
            if best == min(score):
                factor = best / 2
            elif best == max(score):
                factor = best * 2
            else:
                break
            score[factor] = self._score(name, factor)
        return min(score, key=score.get)

    def _score(self, name: str, factor: float) -> float:
        result = self.run("sweep", name, factor, "clean", self.setup.sweep_seed)
        return float("inf") if result["diverged"] else result["final_valid_bpb"]

    def step_time(self, best: dict[str, float]) -> dict[str, Any]:
        """Seconds per training step of each optimizer at its best rate,
        measured in interleaved rounds (same batch every call)."""
        windows = jnp.asarray(self.windows[self.setup.sweep_seed][0])
        inputs, targets = windows[:, :-1], windows[:, 1:]
        fns = {}
        for name, factor in best.items():
            fns[name] = self._step_thunk(self.tx(name, factor), inputs, targets)
        return _common.time_interleaved(
            fns, repeats=self.setup.timing_repeats, log=None
        )

    def _step_thunk(self, tx, inputs, targets):
        step = self.trainer.train_step(tx)
        params = self.trainer.init_params(0)
        carry = [params, tx.init(params)]
        # Clean data: seed 0, step 0, no outlier, no heavy-tailed draws.
        clean = (jnp.int32(0), jnp.int32(0), jnp.bool_(False), jnp.float32(0))
        draws = jnp.zeros(self.trainer.noise_size, jnp.float32)

        def thunk():
            carry[0], carry[1], loss = step(*carry, inputs, targets, *clean, draws)
            return loss

        return thunk


def run_width(setup: Setup, label: str, width: int, log=print) -> dict[str, Any]:
    """Sweep, seeds and noise conditions of every optimizer at one width."""
    runner = Runner(setup, label, width, log)
    names = list(setup.optimizers)
    aliases = {}
    if {"root", "root_muon_ns"} <= set(names) and identical_coefficients(
        runner.trainer.matrix_shapes
    ):
        names.remove("root_muon_ns")
        aliases["root_muon_ns"] = "root"  # bit-identical coefficients: ROOT's runs
    best = {name: runner.sweep(name) for name in names}
    for condition in ("clean", *setup.conditions):
        seeds = setup.final_seeds if condition == "clean" else setup.noise_seeds
        for seed in seeds:
            for name in names:
                runner.run("final", name, best[name], condition, seed)
    timing = runner.step_time(best)
    for alias, source in aliases.items():
        best[alias] = best[source]
        runner.runs += [
            {**r, "optimizer": alias, "alias_of": source}
            for r in list(runner.runs)
            if r["optimizer"] == source
        ]
    return {
        "width": label,
        "d_model": width,
        "num_params": int(runner.trainer.num_params),
        "matrix_shapes": runner.trainer.matrix_shapes,
        "best_factor": best,
        "aliases": aliases,
        "timing": timing,
        "runs": runner.runs,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="tiny pipeline check; writes no files")
    add("--steps", type=int, default=None, help=f"steps per run ({BASE.steps})")
    add(
        "--widths",
        default=",".join(WIDTHS),
        help=f"comma-separated subset of {','.join(WIDTHS)}",
    )
    add("--optimizers", default=",".join(VARIANTS), help="subset, in report order")
    add("--no-plot", action="store_true", help="skip the PNG")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[Setup, argparse.Namespace]:
    """Flags to a :class:`Setup` (and the parsed namespace)."""
    parser = _parser()
    args = parser.parse_args(argv)
    setup = QUICK if args.quick else Setup()
    names = tuple(x for x in args.optimizers.split(",") if x)
    if not names or any(n not in VARIANTS for n in names):
        parser.error(f"--optimizers must name some of {','.join(VARIANTS)}")
    changes: dict[str, Any] = {"optimizers": names}
    if not args.quick:
        labels = [x for x in args.widths.split(",") if x]
        if not labels or any(x not in WIDTHS for x in labels):
            parser.error(f"--widths must name some of {','.join(WIDTHS)}")
        changes["widths"] = tuple((x, WIDTHS[x]) for x in labels)
    if args.steps is not None:
        if args.steps < 2:
            parser.error("--steps must be at least 2")
        every = max(1, min(setup.base.eval_every, args.steps // 2))
        changes["base"] = dataclasses.replace(
            setup.base, steps=args.steps, eval_every=every
        )
    return dataclasses.replace(setup, **changes), args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from command-line ``argv``; 0 on success."""
    setup, args = parse_args(argv)
    started = time.perf_counter()
    env = _common.environment()
    print(
        f"{env['platform']} / {env['device_kind']}, {env['cpu_count']} CPUs; "
        f"widths {[w for w, _ in setup.widths]}, {len(setup.optimizers)} optimizers, "
        f"{setup.base.steps} steps per run"
    )
    widths = [run_width(setup, label, width) for label, width in setup.widths]
    wall = time.perf_counter() - started
    results = report.analyse(setup, widths)
    print()
    print(report.markdown(setup, results, wall))
    if args.quick:
        print("--quick: no files written.")
        return 0
    plt = None if args.no_plot else _common.pyplot()
    _common.write_results(
        "bench_evidence",
        title="Evidence: ROOT vs Muon vs AdamW, tuned, with ablations",
        env=env,
        data=_common.json_safe(
            {
                "setup": report.setup_record(setup),
                "results": results,
                "runs": [r for w in widths for r in w["runs"]],
                "wall_seconds": wall,
                "jax_backend": jax.default_backend(),
            }
        ),
        sections=report.sections(setup, results, wall),
        figure=None if plt is None else report.plot(plt, setup, results),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
