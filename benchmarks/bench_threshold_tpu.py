"""ROOT's threshold against Newton–Schulz on one TPU v5e chip, from compiled programs.

The clip threshold (``abs_quantile_batched(x, 0.9)``: on accelerators a counting
search, 15 placed pivots per pass) is memory-bound; Newton–Schulz is
compute-bound.
libtpu compiles both for a TPU v5e topology on this CPU host (nothing runs, no
TPU needed), and ``compiled.cost_analysis()`` gives their FLOPs and HBM bytes.
A roofline time per program is ``max(FLOPs / peak, bytes / bandwidth)`` with
v5e's published per-chip figures (197 TFLOP/s bf16, 819 GB/s HBM); the ratio of
the threshold's roofline time to the 5-step Newton–Schulz's says how much of the
iteration's time the threshold costs on a memory-bound accelerator (a lower
bound for the threshold: real kernels do not reach the roofline). The bytes are
``cost_analysis()``'s count, which can exceed the HBM traffic (libtpu stages
the data read by the loop into another memory space and counts that copy).

The search's number of passes depends on the data (the answer does not), and
``cost_analysis()`` counts a loop body once. So the threshold's cost is that
of the whole compiled program (one pass in the loop) plus ``passes - 1`` times
that of one pass compiled on its own, where ``passes`` (the final one
included) is the most the search needs on float32 standard normal and
Student-t (3 degrees of freedom) matrices of the shape (up to 4 of each), run
on this CPU (``_counting_select.counting_search``). Before it, fixed 4-bit
digit passes made 9 reads (13 by ``cost_analysis()``'s bytes) whatever the
data.

Newton–Schulz FLOPs and bytes are 5 x (a 2-step unrolled probe - a 1-step one;
Schatten-4 normalization, so that neither has a loop), since
``cost_analysis()`` counts a loop body once (default precision: one bf16
pass per product, so the bf16 peak applies). Run in the libtpu venv (see
``bench_pod_compile.py``):

    /work/venv-tpu/bin/python benchmarks/bench_threshold_tpu.py
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import argparse
import sys

import _common  # puts the checkout's root_optax on sys.path
import jax
import jax.numpy as jnp
import numpy as np

import root_optax
from root_optax import _counting_select, _quantile

PEAK_FLOPS = 197e12
"""TPU v5e bf16 peak, FLOP/s per chip (Google Cloud's published figure)."""
HBM_BYTES_PER_S = 819e9
"""TPU v5e HBM bandwidth, bytes/s per chip (published)."""
SHAPES = ((48, 512, 512), (24, 512, 2048), (96, 128, 128), (1, 2048, 8192))
SHAPES += ((1, 4096, 4096), (16, 4096, 11008))
TARGET = 0.10


def _cost(fn, shape, sharding) -> tuple[float, float]:
    x = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding)
    cost = jax.jit(fn).lower(x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]), float(cost["bytes accessed"])


def _ns_probe(steps: int):
    """Newton–Schulz with every step outside the loop: with Schatten-4
    normalization the first step reuses its Gram product, and one more step is
    a single remaining step (no loop), so the 2- and 1-step probes differ by one
    whole step (its three products)."""
    coeffs = np.tile(root_optax.MUON_COEFFICIENTS, (steps, 1))
    return lambda x: root_optax.orthogonalize(
        x, coeffs, ns_steps=steps, ns_normalization="schatten4"
    )


def _ranks(n: int) -> jax.Array:
    """The library's ranks of the 0.9-quantile's neighbours among ``n`` entries."""
    return _quantile._ranks(0.9, n, np.float32, "bench_threshold_tpu")[0]


def counting_passes(shape, seed: int = 0) -> int:
    """Most counting passes the search needs on normal and Student-t stacks."""
    rng = np.random.default_rng(seed)
    search = jax.jit(_counting_select.counting_search, static_argnums=(2, 3))
    ranks = _ranks(shape[1] * shape[2])
    passes = []
    for draw in (rng.standard_normal, lambda s: rng.standard_t(3, s)):
        # Matrices are searched independently (a stack loops until its last
        # one is done): up to 4 of them, one at a time, bound CPU memory.
        for _ in range(min(shape[0], 4)):
            bits = np.abs(np.asarray(draw(shape[1:]), np.float32)).view(np.int32)
            passes.append(int(search(jnp.asarray(bits)[None], ranks, 31, 1)[1]))
    return max(passes)


