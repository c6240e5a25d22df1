"""root(distributed=True) vs the naive sharded root() step on 8 host CPU devices.

For a transformer-shaped tree on a 1-D (FSDP) and a 2-D (data x model) mesh,
explicit and auto axes, three ways to run the same root() step:

* ``replicated``: params replicated, every device orthogonalizes every matrix;
* ``sharded``: params sharded, default mode: the compiler partitions each
  Newton–Schulz product over the mesh, gathering shards every iteration;
* ``distributed``: params sharded, ``root(distributed=True)``: each device
  clips and orthogonalizes whole matrices, its share of them.

Reported: per-device FLOPs (``compiled.cost_analysis()``) of the whole step and
of Newton–Schulz alone (``adaptive_newton_schulz``), the collectives in the
compiled step (count and bytes per device), and the step time, interleaved,
as ratios to the sharded (naive) path measured in the same run.
"""

from __future__ import annotations

import os

# 8 host devices, before JAX initialises (kept if the caller already set it).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import argparse
import collections
import re
import sys

import _common  # puts the checkout's root_optax on sys.path
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from optax.contrib import MuonDimensionNumbers

import root_optax
from root_optax import _newton_schulz

MODES = ("replicated", "sharded", "distributed")
REFERENCE = "sharded"
COLLECTIVES = (
    "all-gather",
    "all-to-all",
    "all-reduce",
    "collective-permute",
    "reduce-scatter",
)
_BYTES = {"f32": 4, "f64": 8, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1}
_SHAPE = re.compile(r"\b(f32|f64|bf16|f16|s32|u32|pred)\[([\d,]*)\]")
_OP = re.compile(
    r"=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(-done)?\(", re.MULTILINE
)

# Matrix roles: wide ones split rows over "data" and columns over "model";
# the projections back (o, w_out) the other way round, as tensor parallelism
# lays them out. FSDP shards every matrix's first axis.
WIDE_ROLES = ("q", "k", "v", "w_in")


def make_params(key, layers: int, d_model: int):
    """Scanned layers: q, k, v, o (L, d, d), w_in (L, d, 4d), w_out (L, 4d, d)
    and two biases (L, 4d), (L, d)."""
    d, f = d_model, 4 * d_model
    shapes = {name: (layers, d, d) for name in ("q", "k", "v", "o")}
    shapes.update(w_in=(layers, d, f), w_out=(layers, f, d))
    shapes.update(b_in=(layers, f), b_out=(layers, d))
    keys = jax.random.split(key, len(shapes))
    return {
        name: jax.random.normal(k, s, jnp.float32) / np.sqrt(s[-2])
        for k, (name, s) in zip(keys, shapes.items())
    }


def dimension_numbers(params):
    """Each layer's slice of a 3-D leaf is a matrix; biases go to AdamW."""
    return {
        name: MuonDimensionNumbers(-2, -1) if x.ndim == 3 else None
        for name, x in params.items()
    }


def param_specs(params, mesh_name: str):
    specs = {}
    for name, x in params.items():
        if x.ndim == 2:  # biases
            specs[name] = P(None, "fsdp" if mesh_name == "fsdp" else "model")
        elif mesh_name == "fsdp":
            specs[name] = P(None, "fsdp")
        elif name in WIDE_ROLES:
            specs[name] = P(None, "data", "model")
        else:
            specs[name] = P(None, "model", "data")
    return specs


def make_mesh(mesh_name: str, axis_type: str):
    kind = {"explicit": AxisType.Explicit, "auto": AxisType.Auto}[axis_type]
    if mesh_name == "fsdp":
        return jax.make_mesh((8,), ("fsdp",), axis_types=(kind,))
    return jax.make_mesh((2, 4), ("data", "model"), axis_types=(kind, kind))


def collectives(hlo: str) -> dict[str, dict[str, int]]:
    """Count and result bytes (per device) of each collective in compiled HLO."""
    out = {op: {"count": 0, "bytes": 0} for op in COLLECTIVES}
    for result, op, _ in _OP.findall(hlo):
        out[op]["count"] += 1
        for dtype, dims in _SHAPE.findall(result):
            size = int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
            out[op]["bytes"] += size * _BYTES[dtype]
    return out


