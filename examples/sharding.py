"""root() on a sharded model: FSDP and data x model meshes, with and without
the distributed orthogonalization mode, on 8 host CPU devices.

    python examples/sharding.py            # both meshes, both modes
    python examples/sharding.py --steps 50

A residual MLP with scanned (stacked) layers trains on a toy regression. Its
params are sharded with `NamedSharding` over a mesh with explicit axes
(`jax.make_mesh(..., axis_types=Explicit)`, `jax.set_mesh`); the train step is
one `jax.jit`. For each mesh, `root()` runs twice from the same start:

* `distributed=False` (default): each matrix is orthogonalized where it lies;
  the compiler partitions Newton–Schulz's products over the mesh;
* `distributed=True`: each device clips and orthogonalizes whole matrices, its
  share of them, moved there and back by all-to-alls.

Both reach the same params (to float32 rounding), and the optimizer state keeps
the params' shardings. Auto axes (`AxisType.Auto`) work the same way.
"""

import argparse
import os
import time

# 8 host CPU devices; must be set before JAX starts.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding, reshard
from jax.sharding import PartitionSpec as P

import root_optax

DIM, WIDTH, HIDDEN, LAYERS, BATCH = 16, 64, 256, 8, 256

# Where each parameter lives ("store") and how the forward pass uses it
# ("compute"): FSDP gathers whole weights; data x model keeps the hidden axis
# split over "model" (tensor parallel) and gathers only over "data".
LAYOUTS = {
    "fsdp": {
        "mesh": {"fsdp": 8},
        "batch": P("fsdp"),
        "store": {
            "embed": P(None, "fsdp"),
            "layers": {
                "w_in": P(None, "fsdp"),
                "b_in": P(None, "fsdp"),
                "w_out": P(None, "fsdp"),
            },
            "head": P("fsdp"),
        },
        "compute": {"w_in": P(), "b_in": P(), "w_out": P(), "hidden": P("fsdp")},
    },
    "data_model": {
        "mesh": {"data": 2, "model": 4},
        "batch": P("data"),
        "store": {
            "embed": P(None, "model"),
            "layers": {
                "w_in": P(None, "data", "model"),
                "b_in": P(None, "model"),
                "w_out": P(None, "model", "data"),
            },
            "head": P("model"),
        },
        "compute": {
            "w_in": P(None, "model"),
            "b_in": P("model"),
            "w_out": P("model", None),
            "hidden": P("data", None),
        },
    },
}

# Scanned layers: every layer's slice of w_in / w_out is a matrix (8 + 8 of
# them: one of each per device in the distributed mode); the biases, the input
# embedding and the output head go to AdamW, as usual.
DIMENSION_NUMBERS = root_optax.matrix_dimension_numbers(
    ["b_in", "embed", "head"], stacked=True
)


def init_params(key):
    k = jax.random.split(key, 4)
    normal = lambda k, shape: jax.random.normal(k, shape) / np.sqrt(shape[-2])
    return {
        "embed": normal(k[0], (DIM, WIDTH)),
        "layers": {
            "w_in": normal(k[1], (LAYERS, WIDTH, HIDDEN)),
            "b_in": jnp.zeros((LAYERS, HIDDEN)),
            "w_out": normal(k[2], (LAYERS, HIDDEN, WIDTH)) * 0.5,
        },
        "head": normal(k[3], (WIDTH, DIM)),
    }


def make_loss(compute):
    """The loss under explicit axes: weights are resharded to their compute
    layout, and the contraction over a split hidden axis names its output."""

    def loss_fn(params, x, y):
        h = jnp.einsum("bi,id->bd", x, reshard(params["embed"], P()))

        def layer(h, w):
            w_in = reshard(w["w_in"], compute["w_in"])
            b_in = reshard(w["b_in"], compute["b_in"])
            w_out = reshard(w["w_out"], compute["w_out"])
            z = jax.nn.gelu(jnp.einsum("bd,dh->bh", h, w_in) + b_in[None])
            out = jnp.einsum("bh,hd->bd", z, w_out, out_sharding=compute["hidden"])
            return h + out, None

        h, _ = jax.lax.scan(layer, h, params["layers"])
        pred = jnp.einsum("bd,do->bo", h, reshard(params["head"], P()))
        return jnp.mean((pred - y) ** 2)

    return loss_fn


