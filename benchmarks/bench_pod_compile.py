"""Compile one root() update for TPU v5e pod topologies on a CPU host (nothing runs).

libtpu compiles for a TPU topology it is only told about
(``jax.experimental.topologies.get_topology_desc("v5e:4x4", "tpu")`` gives
compile-only devices): no TPU is needed and nothing is executed. For each
topology, model and mesh kind this compiles ONE optimizer update + apply,

    updates, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, updates)

jitted with the in/out shardings of params, grads and state (params and state
donated), for ``root_optax.root`` (default mode and ``distributed=mesh``),
``optax.contrib.muon`` and ``optax.adamw``, and reports from the compiled TPU
executable: lower + compile seconds, per-device FLOPs (``cost_analysis()``),
per-device memory (``memory_analysis()``), collectives and ``highest``-precision
products counted in the HLO text, and ratios to Muon and AdamW of the same run.
Each compilation runs in its own subprocess with a timeout, so one that hangs is
recorded as a timeout and the benchmark goes on.

Models: Llama-shaped, scan-over-layers params (every block weight has a leading
layer axis, as ``nn.scan``/``nnx.vmap`` make them), float32: ``1b`` (d=2048, 16
layers, SwiGLU hidden 8192, vocab 32000) and ``7b`` (d=4096, 32 layers, hidden
11008, vocab 32000); q/k/v/o (L, d, d), gate/up (L, d, h), down (L, h, d), RMSNorm
scales (L, d). The block kernels go to the matrix path with
``MuonDimensionNumbers(reduction_axis=-2, output_axis=-1)`` (layer axis a batch
axis), everything else (embedding, head, norms) to AdamW, for ROOT and Muon
alike. FSDP: one mesh axis "fsdp" over all chips; every leaf's largest non-layer
dimension is sharded when the chip count divides it.

Needs libtpu, kept out of the main environment (with libtpu installed JAX probes
for TPUs); install it in its own venv, then run from the repository root:

    python -m venv /work/venv-tpu
    /work/venv-tpu/bin/pip install -e ".[test,tpu]"
    /work/venv-tpu/bin/python benchmarks/bench_pod_compile.py --quick   # smoke run
    /work/venv-tpu/bin/python benchmarks/bench_pod_compile.py           # everything
    /work/venv-tpu/bin/python benchmarks/bench_pod_compile.py \\
        --topologies 2x2 4x4 --models 1b --meshes explicit --timeout 900

``--help`` lists the flags (topologies, models, layers, meshes, optimizers,
timeout, the Newton–Schulz FLOPs probes, HLO dumps). A configuration that timed out
is not retried on larger topologies (``--retry-after-timeout`` to try anyway).
"""

from __future__ import annotations

import os

# CPU stays the default backend; TPU topologies are only compiled for. No TPU
# metadata server is asked for anything (there is none), and since no process
# touches a TPU, several may load libtpu at once (it otherwise takes a lockfile
# and fails in a second process, e.g. a test run beside a benchmark).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import argparse
import json
import math
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common  # puts the checkout's root_optax on sys.path
import numpy as np

TOPOLOGIES = ("2x2", "4x4", "8x8", "16x16")
MODELS = {
    "1b": {"d": 2048, "layers": 16, "hidden": 8192, "vocab": 32000},
    "7b": {"d": 4096, "layers": 32, "hidden": 11008, "vocab": 32000},
}
MESHES = ("explicit", "auto")
OPTIMIZERS = ("root", "root_distributed", "muon", "adamw")
REFERENCES = ("muon", "adamw")
PROBE_STEPS = (1, 2)
"""Step counts of the FLOPs probes (their difference is one step)."""
COLLECTIVES = (
    "all-gather",
    "all-reduce",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
)
BLOCK_KERNELS = (("attn", "q"), ("attn", "k"), ("attn", "v"), ("attn", "o"))
BLOCK_KERNELS += (("mlp", "gate"), ("mlp", "up"), ("mlp", "down"))
_BYTES = {"f32": 4, "f64": 8, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1}
_ARRAY = re.compile(r"\b(f32|f64|bf16|f16|s32|u32|s8|u8|pred)\[([\d,]*)\]")
# One HLO instruction per line: `[ROOT] %name = <result type> opcode(operands)...`.
# Asynchronous pairs count once (the -start; the -done is not matched).
_COLLECTIVE = re.compile(
    r"^\s*(?:ROOT\s+)?%\S+\s*=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(",
    re.MULTILINE,
)
_PRODUCT = re.compile(
    r"^\s*(?:ROOT\s+)?%\S+\s*=\s*.*?\s(dot|convolution)\(.*$", re.MULTILINE
)
_HIGHEST = "operand_precision={highest,highest}"


# ----------------------------------------------------------------------------
# Model, shardings, optimizers (worker side)


def model_config(name: str, layers: int | None, shrink: int) -> dict[str, int]:
    """The model's sizes, ``layers`` overriding and widths divided by ``shrink``."""
    cfg = dict(MODELS[name])
    if layers is not None:
        cfg["layers"] = layers
    cfg["d"] //= shrink
    cfg["hidden"] //= shrink
    return cfg


