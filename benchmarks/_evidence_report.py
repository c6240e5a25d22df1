"""The evidence benchmark's analysis and report: tables, verdicts, plot.

``setup`` is a ``bench_evidence.Setup``; ``widths`` are the dicts of
``bench_evidence.run_width`` (one per model width, with every run's row).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import _common
import numpy as np
from _optimizers import OPTIMIZER_DETAILS, OPTIMIZERS

COMPARISONS = (
    ("root", "muon", "ROOT vs Muon as shipped"),
    ("root", "muon_root_recipe", "both mechanisms (clip + coefficients)"),
    ("root", "root_noclip", "the clip"),
    ("root", "root_muon_ns", "the per-shape coefficients"),
    ("muon_root_recipe", "muon", "the recipe (shape scale, shared rate)"),
    ("root", "adamw", "ROOT vs AdamW"),
)
"""Paired comparisons ``(a, b, what a - b isolates)``."""


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def verdict(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Paired seed-by-seed ``a - b`` and whether it exceeds the seed spread.

    The rule: the difference is *larger than the seed spread* when there are
    at least 2 seeds, it has the same sign on every seed and its mean exceeds
    the larger of the two optimizers' seed standard deviations.
    """
    diffs = [x - y for x, y in zip(a, b)]
    if len(_finite(diffs)) != len(diffs) or len(diffs) < 2:
        return {"diffs": diffs, "mean": None, "significant": False, "winner": None}
    mean = float(np.mean(diffs))
    same_sign = all(d < 0 for d in diffs) or all(d > 0 for d in diffs)
    noise = max(_common.spread(a)["std"], _common.spread(b)["std"])
    significant = bool(same_sign and abs(mean) > noise)
    return {
        "diffs": diffs,
        "mean": mean,
        "seed_std": noise,
        "significant": significant,
        "winner": ("a" if mean < 0 else "b") if significant else None,
    }


def _steps_to(run: dict[str, Any], target: float) -> int | None:
    for step, value in zip(run["eval_steps"], run["eval_bpb"]):
        if value is not None and math.isfinite(value) and value <= target:
            return int(step)
    return None


def _final(runs, name, condition) -> list[dict[str, Any]]:
    rows = [r for r in runs if r["stage"] == "final" and r["optimizer"] == name]
    return sorted(
        (r for r in rows if r["condition"] == condition), key=lambda r: r["seed"]
    )


def _analyse_width(setup, width: dict[str, Any]) -> dict[str, Any]:
    runs, names = width["runs"], list(setup.optimizers)
    sweep = {
        name: sorted(
            (r["factor"], r["learning_rate"], r["final_valid_bpb"], r["diverged"])
            for r in runs
            if r["stage"] == "sweep" and r["optimizer"] == name
        )
        for name in names
    }
    conditions = ("clean", *setup.conditions)
    final = {
        c: {n: [r["final_valid_bpb"] for r in _final(runs, n, c)] for n in names}
        for c in conditions
    }
    summary = {
        c: {n: _common.spread(v) for n, v in final[c].items()} for c in conditions
    }
    diverged = {
        c: {n: sum(r["diverged"] for r in _final(runs, n, c)) for n in names}
        for c in conditions
    }
    targets = {
        ref: summary["clean"][ref]["mean"]
        for ref in ("muon", "adamw")
        if ref in names and summary["clean"][ref]["mean"] is not None
    }
    steps_to = {
        n: {
            ref: [_steps_to(r, t) for r in _final(runs, n, "clean")]
            for ref, t in targets.items()
        }
        for n in names
    }
    curves = {}
    for n in names:
        clean = _final(runs, n, "clean")
        curves[n] = {
            "eval_steps": clean[0]["eval_steps"],
            "mean_bpb": np.nanmean([r["eval_bpb"] for r in clean], axis=0).tolist(),
        }
    comparisons = {
        c: [
            {"a": a, "b": b, "isolates": what, **verdict(final[c][a], final[c][b])}
            for a, b, what in COMPARISONS
            if a in names and b in names
        ]
        for c in conditions
    }
    timing = width["timing"]
    ref = "muon" if "muon" in timing["seconds"] else names[0]
    step_time = {
        n: {
            "median_s": float(np.median(timing["seconds"][n])),
            f"ratio_to_{ref}": _common.paired_ratios(timing, n, ref),
        }
        for n in timing["seconds"]
    }
    return {
        "width": width["width"],
        "d_model": width["d_model"],
        "num_params": width["num_params"],
        "best_factor": width["best_factor"],
        "aliases": width["aliases"],
        "sweep": sweep,
        "final": final,
        "summary": summary,
        "diverged": diverged,
        "targets": targets,
        "steps_to_target": steps_to,
        "curves": curves,
        "comparisons": comparisons,
        "step_time": step_time,
        "step_time_reference": ref,
    }


