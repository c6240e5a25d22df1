"""The demo's printed header, result table and files (JSON, Markdown, PNG)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import platform
from pathlib import Path
from typing import Any

import jax
import numpy as np

import root_optax
from root_optax.demo._config import NAMES, Config

TITLE = "root_optax demo: byte-level transformer LM, ROOT vs Muon vs AdamW"

UNITS = (
    "Losses are cross-entropy in bits per byte (nats / ln 2; one token is one byte). "
    "Train: mean of the last {window} steps' batch losses; validation: the held-out "
    "last 10% of the corpus after the final step. Speed: median step time excluding "
    "the first (compiling) step, measured in this run; ratio = step time / AdamW's."
)


def _versions() -> dict[str, str]:
    """Versions of the packages that shape the result."""
    out = {"python": platform.python_version(), "root_optax": root_optax.__version__}
    for pkg in ("jax", "jaxlib", "optax", "flax"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def header(cfg, corpus, num_params: int) -> str:
    """The text printed before training."""
    lines = [
        TITLE,
        f"Corpus: {corpus.description}",
        (
            f"  {len(corpus.train):,} train / {len(corpus.valid):,} validation "
            f"bytes (split by position), sha256 {corpus.sha256[:16]}"
        ),
        (
            f"Model: {cfg.layers} layers, d_model {cfg.d_model}, {cfg.heads} heads, "
            f"seq_len {cfg.seq_len}, vocab 256, {num_params:,} parameters"
        ),
        (
            f"Training: {cfg.steps} steps x batch {cfg.batch_size} "
            f"({cfg.steps * cfg.batch_size * cfg.seq_len:,} tokens) per optimizer, "
            f"warmup {cfg.warmup_fraction:.0%} + cosine, seed {cfg.seed}"
        ),
        "Learning rates: "
        + ", ".join(f"{n} {getattr(cfg, f'lr_{n}'):g}" for n in cfg.optimizers),
        f"Devices: {jax.devices()} (backend {jax.default_backend()})",
    ]
    return "\n".join(lines)


def results(cfg, corpus, num_params, runs, rows) -> dict[str, Any]:
    """Everything written to ``results.json``."""
    config = dataclasses.asdict(cfg)
    config["optimizers"] = list(cfg.optimizers)
    return {
        "title": TITLE,
        "units": UNITS.format(window=rows[0]["train_loss_window"]),
        "config": config,
        "corpus": {
            "description": corpus.description,
            "files": list(corpus.files),
            "sha256": corpus.sha256,
            "train_bytes": len(corpus.train),
            "valid_bytes": len(corpus.valid),
        },
        "num_params": num_params,
        "device": str(jax.devices()[0].device_kind),
        "devices": [str(d) for d in jax.devices()],
        "backend": jax.default_backend(),
        "versions": _versions(),
        "table": rows,
        "curves": {name: run for name, run in runs.items()},
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


def table_rows(cfg: Config, runs: dict[str, dict]) -> list[dict[str, Any]]:
    """One :func:`summarize` row per optimizer, with step time relative to AdamW's."""
    rows = [summarize(name, runs[name], cfg) for name in cfg.optimizers]
    reference = None
    if "adamw" in cfg.optimizers:
        reference = rows[cfg.optimizers.index("adamw")]["median_step_ms"]
    for row in rows:
        ratio = None if reference is None else row["median_step_ms"] / reference
        row["step_time_vs_adamw"] = ratio
    return rows


def markdown_table(rows) -> str:
    """The result table in Markdown."""
    lines = [
        (
            "| optimizer | peak lr | train loss (bits/byte) | valid loss (bits/byte) "
            "| tokens/s | step (ms) | step time vs AdamW |"
        ),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ratio = r["step_time_vs_adamw"]
        lines.append(
            f"| {r['optimizer']} | {r['learning_rate']:g} | {r['train_bpb']:.3f} "
            f"| {r['valid_bpb']:.3f} | {r['tokens_per_s']:,.0f} "
            f"| {r['median_step_ms']:.1f} "
            f"| {'n/a' if ratio is None else f'{ratio:.2f}x'} |"
        )
    return "\n".join(lines)


def plot(results_: dict[str, Any], path: Path) -> None:
    """Train (per step, faint, plus a moving average) and validation curves."""
    # The object-oriented API needs no backend and leaves pyplot state alone.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_train, ax_valid = fig.subplots(1, 2, sharey=True)
    bits = 1 / math.log(2)
    names = {r["optimizer"].lower(): r["optimizer"] for r in results_["table"]}
    for i, (name, run) in enumerate(results_["curves"].items()):
        color = f"C{i}"
        train = [x * bits for x in run["train_loss"]]
        steps = range(1, len(train) + 1)
        width = max(1, len(train) // 30)
        smooth = [
            sum(train[max(0, j - width + 1) : j + 1]) / (j + 1 - max(0, j - width + 1))
            for j in range(len(train))
        ]
        ax_train.plot(steps, train, color=color, alpha=0.25, linewidth=0.8)
        ax_train.plot(steps, smooth, color=color, label=names[name])
        valid = [x * bits for x in run["eval_loss"]]
        ax_valid.plot(run["eval_steps"], valid, "o-", color=color, label=names[name])
    ax_train.set_title(f"train (faint: per step; line: {width}-step average)")
    ax_valid.set_title("validation (held-out last 10% of the corpus)")
    for ax in (ax_train, ax_valid):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    ax_train.set_ylabel("loss (bits per byte)")
    # Zoom on the interesting range: the untrained model starts at 8 bits/byte.
    low = min(min(r["train_bpb"], r["valid_bpb"]) for r in results_["table"])
    ax_train.set_ylim(max(0.0, low - 0.3), min(8.5, low + 3.0))
    fig.suptitle(
        f"{results_['title']}\n{results_['config']['steps']} steps, "
        f"{results_['num_params']:,} params, device {results_['device']}"
    )
    fig.savefig(path, dpi=120)


def write(results_: dict[str, Any], out: Path) -> list[Path]:
    """Write ``results.json``, ``results.md`` and ``loss_curves.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (
        out / "results.json",
        out / "results.md",
        out / "loss_curves.png",
    )
    json_path.write_text(json.dumps(results_, indent=2) + "\n")
    cfg = results_["config"]
    md_path.write_text(
        f"# {results_['title']}\n\n"
        f"{cfg['layers']} layers, d_model {cfg['d_model']}, {cfg['heads']} heads, "
        f"seq_len {cfg['seq_len']}, batch {cfg['batch_size']}, {cfg['steps']} steps, "
        f"{results_['num_params']:,} parameters; device {results_['device']} "
        f"({results_['backend']}).\n\n"
        f"Corpus: {results_['corpus']['description']}, "
        f"sha256 `{results_['corpus']['sha256'][:16]}`.\n\n"
        f"{markdown_table(results_['table'])}\n\n{results_['units']}\n"
    )
    plot(results_, png_path)
    return [json_path, md_path, png_path]