def param_shapes(cfg: dict[str, int]) -> dict[str, Any]:
    """Scan-over-layers Llama params as nested dicts of shapes (NNX-like names)."""
    d, h, n_layers, vocab = cfg["d"], cfg["hidden"], cfg["layers"], cfg["vocab"]
    attn = {name: {"kernel": (n_layers, d, d)} for name in ("q", "k", "v", "o")}
    mlp = {
        "gate": {"kernel": (n_layers, d, h)},
        "up": {"kernel": (n_layers, d, h)},
        "down": {"kernel": (n_layers, h, d)},
    }
    return {
        "embed": {"embedding": (vocab, d)},
        "layers": {
            "attn": attn,
            "mlp": mlp,
            "attn_norm": {"scale": (n_layers, d)},
            "mlp_norm": {"scale": (n_layers, d)},
        },
        "final_norm": {"scale": (d,)},
        "head": {"kernel": (d, vocab)},
    }


def _is_shape(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def _is_block_kernel(path) -> bool:
    keys = tuple(getattr(k, "key", None) for k in path)
    return keys[:1] == ("layers",) and keys[1:3] in BLOCK_KERNELS


def fsdp_spec(path, shape: tuple[int, ...], chips: int):
    """Shard the largest non-layer dimension over "fsdp" when ``chips`` divides it
    (the first such dimension on ties); the layer axis is never sharded."""
    from jax.sharding import PartitionSpec as P

    stacked = getattr(path[0], "key", None) == "layers"
    dims = range(1 if stacked else 0, len(shape))
    best = max(dims, key=lambda i: (shape[i], -i))
    spec = [None] * len(shape)
    if shape[best] % chips == 0:
        spec[best] = "fsdp"
    return P(*spec)


def dimension_numbers(shapes):
    """Block kernels: each layer's (m, n) slice a matrix; the rest to AdamW."""
    from optax.contrib import MuonDimensionNumbers

    block = MuonDimensionNumbers(reduction_axis=-2, output_axis=-1)
    return _map_shapes(
        lambda path, _: block if _is_block_kernel(path) else None, shapes
    )


def _map_shapes(fn, shapes):
    import jax

    return jax.tree_util.tree_map_with_path(fn, shapes, is_leaf=_is_shape)


def make_optimizer(name: str, dims, mesh, ns_steps: int | None):
    import optax

    import root_optax

    probe = {}
    if ns_steps is not None:  # FLOPs probe: every step outside the loop
        probe = {
            "ns_coeffs": np.tile(root_optax.MUON_COEFFICIENTS, (ns_steps, 1)),
            "ns_steps": ns_steps,
            "ns_normalization": "schatten4",
        }
    if name == "root":
        return root_optax.root(1e-3, weight_dimension_numbers=dims, **probe)
    if name == "root_distributed":
        return root_optax.root(
            1e-3, weight_dimension_numbers=dims, distributed=mesh, **probe
        )
    if name == "muon":
        return optax.contrib.muon(1e-3, muon_weight_dimension_numbers=dims)
    if name == "adamw":
        return optax.adamw(1e-3)
    raise ValueError(f"unknown optimizer {name!r}")


def state_shardings(abstract_state, params, param_shardings, mesh):
    """Shardings of the optimizer state: a state leaf whose key path ends with a
    param's key path and has its shape takes that param's sharding; everything
    else (counters, scalars) is replicated. (The README's
    ``optax.tree.map_params`` recipe is not used: it calls ``init`` on
    placeholder params, which compile-only TPU devices cannot run.)"""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    by_path = {
        jax.tree_util.keystr(path): (leaf.shape, sharding)
        for (path, leaf), sharding in zip(
            jax.tree_util.tree_flatten_with_path(params)[0],
            jax.tree.leaves(param_shardings),
        )
    }
    replicated = NamedSharding(mesh, P())

    def rule(path, leaf):
        key = jax.tree_util.keystr(path)
        for param_key, (shape, sharding) in by_path.items():
            if key.endswith(param_key) and tuple(leaf.shape) == shape:
                return sharding
        return replicated

    return jax.tree_util.tree_map_with_path(rule, abstract_state)


# ----------------------------------------------------------------------------
# HLO text analysis


def _array_bytes(text: str) -> int:
    total = 0
    for dtype, dims in _ARRAY.findall(text):
        size = math.prod(int(d) for d in dims.split(",") if d)
        total += size * _BYTES.get(dtype, 1)
    return total


def hlo_counts(hlo: str, matrix_shapes: list[tuple[int, int]]) -> dict[str, Any]:
    """Collectives and matrix products in compiled HLO text (static counts).

    A collective is one instruction whose opcode is ``<op>`` or ``<op>-start``
    (an asynchronous pair counts once; the ``-done`` is not counted), wherever it
    sits: entry computation, fusions, loop bodies. An instruction in a loop body
    counts once however often the loop runs. ``bytes`` adds up the arrays of
    each result (per device). ``whole_matrix_gathers`` counts the all-gathers
    whose result ends in a full (m, n) or (n, m) block-kernel matrix.

    Products: instructions with opcode ``dot`` or ``convolution`` (the TPU
    compiler emits matmuls as convolutions), and those among them with
    ``operand_precision={highest,highest}``.
    """
    full = {tuple(s) for s in matrix_shapes} | {tuple(s[::-1]) for s in matrix_shapes}
    out = {op: {"count": 0, "bytes": 0} for op in COLLECTIVES}
    whole = 0
    for result, op in _COLLECTIVE.findall(hlo):
        out[op]["count"] += 1
        out[op]["bytes"] += _array_bytes(result)
        if op == "all-gather":
            for _, dims in _ARRAY.findall(result):
                shape = tuple(int(d) for d in dims.split(",") if d)
                if len(shape) >= 2 and shape[-2:] in full:
                    whole += 1
                    break
    products = _PRODUCT.findall(hlo)
    lines = [m.group(0) for m in _PRODUCT.finditer(hlo)]
    return {
        "collectives": out,
        "whole_matrix_gathers": whole,
        "products": len(products),
        "products_highest": sum(_HIGHEST in line for line in lines),
        "hlo_chars": len(hlo),
    }


def _flops(compiled) -> dict[str, float | None]:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    get = lambda k: None if cost.get(k) is None else float(cost[k])
    return {"flops": get("flops"), "bytes_accessed": get("bytes accessed")}


def _memory(compiled) -> dict[str, int | None]:
    stats = compiled.memory_analysis()
    names = (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "alias_size_in_bytes",
        "temp_size_in_bytes",
        "generated_code_size_in_bytes",
    )
    return {n: getattr(stats, n, None) for n in names}


# ----------------------------------------------------------------------------
# One compilation (runs in a subprocess)


def topology_info(topology: str) -> dict[str, Any]:
    from jax.experimental import topologies

    devices = topologies.get_topology_desc(
        topology_name=f"v5e:{topology}", platform="tpu"
    ).devices
    coords = np.array([d.coords for d in devices])
    return {
        "name": f"v5e:{topology}",
        "chips": len(devices),
        "device_kind": devices[0].device_kind,
        "platform": devices[0].platform,
        "bounds": [int(b) for b in coords.max(axis=0) + 1],
        "cores_per_chip": int(max(d.core_on_chip for d in devices)) + 1,
    }


def compile_one(cfg: dict[str, Any]) -> dict[str, Any]:
    """Lower and compile one update for one configuration; measure it."""
    import jax
    import jax.numpy as jnp
    import optax
    from jax.experimental import mesh_utils, topologies
    from jax.sharding import AxisType, Mesh, NamedSharding

    if cfg.get("log_compiles"):
        jax.config.update("jax_log_compiles", True)
    start = time.perf_counter()
    devices = topologies.get_topology_desc(
        topology_name=f"v5e:{cfg['topology']}", platform="tpu"
    ).devices
    chips = len(devices)
    kind = {"explicit": AxisType.Explicit, "auto": AxisType.Auto}[cfg["mesh"]]
    mesh = Mesh(
        mesh_utils.create_device_mesh((chips,), devices), ("fsdp",), axis_types=(kind,)
    )
    model = model_config(cfg["model"], cfg["layers"], cfg["shrink"])
    shapes = param_shapes(model)
    specs = _map_shapes(lambda path, s: fsdp_spec(path, s, chips), shapes)
    param_shardings = jax.tree.map(
        lambda s: NamedSharding(mesh, s),
        specs,
        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec),
    )
    params = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s, jnp.float32, sharding=sh),
        shapes,
        param_shardings,
        is_leaf=_is_shape,
    )
    dims = dimension_numbers(shapes)
    opt = make_optimizer(cfg["optimizer"], dims, mesh, cfg["ns_steps"])
    setup_s = time.perf_counter() - start

    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    with jax.set_mesh(mesh):
        abstract = jax.eval_shape(opt.init, params)
        shardings = state_shardings(abstract, params, param_shardings, mesh)
        state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract,
            shardings,
        )
        jitted = jax.jit(
            step,
            in_shardings=(param_shardings, shardings, param_shardings),
            out_shardings=(param_shardings, shardings),
            donate_argnums=(0, 1),
        )
        t0 = time.perf_counter()
        lowered = jitted.lower(params, state, params)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
    hlo = compiled.as_text()
    if cfg.get("dump_dir"):
        path = Path(cfg["dump_dir"]) / f"{label(cfg)}.hlo.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(hlo)
    matrix_shapes = sorted(
        {tuple(s[1:]) for s in _block_shapes(shapes)}, key=lambda s: (s[0], s[1])
    )
    return {
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "lower_compile_s": t2 - t0,
        "setup_s": setup_s,
        **_flops(compiled),
        "memory": _memory(compiled),
        **hlo_counts(hlo, matrix_shapes),
        "topology": topology_info(cfg["topology"]),
    }


