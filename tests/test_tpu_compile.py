"""root() compiled for a small TPU v5e topology with libtpu (skipped without it).

libtpu (``pip install -e ".[tpu]"``, best in its own venv) compiles for
compile-only TPU devices on a CPU host; nothing is executed. Without libtpu
(the main venv, CI) the whole module is skipped.
"""

import os
import re

import pytest

pytest.importorskip("libtpu", reason="needs libtpu: pip install -e '.[tpu]'")

# Compile-only: no TPU is touched, so no metadata-server query and no libtpu
# lockfile (which would fail this test beside another libtpu process).
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax
import jax.numpy as jnp
import optax
from jax.experimental import mesh_utils, topologies
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from optax.contrib import MuonDimensionNumbers

import root_optax
from tests import hlo_collectives

TOPOLOGY = "v5e:2x4"  # 8 chips
POD_TOPOLOGY = "v5e:16x16"  # 256 chips, one "fsdp" axis: moved in factors
LAYERS, D, HIDDEN, VOCAB = 8, 128, 256, 512
MATRIX = MuonDimensionNumbers(reduction_axis=-2, output_axis=-1)
AXIS_TYPES = {"explicit": AxisType.Explicit, "auto": AxisType.Auto}
_INSTRUCTION = r"^\s*(?:ROOT\s+)?%\S+\s*=\s*(.*?)\s"
_ALL_GATHER = re.compile(_INSTRUCTION + r"all-gather(?:-start)?\(", re.MULTILINE)
_ALL_TO_ALL = re.compile(_INSTRUCTION + r"all-to-all(?:-start)?\(", re.MULTILINE)
_PRODUCT = re.compile(_INSTRUCTION + r"(?:dot|convolution)\(.*$", re.MULTILINE)
_ARRAY = re.compile(r"\b[a-z]+\d*\[([\d,]*)\]")


def _shapes(scale: int = 1):
    """Scan-over-layers params: two stacked block kernels, a stacked norm scale
    and an embedding (AdamW); widths times ``scale``."""
    d, hidden = D * scale, HIDDEN * scale
    return {
        "embed": (VOCAB, d),
        "layers": {
            "w_in": (LAYERS, d, hidden),
            "w_out": (LAYERS, hidden, d),
            "scale": (LAYERS, d),
        },
    }


def _dims():
    return {"embed": None, "layers": {"w_in": MATRIX, "w_out": MATRIX, "scale": None}}


def _replicated_ns_flops(steps=5):
    """Newton–Schulz FLOPs of all block matrices on one device: per step and
    wide (m, n) matrix X X^T (2 m^2 n) + A A (2 m^3) + P X (2 m^2 n)."""
    m, n = min(D, HIDDEN), max(D, HIDDEN)
    return 2 * LAYERS * steps * (4 * m * m * n + 2 * m**3)


def _compile(mode: str, axes: str, probe_steps: int | None, topology: str):
    devices = topologies.get_topology_desc(
        topology_name=topology, platform="tpu"
    ).devices
    mesh = Mesh(
        mesh_utils.create_device_mesh((len(devices),), devices),
        ("fsdp",),
        axis_types=(AXIS_TYPES[axes],),
    )
    # FSDP: the largest non-layer axis of each leaf.
    specs = {
        "embed": P("fsdp", None),
        "layers": {
            "w_in": P(None, None, "fsdp"),
            "w_out": P(None, "fsdp", None),
            "scale": P(None, "fsdp"),
        },
    }
    is_shape = lambda x: isinstance(x, tuple) and all(isinstance(i, int) for i in x)
    shardings = jax.tree.map(
        lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P)
    )
    params = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s, jnp.float32, sharding=sh),
        _shapes(max(1, len(devices) // D)),  # FSDP: widths >= chips
        shardings,
        is_leaf=is_shape,
    )
    distributed = mesh if mode == "distributed" else False
    probe = {}
    if probe_steps is not None:  # every step unrolled: cost_analysis counts each
        probe = {
            "ns_coeffs": [root_optax.MUON_COEFFICIENTS] * probe_steps,
            "ns_steps": probe_steps,
            "ns_normalization": "schatten4",
        }
    opt = root_optax.root(
        1e-3, weight_dimension_numbers=_dims(), distributed=distributed, **probe
    )
    by_path = {
        jax.tree_util.keystr(path): (leaf.shape, sharding)
        for (path, leaf), sharding in zip(
            jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(shardings)
        )
    }

    def state_sharding(path, leaf):
        key = jax.tree_util.keystr(path)
        for param_key, (shape, sharding) in by_path.items():
            if key.endswith(param_key) and leaf.shape == shape:
                return sharding
        return NamedSharding(mesh, P())

    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    with jax.set_mesh(mesh):
        abstract = jax.eval_shape(opt.init, params)
        state_shardings = jax.tree_util.tree_map_with_path(state_sharding, abstract)
        state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract,
            state_shardings,
        )
        compiled = (
            jax.jit(
                step,
                in_shardings=(shardings, state_shardings, shardings),
                out_shardings=(shardings, state_shardings),
            )
            .lower(params, state, params)
            .compile()
        )
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {
        "flops": float(cost["flops"]),
        "hlo": compiled.as_text(),
        "chips": mesh.size,
    }


_CACHE = {}


