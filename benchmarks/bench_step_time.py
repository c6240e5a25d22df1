"""root() step and compile time against optax.contrib.muon on four parameter trees.

Trees (float32), the layouts users train:

- ``per_leaf``: a 12-block, width-512 transformer, one leaf per matrix (q, k,
  v, o of 512 x 512; a 4x MLP of 512 x 2048 and 2048 x 512), biases and norm
  scales, a (8192, 512) embedding;
- ``stacked``: the same model with its layers stacked, ``(12, m, n)`` kernels
  and ``(12, d)`` biases and scales, as Flax ``nn.scan`` / ``nnx.vmap`` make it;
- ``small``: 96 matrices of 128 x 128;
- ``big``: one 2048 x 8192 matrix.

Optimizers: ``optax.contrib.muon`` (the reference of every ratio), ``root()``
with its defaults, ``root(clip_quantile=None)`` (the clip's cost is the ratio of
the two) and the fast configuration ``root(ns_steps=4,
ns_normalization="schatten4", ns_gram=True)``. The embedding, biases and norm
scales go to AdamW in every optimizer. Step times are one jitted
``update + apply_updates`` in interleaved rounds (ratios are medians of
per-round ratios); compile time is ``jit(...).lower(...).compile()`` of a fresh
function, best of three, interleaved. The compile split also compiles
``root(skip_nonfinite=False)`` and ``root(clip_quantile=None,
skip_nonfinite=False)``: what the clip and the non-finite skip each add; and
the clip threshold's scatter-add loops alone (one per matrix batch, less a
scalar program's fixed compile cost): the clip's compile floor as built.

    python benchmarks/bench_step_time.py              # all trees, 5 rounds
    python benchmarks/bench_step_time.py --quick      # small sizes, smoke test
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import _common  # first: puts the checkout's root_optax on sys.path
import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import MuonDimensionNumbers

import root_optax
from root_optax import _counting_select, _quantile, _root

MUON, ROOT, NO_CLIP, FAST = "muon", "root", "root(clip_quantile=None)", "root fast"
NO_SKIP, NEITHER = (
    "root(skip_nonfinite=False)",
    "root(clip_quantile=None, skip_nonfinite=False)",
)
SCATTER_LOOPS = "clip's scatter loops alone"
EMPTY = "a scalar add"  # any program's fixed compile cost
FAST_KWARGS = {"ns_steps": 4, "ns_normalization": "schatten4", "ns_gram": True}
TARGETS = {
    "root_over_muon": 1.0,
    "clip_overhead": 0.05,
    "fast_over_muon": 0.8,
    "compile_over_muon": 1.5,
}
FAST_TREES = ("per_leaf", "stacked")  # where the fast target applies


def transformer_shapes(layers: int, d: int, vocab: int, stacked: bool) -> dict:
    """Leaf shapes of a transformer; stacked layers carry a leading layer axis."""
    block = {
        "attn": {name: (d, d) for name in ("q", "k", "v", "o")},
        "mlp": {"w_in": (d, 4 * d), "b_in": (4 * d,), "w_out": (4 * d, d)},
        "mlp_bias": {"b_out": (d,)},
        "norm_1": {"scale": (d,)},
        "norm_2": {"scale": (d,)},
    }
    shapes = {"embed": (vocab, d), "final_norm": {"scale": (d,)}}
    if stacked:
        shapes["layers"] = jax.tree.map(
            lambda s: (layers, *s), block, is_leaf=lambda x: isinstance(x, tuple)
        )
    else:
        shapes["layers"] = [block] * layers
    return shapes


def tree_shapes(name: str, quick: bool) -> tuple[dict, bool]:
    """``(shapes, stacked)`` of a benchmark tree; ``quick`` shrinks it."""
    d, layers, vocab = (128, 2, 1024) if quick else (512, 12, 8192)
    if name in ("per_leaf", "stacked"):
        stacked = name == "stacked"
        return transformer_shapes(layers, d, vocab, stacked), stacked
    if name == "small":
        return {f"w{i}": (128, 128) for i in range(8 if quick else 96)}, False
    if name == "big":
        return {"w": (256, 1024) if quick else (2048, 8192)}, False
    raise ValueError(f"unknown tree {name!r}")


def random_tree(shapes: dict, seed: int) -> dict:
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    arrays = [
        jax.random.normal(k, s, jnp.float32) / np.sqrt(s[-2] if len(s) > 1 else 1)
        for k, s in zip(keys, leaves)
    ]
    return jax.tree.unflatten(treedef, arrays)


def dimension_numbers(params: dict, stacked: bool):
    """The same routing for every optimizer: kernels are matrices (one per layer
    when stacked), the embedding and every vector go to AdamW."""

    def spec(path, x):
        if "embed" in jax.tree_util.keystr(path):
            return None
        per_layer = x.ndim - (1 if stacked and x.ndim > 1 else 0)
        if per_layer != 2:
            return None
        return MuonDimensionNumbers(-2, -1) if x.ndim == 3 else MuonDimensionNumbers()

    return jax.tree_util.tree_map_with_path(spec, params)


def optimizers(dims) -> dict[str, optax.GradientTransformation]:
    lr = 1e-3
    return {
        MUON: optax.contrib.muon(lr, muon_weight_dimension_numbers=dims),
        ROOT: root_optax.root(lr, weight_dimension_numbers=dims),
        NO_CLIP: root_optax.root(lr, clip_quantile=None, weight_dimension_numbers=dims),
        FAST: root_optax.root(lr, weight_dimension_numbers=dims, **FAST_KWARGS),
    }


def compile_only_optimizers(dims) -> dict[str, optax.GradientTransformation]:
    """Compiled, not timed: what the clip and the non-finite skip add to the
    compile time (their step costs are in the clip column and the README)."""
    lr, kw = 1e-3, {"weight_dimension_numbers": dims}
    return {
        NO_SKIP: root_optax.root(lr, skip_nonfinite=False, **kw),
        NEITHER: root_optax.root(lr, clip_quantile=None, skip_nonfinite=False, **kw),
    }


def matrix_groups(params: dict, dims) -> dict[tuple[int, int], int]:
    """Matrices per wide shape ``(min(m, n), max(m, n))``: root()'s batches
    (one per shape when nothing is sharded)."""
    groups: dict[tuple[int, int], int] = {}
    is_spec = lambda d: d is None or hasattr(d, "output_axis")
    for x, d in zip(jax.tree.leaves(params), jax.tree.leaves(dims, is_leaf=is_spec)):
        if d is not None:
            key = (min(x.shape[-2:]), max(x.shape[-2:]))
            groups[key] = groups.get(key, 0) + int(np.prod(x.shape[:-2]))
    return groups


def scatter_loops() -> Callable:
    """A fresh function holding only the scatter-add loops of the CPU clip
    threshold, one per batch it is given: its real pass count, digit width, index
    arithmetic and scatter, without the bucket search (each pass's prefix takes
    one bucket's count, so no scatter is dead code). The clip's compile floor
    as the threshold is built: its bucket search, extremes and the clamp cost
    the rest of what the clip adds."""

    def loops(batches):
        total = jnp.int32(0)
        for batch in batches:
            bits = _counting_select.patterns_of(batch)
            per_matrix = batch.shape[-2] * batch.shape[-1]
            passes, width = _quantile._histogram_plan(
                31, _quantile._bucket_bits(per_matrix)
            )

            def one_pass(i, prefix, bits=bits, passes=passes, width=width):
                shift = (passes - 1 - i) * width
                hist = _quantile._digit_histograms(
                    bits, prefix, shift, width, 31, 1, jnp.int32
                )
                return (prefix << width) | (hist[..., 0] & ((1 << width) - 1))

            prefix = jnp.zeros(batch.shape[:1] + (2,), jnp.int32)
            total += jnp.sum(jax.lax.fori_loop(0, passes, one_pass, prefix))
        return total

    return loops


def make_step(opt) -> Callable:
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def compile_seconds(
    opts, params, grads, programs=None, rounds: int = 3
) -> dict[str, float]:
    """Best-of-``rounds`` lower + compile time of a fresh jitted step, interleaved
    with ``programs`` (``{name: (make_fn, args)}``, a fresh function per call)."""
    states = {name: opt.init(params) for name, opt in opts.items()}
    jobs = {
        name: (lambda opt=opt, st=states[name]: (make_step(opt), (params, st, grads)))
        for name, opt in opts.items()
    }
    for name, (make_fn, args) in (programs or {}).items():
        jobs[name] = lambda make_fn=make_fn, args=args: (make_fn(), args)
    best = {name: np.inf for name in jobs}
    for _ in range(rounds):
        for name, job in jobs.items():
            fn, args = job()
            start = time.perf_counter()
            jax.jit(fn).lower(*args).compile()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def measure_tree(name: str, args) -> dict:
    shapes, stacked = tree_shapes(name, args.quick)
    params, grads = random_tree(shapes, 0), random_tree(shapes, 1)
    dims = dimension_numbers(params, stacked)
    opts = optimizers(dims)
    groups = matrix_groups(params, dims)
    # As root() thresholds on CPU: whole batches of small matrices, larger ones
    # one matrix at a time inside its loop over the batch.
    per_matrix = _root.CPU_CLIP_PER_MATRIX_ENTRIES
    batches = [
        jax.ShapeDtypeStruct((b if m * n < per_matrix else 1, m, n), jnp.float32)
        for (m, n), b in groups.items()
    ]
    compiled = compile_seconds(
        opts | compile_only_optimizers(dims),
        params,
        grads,
        programs={
            SCATTER_LOOPS: (scatter_loops, (batches,)),
            EMPTY: (lambda: lambda x: x + 1, (jax.ShapeDtypeStruct((), jnp.float32),)),
        },
    )
    thunks = {}
    for opt_name, opt in opts.items():
        state = opt.init(params)
        step = jax.jit(make_step(opt))
        thunks[opt_name] = lambda s=step, st=state: s(params, st, grads)
    timing = _common.time_interleaved(thunks, repeats=args.repeats, min_sample_s=0.0)
    ratios = {n: _common.paired_ratios(timing, n, MUON) for n in opts if n != MUON}
    clip = _common.paired_ratios(timing, ROOT, NO_CLIP)
    return {
        "tree": name,
        "stacked": stacked,
        "params": int(sum(x.size for x in jax.tree.leaves(params))),
        "leaves": len(jax.tree.leaves(params)),
        "matrices": sum(groups.values()),
        "matrix_batches": [f"{b}x{m}x{n}" for (m, n), b in groups.items()],
        "step_time": {n: _common.stats(t) for n, t in timing["seconds"].items()},
        "ratio_to_muon": ratios,
        "clip_overhead": clip["ratio"] - 1.0,
        "clip_ratio": clip,
        "compile_s": compiled,
        "compile_ratio_to_muon": {n: compiled[n] / compiled[MUON] for n in compiled},
    }


def verdicts(rows: list[dict]) -> list[str]:
    """One line per target: the worst case over the trees it applies to."""
    out = []

    def line(label, values, target):
        worst_tree, worst = max(values.items(), key=lambda kv: kv[1])
        ok = worst <= target
        out.append(
            f"{label}: worst {worst:.3f} ({worst_tree}), target <= {target} "
            f"{'PASS' if ok else 'FAIL'}"
        )
        return ok

    line(
        "root / muon step",
        {r["tree"]: r["ratio_to_muon"][ROOT]["ratio"] for r in rows},
        TARGETS["root_over_muon"],
    )
    line(
        "clip overhead (root / root(clip_quantile=None) - 1)",
        {r["tree"]: r["clip_overhead"] for r in rows},
        TARGETS["clip_overhead"],
    )
    fast = {r["tree"]: r["ratio_to_muon"][FAST]["ratio"] for r in rows}
    line(
        "fast / muon step (per_leaf, stacked)",
        {t: v for t, v in fast.items() if t in FAST_TREES} or fast,
        TARGETS["fast_over_muon"],
    )
    for opt_name in (ROOT, FAST):
        line(
            f"{opt_name} / muon compile",
            {r["tree"]: r["compile_ratio_to_muon"][opt_name] for r in rows},
            TARGETS["compile_over_muon"],
        )
    return out


def results_table(rows: list[dict]) -> str:
    body = []
    for r in rows:
        ratios, comp = r["ratio_to_muon"], r["compile_ratio_to_muon"]
        muon = r["step_time"][MUON]["median_s"]
        body.append(
            [
                r["tree"],
                r["matrices"],
                _common.format_seconds(muon),
                _common.format_ratio(ratios[ROOT]),
                _common.format_ratio(ratios[NO_CLIP]),
                f"{100 * r['clip_overhead']:+.1f}%",
                _common.format_ratio(ratios[FAST]),
                f"{r['compile_s'][MUON]:.2f} s",
                f"{comp[ROOT]:.2f}x",
                f"{comp[FAST]:.2f}x",
            ]
        )
    return _common.markdown_table(
        [
            "tree",
            "matrices",
            "muon step",
            "root / muon [q25, q75]",
            "no clip / muon",
            "clip cost",
            "fast / muon",
            "muon compile",
            "root compile / muon",
            "fast compile / muon",
        ],
        body,
    )


def compile_table(rows: list[dict]) -> str:
    """Compile time over Muon's with the clip and the non-finite skip on and
    off; each one's share is what removing it alone takes off the default.
    The last three columns are the clip's floor (:func:`scatter_loops` compiled
    alone, less the fixed cost of compiling any program, measured on a scalar
    add) and the least the default can compile in with this threshold: the
    default without the clip plus those loops, then the same without the
    skip too."""
    body = []
    for r in rows:
        comp = r["compile_ratio_to_muon"]
        loops = comp[SCATTER_LOOPS] - comp[EMPTY]
        body.append(
            [r["tree"], f"{r['compile_s'][MUON]:.2f} s"]
            + [f"{comp[n]:.2f}x" for n in (ROOT, NO_CLIP, NO_SKIP, NEITHER)]
            + [f"+{comp[ROOT] - comp[n]:.2f}" for n in (NO_CLIP, NO_SKIP)]
            + [f"{loops:.2f}"]
            + [f"{comp[n] + loops:.2f}x" for n in (NO_CLIP, NEITHER)]
        )
    return _common.markdown_table(
        [
            "tree",
            "muon compile",
            "root / muon",
            "no clip",
            "no skip",
            "neither",
            "clip adds (x muon)",
            "skip adds (x muon)",
            "scatter loops alone (x muon)",
            "floor: no clip + loops",
            "floor without skip: neither + loops",
        ],
        body,
    )


def plot(plt, rows):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    names = [r["tree"] for r in rows]
    x = np.arange(len(rows))
    for i, opt_name in enumerate((ROOT, NO_CLIP, FAST)):
        steps = [r["ratio_to_muon"][opt_name]["ratio"] for r in rows]
        axes[0].bar(x + (i - 1) * 0.27, steps, 0.27, label=opt_name)
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].axhline(TARGETS["fast_over_muon"], color="tab:green", lw=0.8, ls="--")
    axes[0].set(xticks=x, xticklabels=names, ylabel="step time / muon", title="step")
    axes[0].legend(fontsize=8)
    for i, opt_name in enumerate((ROOT, FAST)):
        comp = [r["compile_ratio_to_muon"][opt_name] for r in rows]
        axes[1].bar(x + (i - 0.5) * 0.35, comp, 0.35, label=opt_name)
    axes[1].axhline(1.0, color="k", lw=0.8)
    axes[1].axhline(TARGETS["compile_over_muon"], color="tab:red", lw=0.8, ls="--")
    axes[1].set(
        xticks=x, xticklabels=names, ylabel="compile time / muon", title="compile"
    )
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--trees", nargs="+", default=["per_leaf", "stacked", "small", "big"]
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (5)")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument(
        "--name",
        default="bench_step_time",
        help="result file stem (benchmarks/results/)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    env = _common.environment()
    print(f"{env['platform']} / {env['device_kind']}, {env['cpu_count']} CPUs")
    rows = []
    for name in args.trees:
        print(f"tree {name}:")
        rows.append(measure_tree(name, args))
    table = results_table(rows)
    split = compile_table(rows)
    lines = verdicts(rows)
    print()
    print(table)
    print()
    print(split)
    print()
    print("\n".join(lines))
    method = (
        __doc__.split("\n\n", 1)[1]
        + f"\n\nRounds: {args.repeats}; the fast configuration is "
        f"`root(..., {', '.join(f'{k}={v!r}' for k, v in FAST_KWARGS.items())})` "
        "(its polar error is in bench_precision)."
    )
    plt = None if args.no_plot else _common.pyplot()
    _common.write_results(
        args.name,
        title="root() vs optax.contrib.muon: step and compile time",
        env=env,
        data={
            "config": {"repeats": args.repeats, "quick": args.quick},
            "fast_kwargs": FAST_KWARGS,
            "targets": TARGETS,
            "trees": rows,
            "verdicts": lines,
        },
        sections=[
            ("Results", table),
            ("Compile time split", split),
            ("Targets", "\n".join(f"- {v}" for v in lines)),
            ("Method", method),
        ],
        figure=None if plt is None else plot(plt, rows),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