def flops(lowered_fn) -> float:
    """Per-device FLOPs of ``lowered_fn()`` compiled with batched Newton–Schulz
    products (as on accelerators): the CPU form loops over each batch's
    matrices, and ``cost_analysis()`` counts a loop body once."""
    _newton_schulz.CPU_ONE_AT_A_TIME = False
    try:
        cost = lowered_fn().compile().cost_analysis()
    finally:
        _newton_schulz.CPU_ONE_AT_A_TIME = True
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def setup(mesh, mesh_name, mode, params, grads):
    """Placed params/grads, the jitted step and its compiled HLO / FLOPs, and
    the per-device FLOPs of Newton–Schulz alone."""
    specs = param_specs(params, mesh_name)
    if mode == "replicated":
        specs = dict.fromkeys(specs, P())
    place = lambda tree: {
        k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in tree.items()
    }
    params, grads = place(params), place(grads)
    distributed = mode == "distributed"
    dims = dimension_numbers(params)
    opt = root_optax.root(1e-3, weight_dimension_numbers=dims, distributed=distributed)
    state = opt.init(params)

    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    compiled = jax.jit(step).lower(params, state, grads).compile()
    matrices = {k: v for k, v in grads.items() if dims[k] is not None}
    ns = root_optax.adaptive_newton_schulz(
        weight_dimension_numbers=MuonDimensionNumbers(-2, -1), distributed=distributed
    )
    ns_update = lambda u: ns.update(u, ns.init(None))[0]
    return {
        "thunk": lambda: compiled(params, state, grads),
        "step_flops": flops(lambda: jax.jit(step).lower(params, state, grads)),
        "ns_flops": flops(lambda: jax.jit(ns_update).lower(matrices)),
        "collectives": collectives(compiled.as_text()),
    }