def analyse(setup, widths: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One analysis dict per width (JSON-ready)."""
    return [_analyse_width(setup, w) for w in widths]


def setup_record(setup) -> dict[str, Any]:
    """The setup as JSON (config, grid, seeds, noise, optimizer details)."""
    record = dataclasses.asdict(setup)
    record["base"] = dataclasses.asdict(setup.base)
    record["optimizer_details"] = {n: OPTIMIZER_DETAILS[n] for n in setup.optimizers}
    return record


def _fmt(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "diverged"
    return f"{s['mean']:.3f} ± {s['std']:.3f} [{s['min']:.3f}, {s['max']:.3f}]"


def _steps_text(values: Sequence[int | None]) -> str:
    reached = [v for v in values if v is not None]
    if not reached:
        return "not reached"
    text = f"{np.mean(reached):.0f}"
    return (
        text
        if len(reached) == len(values)
        else f"{text} ({len(reached)}/{len(values)})"
    )


def main_table(result: dict[str, Any]) -> str:
    """Best rate, clean final loss, steps to the targets, step time."""
    ref = result["step_time_reference"]
    rows = []
    for n, s in result["summary"]["clean"].items():
        lr = next(x[1] for x in result["sweep"][n] if x[0] == result["best_factor"][n])
        ratio = result["step_time"][n][f"ratio_to_{ref}"]
        rows.append([
            OPTIMIZERS[n] + (" (= ROOT)" if n in result["aliases"] else ""),
            f"{lr:.3g}",
            _fmt(s),
            *(_steps_text(result["steps_to_target"][n][t]) for t in result["targets"]),
            _common.format_ratio(ratio),
        ])  # fmt: skip
    heads = ["optimizer", "best lr", "final valid bits/byte (mean ± std [min, max])"]
    heads += [
        f"steps to {OPTIMIZERS[t]}'s {v:.3f}" for t, v in result["targets"].items()
    ]
    heads += [f"step time / {OPTIMIZERS[ref]}"]
    return _common.markdown_table(heads, rows)


def sweep_table(result: dict[str, Any]) -> str:
    """Validation loss at every swept rate (sweep seed), best marked."""
    rows = []
    for n, points in result["sweep"].items():
        cells = []
        for factor, lr, value, diverged in points:
            mark = "**" if factor == result["best_factor"][n] else ""
            shown = "div" if diverged else f"{value:.3f}"
            cells.append(f"{mark}{lr:.3g}: {shown}{mark}")
        rows.append([OPTIMIZERS[n], "; ".join(cells)])
    return _common.markdown_table(["optimizer", "learning rate: valid bits/byte"], rows)


def noise_table(result: dict[str, Any]) -> str:
    """Final validation loss per condition at each optimizer's best clean rate."""
    conditions = list(result["summary"])
    rows = []
    for n in result["summary"]["clean"]:
        cells = []
        for c in conditions:
            text = _fmt(result["summary"][c][n])
            bad = result["diverged"][c][n]
            cells.append(text + (f", {bad} diverged" if bad else ""))
        rows.append([OPTIMIZERS[n], *cells])
    return _common.markdown_table(["optimizer", *conditions], rows)


def verdict_text(result: dict[str, Any]) -> str:
    """One line per comparison and condition: larger than the seed spread?"""
    lines = []
    for condition, items in result["comparisons"].items():
        for item in items:
            a, b = OPTIMIZERS[item["a"]], OPTIMIZERS[item["b"]]
            if item["mean"] is None:
                lines.append(f"- {condition}, {item['isolates']}: a run diverged.")
                continue
            diffs = ", ".join(f"{d:+.3f}" for d in item["diffs"])
            if item["significant"]:
                win = a if item["winner"] == "a" else b
                say = f"**{win} is better, beyond the seed spread**"
            else:
                say = "within the seed spread (no claim)"
            lines.append(
                f"- {condition}, {item['isolates']}: {a} - {b} = "
                f"{item['mean']:+.3f} bits/byte (per seed {diffs}; seed std "
                f"{item['seed_std']:.3f}): {say}."
            )
    return "\n".join(lines)


def sections(setup, results: Sequence[dict[str, Any]], wall: float):
    """``(heading, markdown)`` pairs for the report."""
    out = []
    for r in results:
        tag = f"d_model={r['d_model']} ({r['num_params']:,} params)"
        out += [
            (f"{tag}: clean, tuned", main_table(r)),
            (f"{tag}: learning-rate sweep (seed {setup.sweep_seed})", sweep_table(r)),
            (f"{tag}: gradient noise at the best clean rate", noise_table(r)),
            (f"{tag}: which differences exceed the seed spread", verdict_text(r)),
        ]
    out.append(("Method", method_text(setup)))
    out.append(("Wall time", f"{wall / 60:.1f} min for the whole benchmark."))
    return out


def method_text(setup) -> str:
    """How the numbers were produced, including the significance rule."""
    cfg = setup.base
    details = "\n".join(
        f"- {OPTIMIZERS[n]}: {OPTIMIZER_DETAILS[n]}." for n in setup.optimizers
    )
    return (
        f"The demo's byte-level transformer ({cfg.layers} blocks, {cfg.heads} "
        f"heads, sequence {cfg.seq_len}, batch {cfg.batch_size}, {cfg.steps} "
        f"steps, warmup {cfg.warmup_fraction:.0%} then cosine, weight decay "
        f"{cfg.weight_decay}) on the Python standard-library corpus. Each "
        f"optimizer's peak rate is swept over {list(setup.factors)} x the demo's "
        f"tuned rate on seed {setup.sweep_seed} (one more point 2x beyond an edge "
        f"winner, up to {setup.extend}); the best rate is then run on fresh seeds "
        f"{list(setup.final_seeds)} (init, data order and noise) clean, and on seeds "
        f"{list(setup.noise_seeds)} under {', '.join(setup.conditions)} (the "
        "noise of bench_robustness: _noise.Noise defaults). "
        "Seeds are paired: the same seed gives every optimizer the same init, "
        "batches and noise draws. A difference is called larger than the seed "
        "spread when there are at least 2 seeds, its sign is the same on every "
        "seed and its mean exceeds the larger seed standard deviation of the two; otherwise no claim is made. "
        "Steps to a target: first evaluation step (every "
        f"{cfg.eval_every}) at or below that optimizer's mean final clean loss, "
        "averaged over the seeds that reach it. Step time: one jitted training "
        "step per optimizer at its best rate, interleaved rounds, median of "
        "per-round ratios [quartiles].\n\n" + details
    )


def markdown(setup, results, wall: float) -> str:
    """The whole report as Markdown (printed by the script)."""
    return "\n\n".join(f"## {h}\n\n{t}" for h, t in sections(setup, results, wall))


def plot(plt, setup, results: Sequence[dict[str, Any]]):
    """Top: sensitivity curves (loss vs rate); bottom: clean validation curves."""
    fig, axes = plt.subplots(
        2, len(results), figsize=(6 * len(results), 8), squeeze=False
    )
    for col, r in enumerate(results):
        top, bottom = axes[0][col], axes[1][col]
        for n, points in r["sweep"].items():
            lrs = [p[1] for p in points]
            values = [p[2] if not p[3] else np.nan for p in points]
            top.plot(lrs, values, marker="o", label=OPTIMIZERS[n])
            curve = r["curves"][n]
            bottom.plot(curve["eval_steps"], curve["mean_bpb"], label=OPTIMIZERS[n])
        top.set(xscale="log", xlabel="peak learning rate", ylabel="final valid bits/byte",
                title=f"d_model={r['d_model']}: learning-rate sensitivity")  # fmt: skip
        bottom.set(xlabel="step", ylabel="valid bits/byte (mean of seeds)",
                   title=f"d_model={r['d_model']}: clean, best rate")  # fmt: skip
        finite = [v for c in r["curves"].values() for v in c["mean_bpb"][1:]]
        if finite:
            bottom.set_ylim(min(finite) - 0.05, np.nanpercentile(finite, 90) + 0.1)
        top.legend(fontsize=8)
        bottom.legend(fontsize=8)
    fig.tight_layout()
    return fig