def _block_shapes(shapes) -> list[tuple[int, ...]]:
    import jax

    flat = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=_is_shape)[0]
    return [s for path, s in flat if _is_block_kernel(path)]


def worker(cfg_json: str) -> int:
    cfg = json.loads(cfg_json)
    try:
        result = {"status": "ok", **compile_one(cfg)}
    except Exception as e:  # noqa: BLE001 - the parent records it
        message = str(e).strip().splitlines()
        result = {
            "status": "error",
            "error": f"{type(e).__name__}: {message[0][:300] if message else ''}",
        }
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ----------------------------------------------------------------------------
# Driver (parent process)


def label(cfg: dict[str, Any]) -> str:
    ns = "" if cfg["ns_steps"] is None else f"-ns{cfg['ns_steps']}"
    return f"{cfg['topology']}-{cfg['model']}-{cfg['mesh']}-{cfg['optimizer']}{ns}"


def run_subprocess(cfg: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run :func:`worker` for ``cfg`` in a fresh interpreter with a time limit."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a timeout kills it all
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        return {"status": "timeout", "wall_s": time.perf_counter() - start}
    wall = time.perf_counter() - start
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            return {**json.loads(line[len("RESULT ") :]), "wall_s": wall}
    tail = " | ".join(stderr.strip().splitlines()[-3:])
    return {
        "status": "error",
        "error": f"exit {proc.returncode}: {tail}",
        "wall_s": wall,
    }


def chips_of(topology: str) -> int:
    return math.prod(int(x) for x in topology.split("x"))


def ns_flops_analytic(shapes, chips: int, ns_steps: int) -> dict[str, float]:
    """Newton–Schulz FLOPs of the block kernels, counted from their shapes.

    Per matrix of wide shape (m, n), m <= n, one step is X X^T (2 m^2 n), A A
    (2 m^3) and P X (2 m^2 n). ``replicated``: all matrices, ``ideal``: that over
    the chip count, ``padded``: what a device gets when each stack (matrices of
    one shape and one FSDP layout, as the distributed mode groups them) is padded
    to a multiple of the chip count, i.e. ceil(count / chips) matrices.
    """
    import jax

    per_step = lambda r, c: 4 * min(r, c) ** 2 * max(r, c) + 2 * min(r, c) ** 3
    flat = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=_is_shape)[0]
    stacks: dict[tuple, int] = {}
    replicated = 0.0
    for path, shape in flat:
        if not _is_block_kernel(path):
            continue
        spec = tuple(fsdp_spec(path, shape, chips))
        key = (shape[1:], spec[1:])
        stacks[key] = stacks.get(key, 0) + shape[0]
        replicated += shape[0] * per_step(*shape[1:]) * ns_steps
    padded = sum(
        math.ceil(count / chips) * per_step(*shape) * ns_steps
        for (shape, _), count in stacks.items()
    )
    return {"replicated": replicated, "ideal": replicated / chips, "padded": padded}