def _plot(plt, results):
    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    width = 0.27
    colors = {"replicated": "tab:gray", "sharded": "tab:orange"}
    colors["distributed"] = "tab:blue"
    x = np.arange(len(names))
    for j, mode in enumerate(MODES):
        times = [results[n]["time"][mode]["median_s"] * 1e3 for n in names]
        ns = [results[n]["ns_flops"][mode] / 1e9 for n in names]
        offset = (j - 1) * width
        axes[0].bar(x + offset, times, width, label=mode, color=colors[mode])
        axes[1].bar(x + offset, ns, width, label=mode, color=colors[mode])
        if mode == "distributed":
            for i, n in enumerate(names):
                r = results[n]["ratio_to_sharded"]["distributed"]["ratio"]
                axes[0].annotate(
                    f"{r:.2f}x", (i + offset, times[i]), ha="center", va="bottom"
                )
                f = results[n]["ns_flops_ratio"]["distributed/replicated"]
                axes[1].annotate(
                    f"{f:.3f}x", (i + offset, ns[i]), ha="center", va="bottom"
                )
    axes[0].set(ylabel="median step time (ms)", title="root() step, 8 CPU devices")
    axes[1].set(
        ylabel="Newton–Schulz GFLOP per device",
        title="per-device Newton–Schulz FLOPs (label: / replicated)",
    )
    for ax in axes:
        ax.set_xticks(x, names, fontsize=8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8, help="blocks (8)")
    parser.add_argument("--d-model", type=int, default=128, help="width (128)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (5)")
    parser.add_argument(
        "--meshes",
        nargs="+",
        default=["fsdp/explicit", "2d/explicit", "fsdp/auto", "2d/auto"],
        help="mesh/axis-type pairs (default: all four)",
    )
    parser.add_argument("--seed", type=int, default=0, help="data seed (0)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    args = parser.parse_args()
    if jax.device_count() < 8:
        print(f"needs 8 devices, found {jax.device_count()}", file=sys.stderr)
        return 1

    env = _common.environment()
    print(f"{env['platform']} / {env['device_kind']}, {env['device_count']} devices")
    key_params, key_grads = jax.random.split(jax.random.key(args.seed))
    params = make_params(key_params, args.layers, args.d_model)
    grads = {
        k: jax.random.normal(jax.random.fold_in(key_grads, i), v.shape)
        for i, (k, v) in enumerate(params.items())
    }
    shapes = collections.Counter()
    for x in params.values():
        if x.ndim == 3:
            shapes[x.shape[1:]] += x.shape[0]
    print("matrices: " + ", ".join(f"{n} x {s}" for s, n in shapes.items()))

    results, rows, coll_rows = {}, [], []
    for pair in args.meshes:
        mesh_name, axis_type = pair.split("/")
        mesh = make_mesh("fsdp" if mesh_name == "fsdp" else "2d", axis_type)
        label = (
            f"{'FSDP 8' if mesh_name == 'fsdp' else 'data 2 x model 4'}, {axis_type}"
        )
        print(f"{label}: compiling")
        with jax.set_mesh(mesh):
            runs = {m: setup(mesh, mesh_name, m, params, grads) for m in MODES}
            timing = _common.time_interleaved(
                {m: r["thunk"] for m, r in runs.items()}, repeats=args.repeats
            )
        res = {
            "time": {m: _common.stats(t) for m, t in timing["seconds"].items()},
            "calls_per_sample": timing["number"],
            "ratio_to_sharded": {
                m: _common.paired_ratios(timing, m, REFERENCE)
                for m in MODES
                if m != REFERENCE
            },
            "step_flops": {m: r["step_flops"] for m, r in runs.items()},
            "ns_flops": {m: r["ns_flops"] for m, r in runs.items()},
            "collectives": {m: r["collectives"] for m, r in runs.items()},
        }
        ns = res["ns_flops"]
        res["ns_flops_ratio"] = {
            "distributed/replicated": ns["distributed"] / ns["replicated"],
            "distributed/sharded": ns["distributed"] / ns["sharded"],
            "sharded/replicated": ns["sharded"] / ns["replicated"],
        }
        results[label] = res
        for m in MODES:
            ratio = res["ratio_to_sharded"].get(m)
            rows.append(
                [
                    label,
                    m,
                    _common.format_seconds(res["time"][m]["median_s"]),
                    _common.format_ratio(ratio) if ratio else "1 (reference)",
                    f"{res['step_flops'][m] / 1e9:.3f}",
                    f"{ns[m] / 1e9:.3f}",
                    f"{ns[m] / ns['replicated']:.3f}",
                ]
            )
            c = res["collectives"][m]
            coll_rows.append(
                [label, m]
                + [
                    f"{c[op]['count']} ({c[op]['bytes'] / 2**20:.2f} MiB)"
                    for op in COLLECTIVES
                ]
            )

    table = _common.markdown_table(
        [
            "mesh",
            "mode",
            "median step",
            "time / sharded [q25, q75]",
            "step GFLOP/device",
            "NS GFLOP/device",
            "NS FLOPs / replicated",
        ],
        rows,
    )
    coll_table = _common.markdown_table(
        ["mesh", "mode", *(f"{op} (bytes/device)" for op in COLLECTIVES)], coll_rows
    )
    print()
    print(table)
    print()
    print(coll_table)
    summary = "\n".join(
        f"- {name}: distributed step time {r['ratio_to_sharded']['distributed']['ratio']:.3f}x"
        f" the sharded step (replicated: "
        f"{r['ratio_to_sharded']['replicated']['ratio']:.3f}x); Newton–Schulz FLOPs per"
        f" device {r['ns_flops_ratio']['distributed/replicated']:.3f}x replicated,"
        f" {r['ns_flops_ratio']['distributed/sharded']:.3f}x sharded; all-gathers"
        f" {r['collectives']['distributed']['all-gather']['count']} (distributed) vs"
        f" {r['collectives']['sharded']['all-gather']['count']} (sharded)."
        for name, r in results.items()
    )
    print()
    print(summary)
    method = (
        "One jitted `root(1e-3, weight_dimension_numbers=...)` update + "
        "`optax.apply_updates` step (defaults otherwise; `distributed=True` for "
        "the distributed mode) on a float32 tree of scanned layers: q, k, v, o "
        f"({args.layers}, {args.d_model}, {args.d_model}), w_in ({args.layers}, "
        f"{args.d_model}, {4 * args.d_model}), w_out ({args.layers}, "
        f"{4 * args.d_model}, {args.d_model}), each layer's slice a matrix "
        "(`MuonDimensionNumbers(-2, -1)`), and two biases (AdamW). Matrices: "
        + ", ".join(f"{n} x {s}" for s, n in shapes.items())
        + ". 8 host CPU devices (`--xla_force_host_platform_device_count=8`) "
        "sharing the machine's cores, so the step time measures total work and "
        "communication overhead, not a speed-up from parallel hardware. "
        "Layouts: FSDP shards every leaf's first non-layer axis over 8 devices; "
        "data x model shards the matrices of q, k, v, w_in as (data, model) and "
        "of o, w_out as (model, data), biases over model; replicated puts every "
        "leaf on every device. "
        "FLOPs are `compiled.cost_analysis()['flops']` of the per-device "
        "program, for the step and for `adaptive_newton_schulz` alone on the "
        "same matrices, compiled with batched Newton–Schulz products as on "
        "accelerators (`_newton_schulz.CPU_ONE_AT_A_TIME = False`: the CPU form "
        "loops over a batch's matrices and `cost_analysis()` counts a loop body "
        "once); the timed step is the default CPU program. Collectives are counted in the compiled HLO of the step "
        "with the bytes of their results per device. Times are medians over "
        f"{args.repeats} interleaved rounds after a warm-up (compilation "
        "excluded); a ratio is the median [quartiles] of per-round ratios to the "
        "sharded step of the same mesh."
    )
    plt = None if args.no_plot else _common.pyplot()
    figure = None if plt is None else _plot(plt, results)
    _common.write_results(
        "bench_distributed",
        title="root(distributed=True) vs the sharded root() step, 8 CPU devices",
        env=env,
        data={
            "config": {
                "layers": args.layers,
                "d_model": args.d_model,
                "repeats": args.repeats,
                "seed": args.seed,
                "meshes": args.meshes,
                "dtype": "float32",
                "matrices": {str(s): n for s, n in shapes.items()},
            },
            "results": results,
        },
        sections=[
            ("Summary", summary),
            ("Step time and FLOPs", table),
            ("Collectives in the compiled step", coll_table),
            ("Method", method),
        ],
        figure=figure,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
