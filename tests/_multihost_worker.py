"""One process of the multi-host test (tests/test_multihost.py launches two).

Run as a script, it joins a ``jax.distributed`` job on CPU, trains ``root()``
on a global device mesh that spans every process, gathers the parameters and
the optimizer state, and writes them to a ``.npz`` per configuration. Imported,
it is the single-process reference: :func:`train` with ``layout=None`` runs the
same steps on one device. Nothing runs at import time.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import root_optax
from root_optax import _placement

STEPS = 5
NAN_STEP = 2  # this step's gradients get a NaN: root() must skip it everywhere
LEARNING_RATE = 0.02

# Mesh shape, axis names, and the partition specs of the params and of the
# batch (x and y). The 2-D layout shards w1 over both axes and w2's rows over
# the flattened pair.
LAYOUTS = {
    "fsdp": {
        "mesh": ((8,), ("fsdp",)),
        "params": {
            "w1": P("fsdp", None),
            "b1": P("fsdp"),
            "scale": P(),
            "w2": P("fsdp", None),
        },
        "batch": P("fsdp", None),
    },
    "2d": {
        "mesh": ((2, 4), ("data", "model")),
        "params": {
            "w1": P("data", "model"),
            "b1": P("model"),
            "scale": P(),
            "w2": P(("data", "model"), None),
        },
        "batch": P("data", None),
    },
}


def problem():
    """Params (two matrices, a bias, a scale vector) and a regression batch."""
    rng = np.random.default_rng(0)
    params = {
        "w1": rng.normal(size=(16, 64)).astype(np.float32) / 4,
        "b1": rng.normal(size=64).astype(np.float32) / 10,
        "scale": np.ones(64, np.float32),
        "w2": rng.normal(size=(64, 8)).astype(np.float32) / 8,
    }
    x = rng.normal(size=(32, 16)).astype(np.float32)
    y = np.sin(x[:, :8]).astype(np.float32)
    return params, x, y


def loss_fn(params, x, y):
    h = jnp.tanh(x @ params["w1"] + params["b1"][None]) * params["scale"][None]
    return jnp.mean((h @ params["w2"] - y) ** 2)


def make_mesh(layout):
    shape, names = LAYOUTS[layout]["mesh"]
    # Auto axes: the compiler propagates the shardings through the step.
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names))


def _put(value, sharding):
    """A global array from a host value every process holds in full."""
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda i: value[i])


def state_shardings(opt, params, param_shardings, replicated):
    """The optimizer state's shardings: the params' where the state mirrors
    them (optax.MaskedNode where a partition left a leaf out), else replicated."""
    is_masked = lambda x: isinstance(x, optax.MaskedNode)
    return optax.tree.map_params(
        opt,
        lambda leaf, sharding: leaf if is_masked(leaf) else sharding,
        jax.eval_shape(opt.init, params),
        param_shardings,
        transform_non_params=lambda _: replicated,
        is_leaf=is_masked,
    )


def setup(opt, layout=None):
    """Initial params, optimizer state and batch, on one device or the mesh.

    Returns ``(params, opt_state, (x, y), shardings)``; ``shardings`` is
    ``None`` for one device, else ``(params', state's, replicated)``.
    """
    params, x, y = problem()
    if layout is None:
        params = jax.tree.map(jnp.asarray, params)
        return params, jax.jit(opt.init)(params), (jnp.asarray(x), jnp.asarray(y)), None
    mesh = make_mesh(layout)
    spec = LAYOUTS[layout]
    replicated = NamedSharding(mesh, P())
    param_shardings = {k: NamedSharding(mesh, s) for k, s in spec["params"].items()}
    params = jax.tree.map(_put, params, param_shardings)
    state_sh = state_shardings(opt, params, param_shardings, replicated)
    opt_state = jax.jit(opt.init, out_shardings=state_sh)(params)
    batch = tuple(_put(a, NamedSharding(mesh, spec["batch"])) for a in (x, y))
    return params, opt_state, batch, (param_shardings, state_sh, replicated)


def make_step(opt, shardings=None):
    """A jitted ``step(params, opt_state, batch, i) -> (params, opt_state, loss)``
    that adds a NaN to a gradient entry when ``i == NAN_STEP``."""

    def step(params, opt_state, batch, i):
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        # A NaN in w1's last entry, which lives on the last device: process 1
        # of 2. (Added through a mask: on a 2-D mesh, XLA 0.10.2 partitions
        # `grads["w1"].at[-1, -1].set(...)` wrongly, see test_multihost.py.)
        rows, cols = jnp.indices(grads["w1"].shape, sparse=True)
        last = (rows == rows.size - 1) & (cols == cols.size - 1)
        nan = jnp.where(last & (i == NAN_STEP), jnp.nan, 0.0)
        grads = {**grads, "w1": grads["w1"] + nan}
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    if shardings is None:
        jitted = jax.jit(step)
        return lambda params, opt_state, batch, i: jitted(
            params, opt_state, batch, np.int32(i)
        )
    jitted = jax.jit(step, out_shardings=shardings)
    replicated = shardings[2]
    return lambda params, opt_state, batch, i: jitted(
        params, opt_state, batch, _put(np.int32(i), replicated)
    )


def make_root(layout=None, **root_kwargs):
    """root() with ``root_kwargs``; ``distributed="mesh"`` stands for the
    layout's mesh (JSON cannot carry a Mesh) and is dropped on one device."""
    if root_kwargs.get("distributed") == "mesh":
        if layout is None:
            del root_kwargs["distributed"]
        else:
            root_kwargs["distributed"] = make_mesh(layout)
    return root_optax.root(LEARNING_RATE, **root_kwargs)