def _one_counting_pass(x):
    """A single (not the first) pass of the search, as its own program."""
    bits = jax.lax.bitcast_convert_type(jnp.abs(x), jnp.int32)
    n = x.shape[1] * x.shape[2]
    ranks = _ranks(n)
    search = _counting_select.initial_search(x.shape[:1], n, jnp.int32, ranks[0])
    return _counting_select.counting_pass(bits, search, ranks, 1, 31, (1, 2))


def _threshold_cost(shape, sharding, passes: int) -> tuple[float, float]:
    """FLOPs and bytes of the threshold making ``passes`` counting passes."""
    whole = _cost(lambda x: _quantile.abs_quantile_batched(x, 0.9), shape, sharding)
    one = _cost(_one_counting_pass, shape, sharding)
    return tuple(w + (passes - 1) * o for w, o in zip(whole, one))


def measure(shape, sharding) -> dict:
    passes = counting_passes(shape)
    q_flops, q_bytes = _threshold_cost(shape, sharding, passes)
    one, two = (_cost(_ns_probe(k), shape, sharding) for k in (1, 2))
    ns_flops = 5 * (two[0] - one[0])
    ns_bytes = 5 * (two[1] - one[1])
    roofline = lambda f, b: max(f / PEAK_FLOPS, b / HBM_BYTES_PER_S)
    q_time, ns_time = roofline(q_flops, q_bytes), roofline(ns_flops, ns_bytes)
    return {
        "shape": list(shape),
        "counting_passes": passes,
        "threshold_flops": q_flops,
        "threshold_bytes": q_bytes,
        "threshold_reads_of_data": q_bytes / (np.prod(shape) * 4),
        "threshold_roofline_s": q_time,
        "ns_flops_5_steps": ns_flops,
        "ns_bytes_5_steps": ns_bytes,
        "ns_roofline_s": ns_time,
        "threshold_over_ns": q_time / ns_time,
    }


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    from jax.experimental import topologies
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    try:
        devices = topologies.get_topology_desc(
            topology_name="v5e:2x2", platform="tpu"
        ).devices
    except Exception as e:  # noqa: BLE001 - explain and stop
        print(f"needs libtpu (pip install -e '.[tpu]' in its own venv): {e}")
        return 1
    mesh = Mesh(np.array(devices[:1]), ("chip",))  # one chip, nothing sharded
    sharding = NamedSharding(mesh, PartitionSpec())
    rows, results = [], []
    for shape in SHAPES:
        r = measure(shape, sharding)
        results.append(r)
        rows.append(
            [
                "x".join(map(str, shape)),
                str(r["counting_passes"]),
                f"{r['threshold_reads_of_data']:.1f}",
                f"{r['threshold_roofline_s'] * 1e3:.3f}",
                f"{r['ns_flops_5_steps'] / 1e9:.4g}",
                f"{r['ns_roofline_s'] * 1e3:.3f}",
                f"{r['threshold_over_ns']:.3f}",
            ]
        )
        print(rows[-1], flush=True)
    table = _common.markdown_table(
        [
            "batch x m x n (float32)",
            "search passes",
            "threshold: reads of the data",
            "threshold roofline ms",
            "NS GFLOP (5 steps)",
            "NS roofline ms",
            "threshold / NS",
        ],
        rows,
    )
    worst = max(results, key=lambda r: r["threshold_over_ns"])
    summary = (
        f"Worst threshold / Newton–Schulz roofline ratio "
        f"{worst['threshold_over_ns']:.3f} at {worst['shape']} (target "
        f"<= {TARGET}: {'PASS' if worst['threshold_over_ns'] <= TARGET else 'FAIL'}); "
        f"there the search made {worst['counting_passes']} passes and its "
        f"bytes amount to {worst['threshold_reads_of_data']:.1f} reads of the data "
        "(13 for the fixed 4-bit digit passes before)."
    )
    print()
    print(table)
    print(summary)
    env = {**_common.environment(), "compiled_for": devices[0].device_kind}
    _common.write_results(
        "bench_threshold_tpu",
        title="ROOT's threshold vs Newton–Schulz on one TPU v5e chip (roofline)",
        env=env,
        data={
            "peak_flops": PEAK_FLOPS,
            "hbm_bytes_per_s": HBM_BYTES_PER_S,
            "results": results,
        },
        sections=[("Summary", summary), ("Results", table), ("Method", __doc__)],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
