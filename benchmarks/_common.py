"""Shared benchmark helpers: interleaved timing, environment record, result files."""

from __future__ import annotations

import datetime
import gc
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Benchmarks run from a checkout (`python benchmarks/<script>.py`); make the
# checkout's root_optax importable without `pip install -e .`.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int = 1,
    min_sample_s: float = 0.05,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Seconds per call of each thunk, measured in interleaved rounds.

    Each thunk is called ``warmup`` times first (compilation and first-touch
    excluded). Then every round times each thunk once, in an order rotated by
    one each round so none always runs first; a sample is ``number`` calls in a
    row, each waited on with ``jax.block_until_ready``, where ``number`` is
    chosen per thunk (from one extra untimed call) so that a sample lasts at
    least ``min_sample_s`` (``0``: one call, no extra call). Garbage
    collection is paused while timing. Interleaving makes slow phases of a
    noisy machine hit all compared functions alike, and per-round ratios
    (:func:`paired_ratios`) cancel them further.

    Returns:
      ``{"seconds": {name: array of per-call seconds, one per round},
      "number": {name: calls per sample}, "order": [names]}``.
    """
    names = list(fns)
    number = {}
    for name in names:
        for _ in range(warmup):
            jax.block_until_ready(fns[name]())
        number[name] = 1
        if min_sample_s > 0:
            start = time.perf_counter()
            jax.block_until_ready(fns[name]())
            once = time.perf_counter() - start
            number[name] = max(1, math.ceil(min_sample_s / max(once, 1e-9)))
    seconds: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                fn, n = fns[name], number[name]
                start = time.perf_counter()
                for _ in range(n):
                    jax.block_until_ready(fn())
                seconds[name].append((time.perf_counter() - start) / n)
            if log is not None:
                done = ", ".join(
                    f"{k} {format_seconds(v[-1])}" for k, v in seconds.items()
                )
                log(f"  round {r + 1}/{repeats}: {done}")
    finally:
        if gc_was_enabled:
            gc.enable()
    return {
        "seconds": {name: np.asarray(v) for name, v in seconds.items()},
        "number": number,
        "order": names,
    }


def stats(seconds: np.ndarray) -> dict[str, float]:
    """Median, quartiles and extremes of a sample of times."""
    q25, median, q75 = np.quantile(seconds, [0.25, 0.5, 0.75])
    return {
        "median_s": float(median),
        "q25_s": float(q25),
        "q75_s": float(q75),
        "min_s": float(np.min(seconds)),
        "max_s": float(np.max(seconds)),
        "repeats": int(seconds.size),
    }


def paired_ratios(timing: Mapping[str, Any], num: str, den: str) -> dict[str, float]:
    """``num``/``den`` time ratio from :func:`time_interleaved` rounds.

    ``ratio`` (the headline) is the median of the per-round ratios, which
    compares the two functions under the same machine load; ``q25``/``q75`` are
    its quartiles and ``ratio_of_medians`` the plain ratio of median times.
    """
    a, b = timing["seconds"][num], timing["seconds"][den]
    q25, median, q75 = np.quantile(a / b, [0.25, 0.5, 0.75])
    return {
        "ratio": float(median),
        "q25": float(q25),
        "q75": float(q75),
        "ratio_of_medians": float(np.median(a) / np.median(b)),
    }


def format_ratio(ratio: Mapping[str, float]) -> str:
    """``ratio [q25, q75]`` from :func:`paired_ratios`."""
    return f"{ratio['ratio']:.3g}x [{ratio['q25']:.3g}, {ratio['q75']:.3g}]"


def format_seconds(seconds: float) -> str:
    """Human-readable duration: s, ms or µs with three significant digits."""
    if seconds >= 1.0:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def environment() -> dict[str, Any]:
    """Device, host and library versions, date and git state of this run."""
    import root_optax

    device = jax.devices()[0]
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cpus = os.cpu_count()
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "load_average_1m": _load_average(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "optax": optax.__version__,
        "numpy": np.__version__,
        "root_optax": root_optax.__version__,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "command": " ".join(["python", *sys.argv]),
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table, padded so it also reads well in a terminal."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    line = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule] + [line(row) for row in cells[1:]])


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def write_results(
    name: str,
    *,
    title: str,
    env: Mapping[str, Any],
    data: Mapping[str, Any],
    sections: Sequence[tuple[str, str]],
    figure: Any = None,
) -> list[Path]:
    """Write ``results/<name>.json``, ``.md`` and (given a figure) ``.png``.

    Args:
      name: file stem under ``benchmarks/results/``.
      title: Markdown title.
      env: :func:`environment` of the run, stored in both files.
      data: everything measured, stored as JSON.
      sections: ``(heading, markdown body)`` pairs for the Markdown report.
      figure: a Matplotlib figure to save as PNG, or ``None``.

    Returns:
      The paths written (also printed, relative to the repository).
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    paths = [RESULTS_DIR / f"{name}.json", RESULTS_DIR / f"{name}.md"]
    env = {**env, "load_average_1m_at_end": _load_average()}
    payload = {"benchmark": name, "environment": env, **data}
    paths[0].write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    env_lines = "\n".join(f"- {k}: `{v}`" for k, v in env.items())
    body = [f"# {title}", "", "## Environment", "", env_lines, ""]
    for heading, text in sections:
        body += [f"## {heading}", "", text.rstrip(), ""]
    png = RESULTS_DIR / f"{name}.png"
    if figure is not None:
        paths.append(png)
        figure.savefig(png, dpi=120, bbox_inches="tight")
        body += [f"![{title}]({name}.png)", ""]
    else:
        png.unlink(missing_ok=True)  # never leave a plot from an older run
    paths[1].write_text("\n".join(body))
    shown = [
        p.relative_to(REPO_ROOT) if p.is_relative_to(REPO_ROOT) else p for p in paths
    ]
    print("wrote " + ", ".join(map(str, shown)))
    return paths


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or ``None`` when not installed."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plot.")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def json_safe(x: Any, digits: int = 5) -> Any:
    """``x`` with floats rounded to ``digits`` and NaN/Inf as ``None`` (JSON
    null), so the file is strict JSON."""
    if isinstance(x, dict):
        return {k: json_safe(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v, digits) for v in x]
    if isinstance(x, float):
        return round(x, digits) if math.isfinite(x) else None
    return x


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample std, min and max of the finite values (and how many)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {
        "n": len(finite),
        "mean": float(np.mean(finite)),
        "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0,
        "min": float(np.min(finite)),
        "max": float(np.max(finite)),
    }