def build_configs(args) -> list[dict[str, Any]]:
    configs = []
    for topology in args.topologies:
        for model in args.models:
            for mesh in args.meshes:
                for opt in args.optimizers:
                    steps = [None]
                    if opt in args.ns_flops_for:
                        steps += PROBE_STEPS
                    for ns_steps in steps:
                        configs.append(
                            {
                                "topology": topology,
                                "model": model,
                                "layers": args.layers,
                                "shrink": args.shrink,
                                "mesh": mesh,
                                "optimizer": opt,
                                "ns_steps": ns_steps,
                                "dump_dir": args.dump_hlo,
                                "log_compiles": args.log_compiles,
                            }
                        )
    return configs


def _series(cfg) -> tuple:
    return (cfg["model"], cfg["mesh"], cfg["optimizer"], cfg["ns_steps"])


def _fmt(x, spec=".3g", none="–") -> str:
    return none if x is None else format(x, spec)


def analyse(results: list[dict[str, Any]], args) -> None:
    """Add ratios to Muon/AdamW and the Newton–Schulz FLOPs estimates in place."""
    index = {label(r["config"]): r for r in results}

    def find(cfg, **change):
        return index.get(label({**cfg, **change}))

    for r in results:
        cfg, res = r["config"], r["result"]
        if res["status"] != "ok":
            continue
        shapes = param_shapes(model_config(cfg["model"], cfg["layers"], cfg["shrink"]))
        chips = chips_of(cfg["topology"])
        ratios = {}
        for ref in REFERENCES:
            other = find(cfg, optimizer=ref, ns_steps=None)
            via = cfg["mesh"]
            if other is None or other["result"]["status"] != "ok":
                # Muon cannot run sharded matrices under explicit axes: use the
                # same topology and model on the Auto mesh.
                other = find(cfg, optimizer=ref, ns_steps=None, mesh="auto")
                via = "auto"
            if other is None or other["result"]["status"] != "ok":
                continue
            o = other["result"]
            ratios[ref] = {
                "reference_mesh": via,
                "compile_s": res["lower_compile_s"] / o["lower_compile_s"],
                "flops": res["flops"] / o["flops"] if o["flops"] else None,
                "temp": (
                    res["memory"]["temp_size_in_bytes"]
                    / o["memory"]["temp_size_in_bytes"]
                    if o["memory"]["temp_size_in_bytes"]
                    else None
                ),
            }
        r["ratios"] = ratios
        if cfg["optimizer"] in ("root", "root_distributed") and cfg["ns_steps"] is None:
            analytic = ns_flops_analytic(shapes, chips, 5)
            ns = {"analytic": analytic}
            one, two = (find(cfg, ns_steps=k) for k in PROBE_STEPS)
            if all(p is not None and p["result"]["status"] == "ok" for p in (one, two)):
                measured = (two["result"]["flops"] - one["result"]["flops"]) * 5
                ns.update(
                    measured_per_device=measured,
                    measured_over_replicated=measured / analytic["replicated"],
                    measured_over_ideal=measured / analytic["ideal"],
                    measured_over_padded=measured / analytic["padded"],
                )
            ns["padded_over_replicated"] = analytic["padded"] / analytic["replicated"]
            r["ns_flops"] = ns


_OOM = re.compile(
    r"HLO temporaries \(([\d.]+\w?)\) exceeds available HBM \(([\d.]+\w?)\)"
)


