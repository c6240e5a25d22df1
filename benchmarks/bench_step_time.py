"""Is one jitted root() step within 1.15x of an optax.contrib.muon() step?"""

from __future__ import annotations

import argparse
import collections
import sys

import _common  # first: puts the checkout's root_optax on sys.path
import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import MuonDimensionNumbers

import root_optax

TARGET_RATIO = 1.15
ROOT, ROOT_NO_CLIP, MUON = "root", "root(clip_quantile=None)", "muon"
ADAMW_NAMES = ("embed",)
PROFILE_METHOD = (
    " The profile times, per matrix shape, `abs_quantile(x, 0.9)`, ROOT's "
    "`adaptive_newton_schulz()` and `optax.contrib.scale_by_muon()` (Muon's "
    "momentum + Newton–Schulz) on one matrix, plus `robust_clip(0.9)` on all "
    "matrices, interleaved; per-shape times are multiplied by the number of "
    "matrices of that shape and divided, round by round, by Muon's direction "
    "summed over all matrices."
)


def make_params(key, layers: int, d_model: int, vocab: int, dtype=jnp.float32):
    """A transformer-shaped params tree: embedding, attention, MLP, norms, biases."""
    shapes = {"embed": (vocab, d_model), "final_norm": {"scale": (d_model,)}}
    block = {
        "attn": {name: (d_model, d_model) for name in ("q", "k", "v", "o")},
        "mlp": {
            "w_in": (d_model, 4 * d_model),
            "b_in": (4 * d_model,),
            "w_out": (4 * d_model, d_model),
            "b_out": (d_model,),
        },
        "norm_1": {"scale": (d_model,)},
        "norm_2": {"scale": (d_model,)},
    }
    shapes["layers"] = [block] * layers
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(key, len(leaves))
    arrays = [
        jax.random.normal(k, s, dtype) / jnp.sqrt(s[0]).astype(dtype)
        for k, s in zip(keys, leaves)
    ]
    return jax.tree.unflatten(treedef, arrays)


def random_like(key, tree):
    """A random normal tree with the structure, shapes and dtypes of ``tree``."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    )


def muon_dimension_numbers(params):
    """Muon's spec tree: ``None`` (AdamW) for the embedding and non-matrices."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: (
            None
            if x.ndim != 2
            or any(name in jax.tree_util.keystr(path) for name in ADAMW_NAMES)
            else MuonDimensionNumbers()
        ),
        params,
    )


def _is_spec(x) -> bool:
    return x is None or isinstance(x, MuonDimensionNumbers)


def routes_of(dims):
    """``"matrix"``/``"adamw"`` per leaf of a dimension-numbers tree."""
    return jax.tree.map(
        lambda d: "adamw" if d is None else "matrix", dims, is_leaf=_is_spec
    )


def make_step(opt):
    """``(params, state, grads) -> (params, state)``: update and apply, jitted."""

    @jax.jit
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def step_thunk(opt, params, grads):
    """Thunk for one jitted step from fresh state, the same inputs every call."""
    step = make_step(opt)
    state = opt.init(params)
    return lambda: step(params, state, grads)


def transform_thunk(tx, tree):
    """Thunk for a jitted ``tx.update`` on ``tree`` (gradients and params)."""
    state = tx.init(tree)
    update = jax.jit(lambda g, s, p: tx.update(g, s, p)[0])
    return lambda: update(tree, state, tree)


def shape_summary(params, routes):
    """Rows ``(shape, count, route)`` of the params tree, largest first."""
    counter = collections.Counter(
        (tuple(x.shape), route)
        for x, route in zip(jax.tree.leaves(params), jax.tree.leaves(routes))
    )
    return sorted(
        ([list(s), n, r] for (s, r), n in counter.items()),
        key=lambda row: (-len(row[0]), row[0]),
    )


