"""root() on a mesh that spans several processes (hosts), FSDP-sharded.

On one machine, this launches 2 processes with 4 CPU devices each (one 8-device
mesh, CPU collectives over gloo):

    python examples/multihost.py

On a cluster, start one process per host with the same coordinator (host 0's
address and a free port) and that host's process id:

    python examples/multihost.py --coordinator=10.0.0.1:1234 \\
        --num-processes=4 --process-id=0   # 1, 2, 3 on the other hosts

(On Cloud TPU, or under SLURM/Open MPI, `jax.distributed.initialize()` with no
arguments finds all three itself: pass --coordinator=auto.)
"""

import argparse
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import root_optax

DIM, HIDDEN, BATCH_PER_PROCESS = 32, 256, 64


def init_params(key):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (DIM, HIDDEN)) / DIM**0.5,
        "b1": jnp.zeros(HIDDEN),
        "w2": jax.random.normal(k2, (HIDDEN, DIM)) / HIDDEN**0.5,
    }


def loss_fn(params, x):
    """Learn y = sin(x) with a one-hidden-layer MLP."""
    h = jax.nn.gelu(x @ params["w1"] + params["b1"][None])
    return jnp.mean((h @ params["w2"] - jnp.sin(x)) ** 2)


def train(steps):
    """``steps`` steps of root() on all devices of all processes; the losses."""
    mesh = jax.make_mesh((jax.device_count(),), ("fsdp",), (AxisType.Auto,))
    shard = lambda spec: NamedSharding(mesh, spec)
    # FSDP: every parameter is split over all devices of all processes.
    param_shardings = {
        "w1": shard(P(None, "fsdp")),
        "b1": shard(P("fsdp")),
        "w2": shard(P("fsdp", None)),
    }
    opt = root_optax.root(learning_rate=0.02)  # matrices: ROOT; b1: AdamW

    # Build params and optimizer state sharded from the start (each process
    # computes only its own shards). The state mirrors the params where it holds
    # moments; its counters are replicated.
    params = jax.jit(init_params, out_shardings=param_shardings)(jax.random.key(0))
    state_shardings = optax.tree.map_params(
        opt,
        lambda leaf, sharding: leaf if isinstance(leaf, optax.MaskedNode) else sharding,
        jax.eval_shape(opt.init, params),
        param_shardings,
        transform_non_params=lambda _: shard(P()),
        is_leaf=lambda x: isinstance(x, optax.MaskedNode),
    )
    opt_state = jax.jit(opt.init, out_shardings=state_shardings)(params)

    @jax.jit
    def step(params, opt_state, x):
        loss, grads = jax.value_and_grad(loss_fn)(params, x)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    # Each process feeds its own slice of the global batch.
    rng = np.random.default_rng(jax.process_index())
    losses = []
    for i in range(steps):
        local = rng.normal(size=(BATCH_PER_PROCESS, DIM)).astype(np.float32)
        x = jax.make_array_from_process_local_data(shard(P("fsdp")), local)
        params, opt_state, loss = step(params, opt_state, x)
        losses.append(float(loss))  # replicated: every process can read it
        if jax.process_index() == 0 and (i % 10 == 0 or i == steps - 1):
            print(f"step {i:3d}  loss {losses[-1]:.4f}", flush=True)
    return losses


def launch_local(num_processes, steps):
    """Start ``num_processes`` copies of this script on this machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
    }
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                f"--coordinator=127.0.0.1:{port}",
                f"--num-processes={num_processes}",
                f"--process-id={i}",
                f"--steps={steps}",
            ],
            env=env,
        )
        for i in range(num_processes)
    ]
    codes = [p.wait() for p in procs]
    return next((code for code in codes if code), 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinator", help="host:port of process 0, or 'auto'")
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    if args.coordinator is None:
        sys.exit(launch_local(args.num_processes, args.steps))
    if args.coordinator == "auto":
        jax.distributed.initialize()
    else:
        # Collectives between CPU devices of different processes (GPUs and TPUs
        # bring their own).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    print(
        f"process {jax.process_index()}/{jax.process_count()}: "
        f"{jax.local_device_count()} of {jax.device_count()} devices",
        flush=True,
    )
    train(args.steps)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