def _status(res: dict[str, Any]) -> str:
    """A short status for tables: ok, timeout (N s), HBM OOM or the error."""
    if res["status"] == "timeout":
        return f"timeout ({res.get('timeout_s', 600):.0f} s)"
    if res["status"] != "error":
        return res["status"]
    error = res.get("error", "")
    oom = _OOM.search(error)
    if oom:
        return f"HBM OOM: temporaries {oom[1]} > {oom[2]}"
    if error.startswith("ShardingTypeError"):
        return "ShardingTypeError (illegally sharded dot_general result)"
    return error[:90]


def summary(results: list[dict[str, Any]]) -> str:
    """One line per topology, model and mesh: the ROOT modes against each other
    and against Muon."""
    groups: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in results:
        cfg = r["config"]
        if cfg["ns_steps"] is None:
            key = (cfg["topology"], cfg["model"], cfg["mesh"])
            groups.setdefault(key, {})[cfg["optimizer"]] = r["result"]
    lines = []
    for (topology, model, mesh), runs in groups.items():
        parts = []
        for opt in ("root", "root_distributed", "muon"):
            res = runs.get(opt)
            if res is None:
                continue
            if res["status"] != "ok":
                parts.append(f"{opt} {_status(res)}")
                continue
            parts.append(
                f"{opt} {res['lower_compile_s']:.0f} s, "
                f"{res['flops'] / 1e9:.4g} GFLOP/device, "
                f"temp {res['memory']['temp_size_in_bytes'] / 2**30:.2f} GiB, "
                f"{res['products_highest']}/{res['products']} highest products, "
                f"{res['whole_matrix_gathers']} whole-matrix all-gathers"
            )
        default, dist = runs.get("root"), runs.get("root_distributed")
        if default and dist and default["status"] == dist["status"] == "ok":
            parts.append(
                f"distributed/default FLOPs {dist['flops'] / default['flops']:.3f}"
            )
        lines.append(
            f"- {topology} ({chips_of(topology)} chips), {model}, {mesh}: "
            + "; ".join(parts)
            + "."
        )
    return "\n".join(lines)


def _ratio_cell(ratio: dict[str, Any] | None, key: str, mesh: str) -> str:
    """One ratio to a reference; † when the reference ran on another mesh."""
    if ratio is None or ratio[key] is None:
        return "–"
    return _fmt(ratio[key], ".3g") + ("†" if ratio["reference_mesh"] != mesh else "")


def tables(results, args) -> tuple[str, str, str]:
    rows, coll_rows, ns_rows = [], [], []
    for r in results:
        cfg, res = r["config"], r["result"]
        name = cfg["optimizer"] + (
            "" if cfg["ns_steps"] is None else f" (probe, {cfg['ns_steps']} steps)"
        )
        head = [cfg["topology"], chips_of(cfg["topology"]), cfg["model"], cfg["mesh"]]
        if res["status"] != "ok":
            rows.append(head + [name, _status(res)] + ["–"] * 9)
            continue
        mem, ratio = res["memory"], r.get("ratios", {})
        mib = lambda k, mem=mem: _fmt(None if mem[k] is None else mem[k] / 2**20, ".0f")
        cells = lambda key, ratio=ratio, mesh=cfg["mesh"]: " / ".join(
            _ratio_cell(ratio.get(ref), key, mesh) for ref in REFERENCES
        )
        rows.append(
            head
            + [
                name,
                "ok",
                f"{res['lower_compile_s']:.1f}",
                cells("compile_s"),
                _fmt(res["flops"] / 1e9 if res["flops"] else None, ".4g"),
                cells("flops"),
                mib("temp_size_in_bytes"),
                mib("argument_size_in_bytes"),
                mib("output_size_in_bytes"),
                f"{res['products_highest']} / {res['products']}",
                str(res["whole_matrix_gathers"]),
            ]
        )
        coll = res["collectives"]
        coll_rows.append(
            head
            + [name]
            + [
                f"{coll[op]['count']} ({coll[op]['bytes'] / 2**20:.1f} MiB)"
                for op in COLLECTIVES
            ]
        )
        if "ns_flops" in r:
            ns = r["ns_flops"]
            a = ns["analytic"]
            measured = ns.get("measured_per_device")
            distributed = cfg["optimizer"] == "root_distributed"
            ns_rows.append(
                head
                + [
                    name,
                    f"{a['replicated'] / 1e9:.4g}",
                    f"{a['ideal'] / 1e9:.4g}",
                    f"{a['padded'] / 1e9:.4g}" if distributed else "–",
                    _fmt(measured / 1e9 if measured is not None else None, ".4g"),
                    _fmt(ns.get("measured_over_replicated"), ".4f"),
                    f"{1 / chips_of(cfg['topology']):.4f}",
                    f"{ns['padded_over_replicated']:.4f}" if distributed else "–",
                ]
            )
    main = _common.markdown_table(
        [
            "topology",
            "chips",
            "model",
            "mesh",
            "optimizer",
            "status",
            "lower+compile s",
            "compile / muon / adamw",
            "GFLOP/device",
            "FLOPs / muon / adamw",
            "temp MiB",
            "args MiB",
            "out MiB",
            "highest dots / dots",
            "whole-matrix all-gathers",
        ],
        rows,
    )
    coll = _common.markdown_table(
        ["topology", "chips", "model", "mesh", "optimizer"]
        + [f"{op} (result MiB)" for op in COLLECTIVES],
        coll_rows,
    )
    ns = _common.markdown_table(
        [
            "topology",
            "chips",
            "model",
            "mesh",
            "optimizer",
            "NS GFLOP replicated",
            "ideal /device",
            "padded /device",
            "measured /device",
            "measured / replicated",
            "1 / chips",
            "padded / replicated",
        ],
        ns_rows,
    )
    return main, coll, ns