def profile(grads, repeats):
    """Time the matrix-branch pieces per matrix shape, against Muon's direction.

    Per shape: ``abs_quantile`` of one matrix, ROOT's Newton–Schulz
    (``adaptive_newton_schulz``) and Muon's direction (``scale_by_muon``:
    momentum + Newton–Schulz), scaled by how many matrices have that shape; plus
    ``robust_clip(0.9)`` on all matrices at once. Each piece is reported as a
    fraction of Muon's direction summed over all matrices, per round.
    """
    dims = root_optax.matrix_dimension_numbers(ADAMW_NAMES)(grads)
    spec_leaves = jax.tree.leaves(dims, is_leaf=_is_spec)
    matrices = [
        g for g, spec in zip(jax.tree.leaves(grads), spec_leaves) if spec is not None
    ]
    by_shape = collections.Counter(x.shape for x in matrices)
    fns, counts, kinds = {}, {}, {}
    for shape, count in sorted(by_shape.items()):
        x = next(g for g in matrices if g.shape == shape)
        label = f"{shape[0]}x{shape[1]}"
        quantile = jax.jit(lambda a: root_optax.abs_quantile(a, 0.9))
        pieces = {
            "abs_quantile(0.9)": lambda f=quantile, a=x: f(a),
            "root NS (adaptive_newton_schulz)": transform_thunk(
                root_optax.adaptive_newton_schulz(), x
            ),
            "muon direction (scale_by_muon)": transform_thunk(
                optax.contrib.scale_by_muon(
                    weight_dimension_numbers=MuonDimensionNumbers()
                ),
                x,
            ),
        }
        for kind, fn in pieces.items():
            fns[f"{kind} {label}"] = fn
            counts[f"{kind} {label}"] = count
            kinds[f"{kind} {label}"] = kind
    clip_all = "robust_clip(0.9), all matrices"
    fns[clip_all] = transform_thunk(root_optax.robust_clip(0.9), matrices)
    counts[clip_all], kinds[clip_all] = 1, clip_all
    timing = _common.time_interleaved(fns, repeats=repeats)
    seconds = timing["seconds"]
    totals = collections.defaultdict(float)  # per-round arrays, summed over shapes
    for name, t in seconds.items():
        totals[kinds[name]] = totals[kinds[name]] + counts[name] * t
    reference = totals["muon direction (scale_by_muon)"]
    rows = [
        {
            "piece": name,
            "count": counts[name],
            "time": _common.stats(t),
            "total_over_muon_direction": float(np.median(counts[name] * t / reference)),
        }
        for name, t in seconds.items()
    ]
    summary = {
        kind: {
            "total_median_s": float(np.median(t)),
            "total_over_muon_direction": float(np.median(t / reference)),
        }
        for kind, t in totals.items()
    }
    return {
        "reference": "muon direction (scale_by_muon), summed over all matrices",
        "matrix_shapes": {f"{s[0]}x{s[1]}": n for s, n in sorted(by_shape.items())},
        "calls_per_sample": timing["number"],
        "rows": rows,
        "totals": summary,
    }