def train(layout=None, steps=STEPS, **root_kwargs):
    """``steps`` root() steps from :func:`problem` (a NaN at ``NAN_STEP``).

    ``layout=None`` runs on one device; otherwise params, optimizer state and
    data are laid out on the global mesh of ``LAYOUTS[layout]``. Returns the
    final (params, opt_state, loss).
    """
    # "max_all_to_all_group": split mesh axes above this many devices into
    # sub-axes for the distributed moves (the pod path, on 8 CPU devices).
    default_group = _placement._MAX_ALL_TO_ALL_GROUP
    _placement._MAX_ALL_TO_ALL_GROUP = root_kwargs.pop(
        "max_all_to_all_group", default_group
    )
    try:
        opt = make_root(layout, **root_kwargs)
        params, opt_state, batch, shardings = setup(opt, layout)
        step = make_step(opt, shardings)
        for i in range(steps):
            params, opt_state, loss = step(params, opt_state, batch, i)
    finally:
        _placement._MAX_ALL_TO_ALL_GROUP = default_group
    return params, opt_state, loss


def flatten(tree):
    """{keystr(path): host NumPy array} for every leaf of a gathered tree."""
    return {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--coordinator", required=True, help="host:port")
    parser.add_argument("--num-processes", type=int, required=True)
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument(
        "--configs", required=True, help='JSON {"name": [layout, root_kwargs]}'
    )
    parser.add_argument("--out", required=True, help="directory for the .npz files")
    parser.add_argument("--cache-dir", help="persistent compilation cache directory")
    args = parser.parse_args()

    jax.config.update("jax_numpy_rank_promotion", "raise")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.cache_dir:
        jax.config.update("jax_compilation_cache_dir", args.cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.distributed.initialize(
        args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
        initialization_timeout=60,
    )
    from jax.experimental import multihost_utils

    for name, (layout, root_kwargs) in json.loads(args.configs).items():
        params, opt_state, loss = train(layout, **root_kwargs)
        # w1 is split over every device: this process should hold half of it.
        w1 = params["w1"]
        local = sum(s.data.size for s in w1.addressable_shards)
        gathered = multihost_utils.process_allgather(
            {"params": params, "opt_state": opt_state, "loss": loss}, tiled=True
        )
        np.savez(
            os.path.join(args.out, f"{name}-{args.process_id}.npz"),
            process_count=jax.process_count(),
            device_count=jax.device_count(),
            local_device_count=jax.local_device_count(),
            w1_local_fraction=local / w1.size,
            **flatten(gathered),
        )
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