def _plot(plt, results, args, superseded=()):
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    series: dict[tuple, list] = {}
    late = [r for r in superseded if r["result"]["status"] == "timeout"]
    for r in [*results, *late]:
        cfg = r["config"]
        if cfg["ns_steps"] is not None:
            continue
        key = (cfg["model"], cfg["mesh"], cfg["optimizer"])
        series.setdefault(key, []).append(r)
    colors = {"root": "tab:orange", "root_distributed": "tab:blue"}
    colors.update(muon="tab:green", adamw="tab:gray")
    markers = dict(zip(args.models, "osD^v"))
    for (model, mesh, opt), rs in sorted(series.items()):
        style = {"color": colors.get(opt), "marker": markers.get(model, "o")}
        style["linestyle"] = "-" if mesh == "explicit" else "--"
        name = f"{opt}, {model}, {mesh}"
        ok = [r for r in rs if r["result"]["status"] == "ok"]
        probed = [r for r in ok if "measured_per_device" in r.get("ns_flops", {})]
        lines = (
            (axes[0], ok, lambda r: r["result"]["lower_compile_s"]),
            (axes[1], probed, lambda r: r["ns_flops"]["measured_per_device"] / 1e9),
        )
        for ax, rows, value in lines:
            if rows:
                x = [chips_of(r["config"]["topology"]) for r in rows]
                ax.plot(x, [value(r) for r in rows], label=name, **style)
        late = [r for r in rs if r["result"]["status"] == "timeout"]
        if late:
            axes[0].scatter(
                [chips_of(r["config"]["topology"]) for r in late],
                [r["result"].get("timeout_s", args.timeout) for r in late],
                marker="x",
                s=80,
                color=style["color"],
            )
    # The Newton–Schulz work split evenly: replicated / chips, per model.
    chips = sorted({chips_of(r["config"]["topology"]) for r in results})
    for model in args.models:
        shapes = param_shapes(model_config(model, args.layers, args.shrink))
        ideal = [ns_flops_analytic(shapes, n, 5)["ideal"] / 1e9 for n in chips]
        axes[1].plot(
            chips,
            ideal,
            color="k",
            lw=0.8,
            ls=":",
            marker=markers[model],
            fillstyle="none",
            label=f"NS replicated / chips, {model}",
        )
    for limit in sorted({r["result"].get("timeout_s", args.timeout) for r in results}):
        axes[0].axhline(limit, color="k", lw=0.6, ls=":")
    axes[0].set(
        ylabel="lower + compile (s)",
        title="compile time of one update (x: timed out; dotted: timeouts)",
    )
    axes[1].set(
        ylabel="Newton–Schulz GFLOP per device",
        title="per-device Newton–Schulz FLOPs (5 x the one-step probe)",
    )
    for ax in axes:
        ax.set(xscale="log", yscale="log", xlabel="chips (TPU v5e)")
        ax.set_xticks(chips, [str(n) for n in chips])
        ax.minorticks_off()
        ax.grid(alpha=0.3, which="both")
    handles, names = axes[0].get_legend_handles_labels()
    more = axes[1].get_legend_handles_labels()
    extra = [(h, n) for h, n in zip(*more) if n not in names]
    handles += [h for h, _ in extra]
    names += [n for _, n in extra]
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=7)
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    return fig