def _plot(plt, main_stats, ratios, prof):
    fig, axes = plt.subplots(1, 2 if prof else 1, figsize=(12 if prof else 6, 4))
    axes = list(axes) if prof else [axes]
    names = list(main_stats)
    medians = [main_stats[n]["median_s"] for n in names]
    axes[0].bar(names, medians, color=["tab:blue", "tab:cyan", "tab:orange"])
    for i, name in enumerate(names):
        label = "1.00x" if name == MUON else f"{ratios[name]['ratio']:.3f}x"
        axes[0].annotate(label, (i, medians[i]), ha="center", va="bottom")
    axes[0].set(ylabel="median step time (s)", title="one jitted step (ratio to muon)")
    axes[0].tick_params(axis="x", labelsize=8)
    if prof:
        kinds = list(prof["totals"])
        fractions = [prof["totals"][k]["total_over_muon_direction"] for k in kinds]
        axes[1].barh(kinds, fractions, color="tab:gray")
        for i, f in enumerate(fractions):
            axes[1].annotate(f" {f:.3f}", (f, i), va="center")
        axes[1].invert_yaxis()
        axes[1].set(
            xlabel="all matrices, time / muon direction (median of rounds)",
            title="matrix-branch pieces",
        )
        axes[1].tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return fig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=12, help="blocks (12)")
    parser.add_argument("--d-model", type=int, default=512, help="width (512)")
    parser.add_argument("--vocab", type=int, default=8192, help="vocab (8192)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (5)")
    parser.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="time the matrix-branch pieces per shape (auto: only if the target "
        "is missed; default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="data seed (0)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    args = parser.parse_args()
    lr = 1e-3

    env = _common.environment()
    print(f"{env['platform']} / {env['device_kind']}, {env['cpu_count']} CPUs")
    key_params, key_grads = jax.random.split(jax.random.key(args.seed))
    params = make_params(key_params, args.layers, args.d_model, args.vocab)
    grads = random_like(key_grads, params)
    muon_dims = muon_dimension_numbers(params)
    root_dims = root_optax.matrix_dimension_numbers(ADAMW_NAMES)
    routes = routes_of(root_dims(params))
    if routes != routes_of(muon_dims):  # both must send the same leaves to AdamW
        raise RuntimeError("root and muon route different leaves to AdamW.")
    shapes = shape_summary(params, routes)
    num_params = sum(x.size for x in jax.tree.leaves(params))
    print(
        f"{num_params / 1e6:.1f}M float32 params in {len(jax.tree.leaves(params))} "
        "leaves"
    )
    print(
        _common.markdown_table(
            ["shape", "count", "route"], [[tuple(s), n, r] for s, n, r in shapes]
        )
    )

    optimizers = {
        ROOT: root_optax.root(lr, weight_dimension_numbers=root_dims),
        ROOT_NO_CLIP: root_optax.root(
            lr, clip_quantile=None, weight_dimension_numbers=root_dims
        ),
        MUON: optax.contrib.muon(lr, muon_weight_dimension_numbers=muon_dims),
    }
    print("timing full steps:")
    timing = _common.time_interleaved(
        {name: step_thunk(opt, params, grads) for name, opt in optimizers.items()},
        repeats=args.repeats,
        min_sample_s=0.0,
    )
    main_stats = {name: _common.stats(s) for name, s in timing["seconds"].items()}
    ratios = {
        name: _common.paired_ratios(timing, name, MUON) for name in (ROOT, ROOT_NO_CLIP)
    }
    clip_cost = _common.paired_ratios(timing, ROOT, ROOT_NO_CLIP)
    rows = []
    for name, st in main_stats.items():
        spread = [_common.format_seconds(st[k]) for k in ("q25_s", "q75_s")]
        vs_muon = ratios.get(name)
        rows.append(
            [
                name,
                _common.format_seconds(st["median_s"]),
                "[" + ", ".join(spread) + "]",
                _common.format_ratio(vs_muon) if vs_muon else "1 (reference)",
                f"{vs_muon['ratio_of_medians']:.3f}x" if vs_muon else "",
            ]
        )
    table = _common.markdown_table(
        [
            "optimizer",
            "median step",
            "[q25, q75]",
            "ratio to muon [q25, q75]",
            "ratio of medians",
        ],
        rows,
    )
    print()
    print(table)
    ratio = ratios[ROOT]["ratio"]
    passed = ratio <= TARGET_RATIO
    verdict = (
        f"root/muon = {ratio:.3f} (target <= {TARGET_RATIO}) "
        f"{'PASS' if passed else 'FAIL'}; root(clip_quantile=None)/muon = "
        f"{ratios[ROOT_NO_CLIP]['ratio']:.3f}; root/root(clip_quantile=None) = "
        f"{clip_cost['ratio']:.3f} (the cost of clipping)."
    )
    print()
    print(verdict)

    sections = [("Step time", table), ("Verdict", verdict)]
    prof = None
    if args.profile == "always" or (args.profile == "auto" and not passed):
        print("profiling the matrix branch:")
        prof = profile(grads, max(3, args.repeats))
        prof_table = _common.markdown_table(
            ["piece", "median per call", "count", "count x time / muon direction"],
            [
                [
                    r["piece"],
                    _common.format_seconds(r["time"]["median_s"]),
                    r["count"],
                    f"{r['total_over_muon_direction']:.3f}",
                ]
                for r in prof["rows"]
            ],
        )
        prof_table += "\n\n" + _common.markdown_table(
            ["piece, all matrices", "total (median)", "/ muon direction"],
            [
                [
                    kind,
                    _common.format_seconds(t["total_median_s"]),
                    f"{t['total_over_muon_direction']:.3f}",
                ]
                for kind, t in prof["totals"].items()
            ],
        )
        print()
        print(prof_table)
        sections.append(("Profile of the matrix branch", prof_table))

    sections.append(
        (
            "Method",
            f"One jitted `update` + `optax.apply_updates` step (lr={lr}, defaults "
            "otherwise) on a transformer-shaped float32 tree: "
            f"{args.layers} blocks of width {args.d_model} with a 4x MLP and a "
            f"({args.vocab}, {args.d_model}) embedding, {num_params:,} params. The "
            "embedding, biases and norm scales go to AdamW in both optimizers "
            "(`root_optax.matrix_dimension_numbers(['embed'])` for root, a "
            "`muon_weight_dimension_numbers` tree with `None` for muon). Gradients "
            "are one fixed random normal tree; params and state are the same "
            f"inputs every call. Times are medians over {args.repeats} interleaved "
            "rounds after one warm-up call each (compilation excluded). A ratio "
            "is the median [quartiles] of the per-round ratios (both functions "
            "timed under the same load); the ratio of medians is shown beside "
            "it. The target applies to the per-round median."
            + (PROFILE_METHOD if prof else "")
            + "\n\nShapes:\n\n"
            + _common.markdown_table(
                ["shape", "count", "route"], [[tuple(s), n, r] for s, n, r in shapes]
            ),
        )
    )
    plt = None if args.no_plot else _common.pyplot()
    figure = None if plt is None else _plot(plt, main_stats, ratios, prof)
    paths = _common.write_results(
        "bench_step_time",
        title="root() vs optax.contrib.muon() step time",
        env=env,
        data={
            "config": {
                "layers": args.layers,
                "d_model": args.d_model,
                "vocab": args.vocab,
                "learning_rate": lr,
                "dtype": "float32",
                "repeats": args.repeats,
                "seed": args.seed,
                "num_params": int(num_params),
            },
            "shapes": [{"shape": s, "count": n, "route": r} for s, n, r in shapes],
            "target": {"ratio": TARGET_RATIO, "passed": passed},
            "step_time": main_stats,
            "calls_per_sample": timing["number"],
            "ratio_to_muon": ratios,
            "root_over_root_no_clip": clip_cost,
            "profile": prof,
        },
        sections=sections,
        figure=figure,
    )
    print("wrote " + ", ".join(str(p.relative_to(_common.REPO_ROOT)) for p in paths))
    if not passed:
        print(f"FAILED: {verdict}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