def train(layout_name, distributed, steps):
    """Train on one layout; returns the losses, final params and state."""
    layout = LAYOUTS[layout_name]
    axes = layout["mesh"]
    mesh = jax.make_mesh(
        tuple(axes.values()), tuple(axes), axis_types=(AxisType.Explicit,) * len(axes)
    )
    with jax.set_mesh(mesh):
        shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), layout["store"])
        params = jax.jit(init_params, out_shardings=shardings)(jax.random.key(0))
        opt = root_optax.root(
            learning_rate=0.02,
            weight_dimension_numbers=DIMENSION_NUMBERS,
            distributed=distributed,
        )
        # Zeros like the params, so the momenta and AdamW moments are born with
        # the params' shardings; counters are replicated.
        opt_state = jax.jit(opt.init)(params)
        loss_fn = make_loss(layout["compute"])

        @jax.jit
        def step(params, opt_state, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        batch = NamedSharding(mesh, layout["batch"])
        data_key = jax.random.key(1)
        losses = []
        for i in range(steps):
            if i == 1:  # the first step compiles
                start = time.perf_counter()
            x = jax.random.normal(jax.random.fold_in(data_key, i), (BATCH, DIM))
            x = jax.device_put(x, batch)
            params, opt_state, loss = step(params, opt_state, x, jnp.sin(2 * x))
            losses.append(float(loss))
        seconds = (time.perf_counter() - start) / (steps - 1)
        flops = step.lower(params, opt_state, x, x).compile().cost_analysis()
        flops = (flops[0] if isinstance(flops, (list, tuple)) else flops)["flops"]
    return losses, params, opt_state, flops, seconds


def check_shardings(params, opt_state, layout_name):
    """Params keep their layout; every momentum buffer has its param's."""
    want = LAYOUTS[layout_name]["store"]
    got = jax.tree.map(lambda x: jax.typeof(x).sharding.spec, params)
    same = jax.tree.map(
        lambda g, w: tuple(g)[: len(w)] == tuple(w) and not any(tuple(g)[len(w) :]),
        got,
        want,
    )
    assert all(jax.tree.leaves(same)), (got, want)
    momenta = optax.tree.get(opt_state, "momentum").mu
    for path, mu in jax.tree_util.tree_leaves_with_path(momenta):
        param = params
        for key in path:
            param = param[key.key]
        assert jax.typeof(mu).sharding == jax.typeof(param).sharding, path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="train steps (30)")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    print(f"{jax.device_count()} {jax.devices()[0].platform} devices")
    for layout_name in LAYOUTS:
        print(f"\nmesh {LAYOUTS[layout_name]['mesh']} (explicit axes)")
        results = {}
        for distributed in (False, True):
            losses, params, opt_state, flops, seconds = train(
                layout_name, distributed, args.steps
            )
            check_shardings(params, opt_state, layout_name)
            results[distributed] = params
            print(
                f"  root(distributed={distributed!s:5}): loss {losses[0]:.4f} -> "
                f"{losses[-1]:.4f}, step {flops / 1e6:.1f} MFLOP per device, "
                f"{seconds * 1e3:.1f} ms"
            )
        diff = max(
            float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
            for a, b in zip(
                jax.tree.leaves(results[True]), jax.tree.leaves(results[False])
            )
        )
        print(f"  distributed vs default params after {args.steps} steps: {diff:.1e}")
        print("  shardings kept:", jax.tree.map(lambda x: x.sharding.spec, params))


if __name__ == "__main__":
    main()
