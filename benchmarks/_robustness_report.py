"""The robustness benchmark's report: summary rows, Markdown tables, setup text, plot.

``setup`` arguments are ``bench_robustness.Setup`` (its demo ``config``,
``seeds``, ``conditions``, ``optimizers`` and ``noise``); ``runs`` are the rows
of ``bench_robustness.run_all``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import _common
import numpy as np
from _common import json_safe  # noqa: F401  (re-exported for bench_robustness)
from _noise import outlier_count
from _optimizers import OPTIMIZERS

from root_optax import demo


def summarize(runs: Sequence[dict[str, Any]], setup) -> list[dict[str, Any]]:
    """One row per (condition, optimizer): spreads over seeds, divergences and
    the per-seed (paired) change of validation loss against ``clean``."""
    by = {(r["condition"], r["optimizer"], r["seed"]): r for r in runs}
    rows = []
    for condition in setup.conditions:
        for name in setup.optimizers:
            group = [by[(condition, name, s)] for s in setup.seeds]
            deltas = []
            if condition != "clean" and "clean" in setup.conditions:
                deltas = [
                    by[(condition, name, s)]["final_valid_bpb"]
                    - by[("clean", name, s)]["final_valid_bpb"]
                    for s in setup.seeds
                ]
            skipped = [r["skipped_steps"] for r in group]
            rows.append(
                {
                    "condition": condition,
                    "optimizer": name,
                    "runs": len(group),
                    "valid_bpb": _common.spread([r["final_valid_bpb"] for r in group]),
                    "train_bpb": _common.spread([r["final_train_bpb"] for r in group]),
                    "diverged": sum(r["diverged"] for r in group),
                    "skipped_steps": None if None in skipped else sum(skipped),
                    "valid_delta_vs_clean": _common.spread(deltas) if deltas else None,
                }
            )
    return rows


def _fmt(spread: dict[str, Any] | None, signed: bool = False) -> str:
    if spread is None:
        return ""
    if not spread["n"]:
        return "n/a"
    sign = "+" if signed else ""
    return f"{spread['mean']:{sign}.3f} ± {spread['std']:.3f}"


def _range(spread: dict[str, Any]) -> str:
    if not spread["n"]:
        return "n/a"
    return f"[{spread['min']:.3f}, {spread['max']:.3f}]"


def results_table(rows: Sequence[dict[str, Any]]) -> str:
    """The full table: one line per (condition, optimizer)."""
    return _common.markdown_table(
        [
            "condition",
            "optimizer",
            "valid bpb mean ± std",
            "valid [min, max]",
            "Δ valid vs clean",
            "train bpb mean ± std",
            "train [min, max]",
            "diverged",
            "skipped",
        ],
        [
            [
                r["condition"],
                OPTIMIZERS[r["optimizer"]],
                _fmt(r["valid_bpb"]),
                _range(r["valid_bpb"]),
                _fmt(r["valid_delta_vs_clean"], signed=True),
                _fmt(r["train_bpb"]),
                _range(r["train_bpb"]),
                f"{r['diverged']}/{r['runs']}",
                "" if r["skipped_steps"] is None else r["skipped_steps"],
            ]
            for r in rows
        ],
    )


def pivot_table(rows: Sequence[dict[str, Any]], setup) -> str:
    """Final validation loss, optimizers x conditions (mean ± std, diverged)."""
    cell = {(r["condition"], r["optimizer"]): r for r in rows}

    def text(r):
        out = _fmt(r["valid_bpb"])
        return out + (f" ({r['diverged']} div.)" if r["diverged"] else "")

    return _common.markdown_table(
        ["optimizer", *setup.conditions],
        [
            [OPTIMIZERS[name], *(text(cell[(c, name)]) for c in setup.conditions)]
            for name in setup.optimizers
        ],
    )


def _model_and_training(setup, trainer) -> list[str]:
    """The setup bullets on the model, the schedule and the seeds."""
    cfg = setup.config
    tuned_for = demo.Config().d_model
    seeds = ", ".join(map(str, setup.seeds))
    return [
        (
            f"- Model: the demo's byte-level decoder-only NNX transformer, "
            f"{cfg.layers} layers, d_model {cfg.d_model}, {cfg.heads} heads, "
            f"seq_len {cfg.seq_len}, {trainer.num_params:,} parameters; corpus: "
            "the demo's (Python standard-library source, last 10% held out)."
        ),
        (
            f"- Training: {cfg.steps} steps x batch {cfg.batch_size}, the "
            f"demo's schedule ({cfg.warmup_fraction:.0%} linear warmup, cosine to "
            f"peak/10), weight decay {cfg.weight_decay:g}, "
            f"the demo's tuned peak learning rates (ROOT {cfg.lr_root:g} for all "
            f"three ROOT variants, Muon {cfg.lr_muon:g} with its Adam branch at "
            f"{cfg.lr_adamw:g}, AdamW {cfg.lr_adamw:g}), the same for every "
            f"condition. They were tuned for the demo's d_model {tuned_for} and are "
            "not retuned here."
        ),
        (
            f"- Seeds {seeds}: a seed fixes the model initialisation, the batch "
            "order and all noise draws; within a seed every optimizer starts from "
            "the same weights and sees the same batches and the same noise."
        ),
    ]


def _conditions(setup, trainer) -> list[str]:
    """The setup bullets describing where the noise goes and each condition."""
    n = setup.noise
    shapes = ", ".join("x".join(map(str, s)) for s in trainer.matrix_shapes)
    sizes = {math.prod(s) for s in trainer.matrix_shapes}
    counts = sorted(
        (size, outlier_count(size, n.outlier_entry_fraction)) for size in sizes
    )
    count_text = ", ".join(f"{k} of {size:,}" for size, k in counts)
    return [
        (
            "- Noise goes into the gradients of the matrices that ROOT and Muon "
            f"orthogonalize ({shapes}) after backprop and before `tx.update`, for "
            "every optimizer. Embeddings, head and norms (AdamW in every "
            "optimizer) get none, so the conditions probe where the optimizers "
            "differ. Draws depend only on (seed, step) and the matrix shapes; "
            "the gradient they act on is each optimizer's own."
        ),
        (
            f"- `outliers`: on exactly {n.outlier_step_fraction:.0%} of the steps "
            f"(drawn per seed), {n.outlier_entry_fraction:.1%} of the entries of "
            f"every matrix ({count_text}; uniform positions, new each step) are "
            f"multiplied by {n.outlier_factor:g}. At this factor the outliers "
            "carry about 99.9% of a matrix's squared Frobenius norm (91% at "
            "100x), so any norm-based normalisation (Newton–Schulz's first step) "
            "is dominated by them, yet they are far fewer than the 10% of entries "
            "ROOT's quantile clip removes: the sparse-outlier regime the paper's "
            "clip is designed for. The outliers also enter the momenta."
        ),
        (
            f"- `heavy_tail`: every step, each matrix gradient `g` gets "
            f"`{n.t_scale:g} * rms(g) * T` added, `T` i.i.d. Student-t with "
            f"{n.t_df:g} degrees of freedom (finite mean, infinite variance; the "
            "median |T| is about 0.87, and the largest of n draws grows like "
            "n^(1/df))."
        ),
        (
            f"- `label_noise`: in every training batch exactly "
            f"{n.label_fraction:.0%} of the target bytes (uniform positions) are "
            "replaced by uniformly random bytes; inputs and the validation set "
            "are clean. The train loss of this condition is measured on the "
            "noisy targets."
        ),
    ]


def _reporting(setup) -> list[str]:
    """The setup bullets on what is reported and what counts as divergence."""
    return [
        (
            "- Reported: final validation loss (clean held-out text, "
            f"{setup.config.eval_batches} batches) and train loss (mean of the last "
            "10 steps' batch losses, measured before the noise is injected), in "
            "bits per byte; mean ± sample std over seeds and [min, max]; "
            "Δ valid vs clean is the per-seed difference to the same optimizer's "
            "clean run (mean ± std). Spreads are over runs with finite losses."
        ),
        (
            "- Diverged: any non-finite train or validation loss, or a final "
            "validation loss above the run's initial one. ROOT's `root()` skips "
            "any step whose gradients hold NaN/Inf (`skip_nonfinite=True`; the "
            "skipped column sums `state.skipped` over seeds); `optax.contrib.muon` "
            "and `optax.adamw` have no such guard, so a NaN gradient poisons "
            "their parameters and every later loss. The noise here is finite, so "
            "NaNs can only come from the training itself."
        ),
    ]


def setup_text(setup, trainer) -> str:
    """The Markdown description of the experiment."""
    lines = _model_and_training(setup, trainer) + _conditions(setup, trainer)
    return "\n".join(lines + _reporting(setup))


def _bars(ax, setup, rows, runs) -> list[float]:
    """Final validation loss per condition and optimizer, seeds as dots."""
    conditions, names = setup.conditions, setup.optimizers
    cell = {(r["condition"], r["optimizer"]): r for r in rows}
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        xs = np.arange(len(conditions)) + (j - (len(names) - 1) / 2) * width
        means = [cell[(c, name)]["valid_bpb"]["mean"] for c in conditions]
        stds = [cell[(c, name)]["valid_bpb"]["std"] for c in conditions]
        means = [np.nan if m is None else m for m in means]
        stds = [0.0 if s is None else s for s in stds]
        label = OPTIMIZERS[name]
        ax.bar(xs, means, width, yerr=stds, capsize=3, color=f"C{j}", label=label)
        for x, c in zip(xs, conditions):
            seeds = [
                r["final_valid_bpb"]
                for r in runs
                if r["condition"] == c and r["optimizer"] == name
            ]
            finite = [v for v in seeds if math.isfinite(v)]
            ax.plot([x] * len(finite), finite, "k.", markersize=3)
            diverged = cell[(c, name)]["diverged"]
            if diverged:
                top = max(finite) if finite else ax.get_ylim()[1]
                style = {"ha": "center", "va": "bottom", "fontsize": 7, "color": "red"}
                ax.annotate(f"{diverged} div.", (x, top), **style)
    lows = [r["valid_bpb"]["min"] for r in rows if r["valid_bpb"]["min"] is not None]
    if lows:
        ax.set_ylim(max(0.0, min(lows) - 0.3), None)
    ax.set_xticks(np.arange(len(conditions)), conditions)
    ax.set_ylabel("final validation loss (bits/byte)")
    ax.set_title(
        f"final validation loss, mean ± std over {len(setup.seeds)} seeds (dots: seeds)"
    )
    ax.legend(ncol=len(names), fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return lows


def _curves(axc, setup, runs, condition: str, low: float) -> None:
    """Mean train loss over seeds of every optimizer under ``condition``."""
    steps = setup.config.steps
    w = max(1, steps // 25)
    for j, name in enumerate(setup.optimizers):
        curves = np.array(
            [
                r["train_bpb"]
                for r in runs
                if r["condition"] == condition and r["optimizer"] == name
            ]
        )
        smooth = np.convolve(np.mean(curves, axis=0), np.ones(w) / w, mode="valid")
        axc.plot(np.arange(w, steps + 1), smooth, color=f"C{j}", linewidth=1)
    axc.set_title(f"{condition}: train loss ({w}-step avg)", fontsize=9)
    axc.set_xlabel("step")
    axc.set_ylim(max(0.0, low - 0.5), 8.5)
    axc.grid(alpha=0.3)


def plot(plt, setup, rows, runs):
    """Bar chart of final validation loss per condition; train curves below."""
    conditions = setup.conditions
    fig = plt.figure(figsize=(3.2 * max(3, len(conditions)), 8.0))
    grid = fig.add_gridspec(2, len(conditions), height_ratios=[1.1, 1])
    lows = _bars(fig.add_subplot(grid[0, :]), setup, rows, runs)
    for i, c in enumerate(conditions):
        axc = fig.add_subplot(grid[1, i])
        _curves(axc, setup, runs, c, min(lows) if lows else 2)
        if i == 0:
            axc.set_ylabel("bits/byte (mean over seeds)")
    cfg = setup.config
    fig.suptitle(
        f"Robustness: {cfg.layers}-layer d={cfg.d_model} byte-level "
        f"transformer, {cfg.steps} steps"
    )
    fig.tight_layout()
    return fig