def host_info() -> dict[str, Any]:
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"hostname": platform.node(), "cpu_model": cpu, "os": platform.platform()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run with the libtpu venv, e.g. /work/venv-tpu/bin/python "
        "benchmarks/bench_pod_compile.py --quick",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--topologies",
        nargs="+",
        default=list(TOPOLOGIES),
        help="v5e chip grids, ascending (default: 2x2 4x4 8x8 16x16)",
    )
    parser.add_argument(
        "--models", nargs="+", default=list(MODELS), choices=list(MODELS)
    )
    parser.add_argument(
        "--layers", type=int, default=None, help="override the layer count"
    )
    parser.add_argument(
        "--shrink", type=int, default=1, help="divide d and hidden by this (1)"
    )
    parser.add_argument("--meshes", nargs="+", default=list(MESHES), choices=MESHES)
    parser.add_argument(
        "--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS
    )
    parser.add_argument(
        "--ns-flops-for",
        nargs="*",
        default=["root_distributed"],
        choices=["root", "root_distributed"],
        help="also compile these with 1 and 2 unrolled Newton–Schulz steps, to "
        "measure the per-device Newton–Schulz FLOPs (default: root_distributed; "
        "none: no extra compiles)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds per compile (600)"
    )
    parser.add_argument(
        "--retry-after-timeout",
        action="store_true",
        help="compile a configuration on larger topologies even after it timed "
        "out on a smaller one (default: record it as skipped)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2x2 only, the 1b model with 2 layers and d, hidden / 4",
    )
    parser.add_argument("--dump-hlo", default=None, help="write each compiled HLO here")
    parser.add_argument(
        "--log-compiles", action="store_true", help="jax_log_compiles in the workers"
    )
    parser.add_argument("--name", default="bench_pod_compile", help="results file stem")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="JSON",
        help="compile nothing: combine the results of earlier runs (JSON files "
        "written by this script; a later file's configuration replaces an "
        "earlier one's) into one report",
    )
    args = parser.parse_args()
    if args.worker is not None:
        return worker(args.worker)
    if args.quick:
        args.topologies, args.models = ["2x2"], ["1b"]
        args.layers = 2 if args.layers is None else args.layers
        args.shrink = 4 if args.shrink == 1 else args.shrink
    args.topologies = sorted(args.topologies, key=chips_of)

    import importlib.metadata

    try:
        libtpu = importlib.metadata.version("libtpu")
    except importlib.metadata.PackageNotFoundError:
        print(
            "libtpu is not installed: pip install -e '.[tpu]' in a separate venv "
            "(see the module docstring).",
            file=sys.stderr,
        )
        return 1
    env = {**_common.environment(), "libtpu": libtpu, **host_info()}
    env["command"] = " ".join([sys.executable, *sys.argv])
    if args.merge:
        return merge(args, env)
    configs = build_configs(args)
    print(
        f"jax {env['jax']}, libtpu {libtpu}, host {env['hostname']} "
        f"({env['usable_cpus']} CPUs, load {env['load_average_1m']}); "
        f"{len(configs)} compilations, timeout {args.timeout:.0f} s each",
        flush=True,
    )
    results, timed_out = [], set()
    # Results so far, after every compilation: an interrupted run can still be
    # reported with --merge.
    partial = _common.RESULTS_DIR / f"{args.name}.partial.json"
    partial.parent.mkdir(parents=True, exist_ok=True)
    for i, cfg in enumerate(configs):
        name = label(cfg)
        if _series(cfg) in timed_out and not args.retry_after_timeout:
            res = {"status": "skipped", "error": "timed out on a smaller topology"}
        else:
            res = {**run_subprocess(cfg, args.timeout), "timeout_s": args.timeout}
            if res["status"] == "timeout":
                timed_out.add(_series(cfg))
        results.append({"config": cfg, "result": res})
        detail = (
            f"compile {res['lower_compile_s']:.1f} s, "
            f"{(res['flops'] or 0) / 1e9:.4g} GFLOP/device, "
            f"temp {(res['memory']['temp_size_in_bytes'] or 0) / 2**20:.0f} MiB, "
            f"highest dots {res['products_highest']}/{res['products']}"
            if res["status"] == "ok"
            else res.get("error", "")
        )
        wall = res.get("wall_s")
        wall = "" if wall is None else f" [{wall:.0f} s]"
        print(
            f"[{i + 1}/{len(configs)}] {name}: {res['status']}{wall} {detail}",
            flush=True,
        )
        partial.write_text(
            json.dumps(
                {
                    "environment": env,
                    "config": {"timeout_s": args.timeout},
                    "results": results,
                }
            )
        )
    code = report(results, args, env)
    partial.unlink()
    return code


def merge(args, env: dict[str, Any]) -> int:
    """Combine earlier runs' results (``--merge``) into one report."""
    merged: dict[str, dict[str, Any]] = {}
    runs, superseded = [], []
    for path in args.merge:
        payload = json.loads(Path(path).read_text())
        runs.append({"file": str(path), "environment": payload["environment"]})
        for r in payload["results"]:
            r = {k: v for k, v in r.items() if k in ("config", "result")}
            r["result"].setdefault("timeout_s", payload["config"]["timeout_s"])
            if label(r["config"]) in merged:
                superseded.append(merged[label(r["config"])])
            merged[label(r["config"])] = r
        args.timeout = payload["config"]["timeout_s"]
    results = list(merged.values())
    configs = [r["config"] for r in results]
    args.topologies = sorted({c["topology"] for c in configs}, key=chips_of)
    args.models = list(dict.fromkeys(c["model"] for c in configs))
    args.meshes = list(dict.fromkeys(c["mesh"] for c in configs))
    args.optimizers = list(dict.fromkeys(c["optimizer"] for c in configs))
    args.ns_flops_for = sorted({c["optimizer"] for c in configs if c["ns_steps"]})
    layers = {c["layers"] for c in configs}
    shrink = {c["shrink"] for c in configs}
    if len(layers) > 1 or len(shrink) > 1:
        print("cannot merge runs of different --layers/--shrink", file=sys.stderr)
        return 1
    args.layers, args.shrink = layers.pop(), shrink.pop()
    order = lambda r: (
        chips_of(r["config"]["topology"]),
        args.models.index(r["config"]["model"]),
        MESHES.index(r["config"]["mesh"]),
        OPTIMIZERS.index(r["config"]["optimizer"]),
        r["config"]["ns_steps"] or 0,
    )
    results.sort(key=order)
    return report(results, args, {**env, "merged_runs": runs}, superseded)


