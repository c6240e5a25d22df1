"""Is abs_quantile(x, 0.9) >= 10x faster than jnp.quantile(|x|, 0.9) and exact?"""

from __future__ import annotations

import argparse
import sys

import _common  # first: puts the checkout's root_optax on sys.path
import jax
import jax.numpy as jnp
import numpy as np

import root_optax

TARGET_SHAPE = (2048, 8192)
TARGET_SPEEDUP = 10.0
TARGET_REL_ERROR = 1e-5
OURS, REFERENCE = "abs_quantile", "jnp.quantile"


def _parse_shape(text: str) -> tuple[int, int]:
    rows, cols = text.lower().split("x")
    return int(rows), int(cols)


def _measure(shape, q, repeats, seed):
    """Time both functions on one float32 normal matrix; errors vs float64 NumPy."""
    x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    exact = float(np.quantile(np.abs(x.astype(np.float64)), q))
    x_dev = jnp.asarray(x)
    ours = jax.jit(lambda a: root_optax.abs_quantile(a, q))
    reference = jax.jit(lambda a: jnp.quantile(jnp.abs(a), q))
    values = {OURS: float(ours(x_dev)), REFERENCE: float(reference(x_dev))}
    timing = _common.time_interleaved(
        {OURS: lambda: ours(x_dev), REFERENCE: lambda: reference(x_dev)},
        repeats=repeats,
    )
    return {
        "shape": list(shape),
        "size": int(x.size),
        "exact_float64": exact,
        "value": values,
        "rel_error": {k: abs(v - exact) / abs(exact) for k, v in values.items()},
        "time": {k: _common.stats(v) for k, v in timing["seconds"].items()},
        "calls_per_sample": timing["number"],
        "speedup": _common.paired_ratios(timing, REFERENCE, OURS),
    }


def _plot(plt, results, q):
    labels = ["x".join(map(str, r["shape"])) for r in results]
    pos = np.arange(len(results))
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(11, 4))
    for offset, name in ((-0.2, OURS), (0.2, REFERENCE)):
        ms = [r["time"][name]["median_s"] * 1e3 for r in results]
        ax_t.bar(pos + offset, ms, width=0.4, label=name)
    ax_t.set(xticks=pos, xticklabels=labels, yscale="log", ylabel="median ms")
    ax_t.set_title(f"quantile(|x|, {q}), float32, jitted")
    ax_t.legend()
    speedups = [r["speedup"]["ratio"] for r in results]
    ax_s.bar(pos, speedups, color="tab:green")
    ax_s.axhline(TARGET_SPEEDUP, color="k", ls="--", label=f"target {TARGET_SPEEDUP}x")
    for p, s in zip(pos, speedups):
        ax_s.annotate(f"{s:.1f}x", (p, s), ha="center", va="bottom")
    ax_s.set(xticks=pos, xticklabels=labels, ylabel="speedup (jnp / ours)")
    ax_s.set_title("speedup of abs_quantile")
    ax_s.legend()
    fig.tight_layout()
    return fig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--shapes",
        default="512x512,512x2048,2048x8192,4096x4096",
        help="comma-separated ROWSxCOLS (default: %(default)s)",
    )
    parser.add_argument("--q", type=float, default=0.9, help="quantile (0.9)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (7)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (0)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    args = parser.parse_args()
    shapes = [_parse_shape(s) for s in args.shapes.split(",")]

    env = _common.environment()
    print(f"{env['platform']} / {env['device_kind']}, {env['cpu_count']} CPUs")
    results = []
    for shape in shapes:
        print(f"shape {shape[0]}x{shape[1]}:")
        results.append(_measure(shape, args.q, args.repeats, args.seed))

    headers = [
        "shape",
        f"{OURS} (median)",
        f"{REFERENCE} (median)",
        "speedup [q25, q75]",
        "ratio of medians",
        f"rel err {OURS}",
        f"rel err {REFERENCE}",
    ]
    rows = []
    for r in results:
        s = r["speedup"]
        rows.append(
            [
                "x".join(map(str, r["shape"])),
                _common.format_seconds(r["time"][OURS]["median_s"]),
                _common.format_seconds(r["time"][REFERENCE]["median_s"]),
                _common.format_ratio(s),
                f"{s['ratio_of_medians']:.3g}x",
                f"{r['rel_error'][OURS]:.2e}",
                f"{r['rel_error'][REFERENCE]:.2e}",
            ]
        )
    table = _common.markdown_table(headers, rows)
    print()
    print(table)

    target = next((r for r in results if tuple(r["shape"]) == TARGET_SHAPE), None)
    checks = {}
    if target is None:
        verdict = f"target shape {TARGET_SHAPE} not measured: no target check."
    else:
        checks = {
            "speedup": target["speedup"]["ratio"] >= TARGET_SPEEDUP,
            "rel_error": target["rel_error"][OURS] <= TARGET_REL_ERROR,
        }
        verdict = (
            f"{TARGET_SHAPE[0]}x{TARGET_SHAPE[1]}: speedup "
            f"{target['speedup']['ratio']:.3g}x (target >= "
            f"{TARGET_SPEEDUP:g}x) {'PASS' if checks['speedup'] else 'FAIL'}; "
            f"rel error {target['rel_error'][OURS]:.2e} (target <= "
            f"{TARGET_REL_ERROR:g}) {'PASS' if checks['rel_error'] else 'FAIL'}"
        )
    print()
    print(verdict)

    notes = (
        f"`{OURS}` is `jax.jit(lambda x: root_optax.abs_quantile(x, {args.q}))`, "
        f"`{REFERENCE}` is `jax.jit(lambda x: jnp.quantile(jnp.abs(x), {args.q}))`, "
        "on a float32 standard normal matrix (NumPy seed "
        f"{args.seed}). Times are medians over {args.repeats} interleaved rounds, "
        "compilation excluded. Speedup is the median [quartiles] of the "
        "per-round ratios (both functions timed under the same load), the "
        "target applies to it; the ratio of medians is shown beside it. "
        "Relative errors are against "
        f"`np.quantile(np.abs(x.astype(np.float64)), {args.q})`."
    )
    plt = None if args.no_plot else _common.pyplot()
    figure = None if plt is None else _plot(plt, results, args.q)
    paths = _common.write_results(
        "bench_quantile",
        title="abs_quantile vs jnp.quantile",
        env=env,
        data={
            "q": args.q,
            "repeats": args.repeats,
            "seed": args.seed,
            "targets": {
                "shape": list(TARGET_SHAPE),
                "speedup": TARGET_SPEEDUP,
                "rel_error": TARGET_REL_ERROR,
                "passed": checks,
            },
            "results": results,
        },
        sections=[("Results", table), ("Verdict", verdict), ("Method", notes)],
        figure=figure,
    )
    print("wrote " + ", ".join(str(p.relative_to(_common.REPO_ROOT)) for p in paths))
    if checks and not all(checks.values()):
        print(f"FAILED: {verdict}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