def compiled(mode, axes, probe_steps=None, topology=TOPOLOGY):
    """Compile each (mode, axes, probe, topology) once per test session;
    ``probe_steps``: that many Newton–Schulz steps, none of them in a loop."""
    key = (mode, axes, probe_steps, topology)
    if key not in _CACHE:
        _CACHE[key] = _compile(*key)
    return _CACHE[key]


def one_step_flops(mode, axes):
    """Per-device FLOPs of one Newton–Schulz step: the update with 2 unrolled
    steps minus the update with 1 (everything else is the same in both).
    Needed because XLA's cost analysis counts a loop body once, and the
    default iteration is a loop over its steps."""
    return compiled(mode, axes, 2)["flops"] - compiled(mode, axes, 1)["flops"]


def _shapes_of(result_type: str):
    return [
        tuple(int(d) for d in dims.split(",") if d)
        for dims in _ARRAY.findall(result_type)
    ]


def whole_matrix_gathers(hlo: str) -> list[str]:
    """All-gathers whose result holds a whole block matrix ((D, HIDDEN) or its
    transpose as the last two axes)."""
    whole = {(D, HIDDEN), (HIDDEN, D)}
    return [
        result
        for result in _ALL_GATHER.findall(hlo)
        if any(s[-2:] in whole for s in _shapes_of(result) if len(s) >= 2)
    ]


@pytest.mark.parametrize("axes", ["explicit", "auto"])
@pytest.mark.parametrize("mode", ["default", "distributed"])
def test_compiles(mode, axes):
    result = compiled(mode, axes)
    assert result["flops"] > 0
    assert _PRODUCT.search(result["hlo"]), "no matrix product in the compiled update"


@pytest.mark.parametrize("axes", ["explicit", "auto"])
def test_default_mode_runs_no_highest_precision_products(axes):
    """Newton–Schulz in float32 at the default precision, as optax's Muon: no
    product at Precision.HIGHEST (a multi-pass product on the MXU)."""
    hlo = compiled("default", axes)["hlo"]
    products = [m.group(0) for m in _PRODUCT.finditer(hlo)]
    highest = [p for p in products if "operand_precision={highest,highest}" in p]
    assert products
    assert not highest, (
        f"{len(highest)} of {len(products)} products in the compiled TPU update "
        f"run at highest precision, e.g. {highest[0].strip()[:200]}"
    )


@pytest.mark.parametrize("axes", ["explicit", "auto"])
def test_distributed_mode_splits_newton_schulz_over_chips(axes):
    """Each of the 8 chips orthogonalizes 2 of the 16 block matrices (one of each
    stack: w_in and w_out are sharded differently, so they are stacked apart), so
    its Newton–Schulz FLOPs are the replicated work over 8 (plus a few
    elementwise FLOPs per step). The default mode leaves the split to the
    compiler, which shares out only part of the work."""
    dist, default = one_step_flops("distributed", axes), one_step_flops("default", axes)
    share = _replicated_ns_flops(steps=1) / compiled("distributed", axes)["chips"]
    assert 0.99 * share < dist < 1.05 * share, (dist, share)
    assert dist < 0.5 * default, (dist, default)


def test_distributed_explicit_moves_matrices_without_gathering_them():
    """Under explicit axes the distributed mode moves whole matrices with
    all-to-alls; no all-gather assembles a block matrix on a device."""
    hlo = compiled("distributed", "explicit")["hlo"]
    assert _ALL_TO_ALL.search(hlo), "expected all-to-alls to move the stacks"
    gathers = whole_matrix_gathers(hlo)
    assert not gathers, f"all-gathers of whole matrices: {gathers[:3]}"


@pytest.mark.parametrize("axes", ["explicit", "auto"])
def test_distributed_moves_over_a_pod_axis_in_groups_of_16(axes):
    """On 256 chips (one "fsdp" axis) every move is an all-to-all over 16 chips:
    libtpu compiles one all-to-all over all 256 in about 11 s, two over 16 in
    under 1 s (benchmarks/bench_pod_compile.py: the distributed update of a
    2-layer model compiled in 102 s before, 12 s after), and no all-gather comes
    in, under Auto axes too (there the benchmark's 1B model is the sharper check:
    without the unsharded-batch first step XLA gathered its attention leaves to
    concatenate them, which this small tree does not provoke)."""
    hlo = compiled("distributed", axes, topology=POD_TOPOLOGY)["hlo"]
    sizes = hlo_collectives.all_to_all_group_sizes(hlo)
    assert sizes and set(sizes) == {16}, sizes
    assert not _ALL_GATHER.search(hlo), _ALL_GATHER.search(hlo).group(0)


def test_threshold_reads_the_data_once_per_pass():
    """The accelerator threshold's loop reads the matrices themselves in each
    pass: no copy of their bit patterns is written before it (``cost_analysis``
    counts the loop body once, so the whole program is one read)."""
    from root_optax._quantile import abs_quantile_batched

    devices = topologies.get_topology_desc(
        topology_name=TOPOLOGY, platform="tpu"
    ).devices
    sharding = NamedSharding(Mesh(devices[:1], ("chip",)), P())
    for shape in ((48, 512, 512), (1, 2048, 8192)):
        x = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding)
        compiled = jax.jit(lambda x: abs_quantile_batched(x, 0.9)).lower(x).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        reads = cost["bytes accessed"] / (4 * shape[0] * shape[1] * shape[2])
        assert 0.99 < reads < 1.05, (shape, reads)