def report(
    results: list[dict[str, Any]],
    args,
    env: dict[str, Any],
    superseded: list[dict[str, Any]] = (),
) -> int:
    """Tables, plot and result files for ``results`` (``superseded``: earlier
    runs of configurations that a later run replaced, listed apart)."""
    analyse(results, args)
    main_table, coll_table, ns_table = tables(results, args)
    earlier = "\n".join(
        f"- {label(r['config'])}: {_status(r['result'])}"
        + (
            f", {r['result']['lower_compile_s']:.1f} s"
            if r["result"]["status"] == "ok"
            else ""
        )
        for r in superseded
    )
    print()
    print(main_table)
    print()
    print(coll_table)
    print()
    print(ns_table)
    topo_info = next(
        (r["result"]["topology"] for r in results if r["result"]["status"] == "ok"),
        None,
    )
    method = (
        "One `jax.jit(step, in_shardings=..., out_shardings=..., "
        "donate_argnums=(0, 1))` of `updates, state = opt.update(grads, state, "
        "params); params = optax.apply_updates(params, updates)`, lowered with "
        "`jax.ShapeDtypeStruct` params/grads/state (float32) and compiled by libtpu "
        "for compile-only TPU v5e devices (`jax.experimental.topologies."
        "get_topology_desc('v5e:RxC', platform='tpu')`); nothing is executed. "
        "Mesh: `Mesh(mesh_utils.create_device_mesh((chips,), devices), ('fsdp',), "
        "axis_types=(Explicit | Auto,))`, traced under `jax.set_mesh(mesh)`. "
        "FSDP: each leaf's largest non-layer dimension is sharded over 'fsdp' "
        "when divisible. State shardings: a state leaf whose key path ends with a "
        "param's key path and has its shape takes that param's sharding, the rest "
        "is replicated. Optimizers: `root_optax.root(1e-3, "
        "weight_dimension_numbers=dims)` (`root`), the same with "
        "`distributed=mesh` (`root_distributed`), `optax.contrib.muon(1e-3, "
        "muon_weight_dimension_numbers=dims)` and `optax.adamw(1e-3)`; `dims` "
        "sends the block kernels (L, m, n) to the matrix path with "
        "`MuonDimensionNumbers(-2, -1)` and the rest to AdamW. "
        "Each compilation runs in its own subprocess (fresh interpreter, "
        f"timeout {args.timeout:.0f} s, killed with its process group on "
        "timeout); a configuration that timed out is skipped on larger topologies "
        "unless `--retry-after-timeout`. Compile time is `lower()` + "
        "`compile()` wall seconds on this host (2 shared CPU cores: other jobs "
        "slow it, see the load averages). FLOPs and bytes: "
        "`compiled.cost_analysis()` of the per-device program (a matmul counts "
        "2 m n k whatever its precision: a `highest` f32 product's extra MXU passes "
        "are not in it). Memory: `compiled.memory_analysis()` per device. "
        "Collectives: static count of HLO instructions whose opcode is the "
        "collective or its `-start` (asynchronous pairs once, `-done` not "
        "counted), in every computation (fusions and loop bodies included: an "
        "instruction in a loop body counts once), with the MiB of their results "
        "per device. `whole-matrix all-gathers`: all-gathers whose result ends in "
        "a full (m, n) or (n, m) block-kernel matrix. `highest dots / dots`: "
        "instructions with opcode `dot` or `convolution` (libtpu emits matmuls as "
        "convolutions) with `operand_precision={highest,highest}` / all of them. "
        "Ratios (`/ muon / adamw`) are to the same topology, model and mesh; † "
        "means Muon failed on that mesh (it raises ShardingTypeError on sharded "
        "matrices under Explicit axes) and the Auto-mesh Muon is the reference. "
        "Newton–Schulz FLOPs: `replicated` = 5 steps x sum over the block "
        "matrices of (X X^T: 2 m^2 n, A A: 2 m^3, P X: 2 m^2 n), m <= n the wide "
        "shape; `ideal` = replicated / chips; `padded` = what one device gets when "
        "each stack of one shape and layout is padded to a multiple of the chip "
        "count (ceil(count / chips) matrices); `measured` = 5 x (FLOPs of the update "
        "with 2 Newton–Schulz steps - FLOPs with 1), both probes with every step "
        "outside the loop (`ns_normalization='schatten4'`, explicit coefficients), "
        "from the compiled per-device programs: everything else in the update "
        "(momentum, clipping, the AdamW branch, the all-to-alls) is the same in "
        "both, so the difference is one Newton–Schulz step exactly (plus its few "
        "elementwise FLOPs). XLA's `cost_analysis()` counts a loop body once, so "
        "the per-device FLOPs of the default programs (ROOT's and Muon's "
        "Newton–Schulz both loop over their steps) count one step, not five. `HBM OOM`: "
        "libtpu refuses a program whose temporaries exceed the chip's HBM "
        "(v5e: 16 GiB) at compile time; it is recorded as an error."
    )
    plt = None if args.no_plot else _common.pyplot()
    figure = None if plt is None else _plot(plt, results, args, superseded)
    models = {m: model_config(m, args.layers, args.shrink) for m in args.models}
    _common.write_results(
        args.name,
        title="root() compiled for TPU v5e pod topologies (libtpu, CPU host)",
        env=env,
        data={
            "config": {
                "topologies": args.topologies,
                "models": models,
                "meshes": args.meshes,
                "optimizers": args.optimizers,
                "ns_flops_for": args.ns_flops_for,
                "timeout_s": args.timeout,
                "quick": args.quick,
                "dtype": "float32",
            },
            "topology_example": topo_info,
            "results": results,
            "superseded": list(superseded),
        },
        sections=[
            ("Summary", summary(results)),
            ("Models", "\n".join(f"- {m}: {c}" for m, c in models.items())),
            ("Compile time, FLOPs, memory, precision (per device)", main_table),
            ("Collectives in the compiled update (static counts)", coll_table),
            ("Newton–Schulz FLOPs per device", ns_table),
            *([("Earlier runs replaced by a later one", earlier)] if earlier else []),
            ("Method", method),
        ],
        figure=figure,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
