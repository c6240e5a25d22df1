"""root() across two JAX processes on one machine (CPU collectives over gloo).

Two worker processes (tests/_multihost_worker.py), 4 CPU devices each, form one
8-device mesh; root() trains under jax.jit with NamedSharding'ed params, so its
clip quantile, Newton–Schulz matmuls and non-finite check need cross-process
collectives. The gathered params and optimizer state must match a
single-device run of the same steps.

The workers add their NaN gradient entry through a mask, not with
``grads["w1"].at[-1, -1].set(...)``: with jax/jaxlib 0.10.2 on CPU, inside a
jitted step whose batch is sharded over the 2-D mesh's "data" axis and whose
output is P("data", "model"), that scatter also overwrote the last local entry
of every shard on data index 0 (entries [7, 15], [7, 31], [7, 47], [7, 63]),
with or without Shardy and with no root() in the program: an XLA partitioning
problem, not root()'s.
"""

import importlib.util
import inspect
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import root_optax
from tests import _multihost_worker as worker

REPO = Path(__file__).resolve().parent.parent
NUM_PROCESSES = 2
# A cold compile on 2 busy shared cores took 70 s; a hang is cut off here.
TIMEOUT_S = 240

# Each test launches the workers once for its configurations (one launch per
# test, so pytest-xdist never runs the same launch twice): name -> (layout,
# root() keyword arguments); "mesh" stands for the layout's mesh (see
# _multihost_worker.make_root).
DEFAULT_CONFIGS = {"fsdp": ("fsdp", {}), "2d": ("2d", {})}
DISTRIBUTED_CONFIGS = {
    "2d-distributed": ("2d", {"distributed": "mesh"}),
    # Mesh axes split into 2-device sub-axes, as a 256-chip axis is into 16s:
    # sub-axes that span both processes.
    "fsdp-distributed-factored": (
        "fsdp",
        {"distributed": "mesh", "max_all_to_all_group": 2},
    ),
}
HAS_DISTRIBUTED = "distributed" in inspect.signature(root_optax.root).parameters


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out_dir, configs):
    """Run the workers to completion; fail with their output if any fails.

    As soon as one worker fails the others are killed (they would otherwise
    wait for it in a collective until the timeout).
    """
    env = dict(os.environ)
    # conftest.py gave this process 8 devices; each worker gets 4 of the 8.
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"  # a hung worker's log is complete
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    address = f"127.0.0.1:{_free_port()}"
    # The suite's persistent compilation cache (conftest.py), if any.
    cache = jax.config.jax_compilation_cache_dir
    cache_flag = [f"--cache-dir={cache}"] if cache else []
    logs = [out_dir / f"process-{i}.log" for i in range(NUM_PROCESSES)]
    procs = []
    for i, log in enumerate(logs):
        with open(log, "w") as f:
            cmd = [
                sys.executable,
                str(Path(worker.__file__)),
                f"--coordinator={address}",
                f"--num-processes={NUM_PROCESSES}",
                f"--process-id={i}",
                f"--configs={json.dumps(configs)}",
                f"--out={out_dir}",
                *cache_flag,
            ]
            procs.append(
                subprocess.Popen(
                    cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT
                )
            )
    start = time.monotonic()
    while True:
        codes = [p.poll() for p in procs]
        if None not in codes or any(codes) or time.monotonic() > start + TIMEOUT_S:
            break
        time.sleep(0.1)
    why = None
    if any(codes):
        why = "failed"
    elif None in codes:
        why = f"timed out after {TIMEOUT_S} s"
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    if why:
        report = "\n".join(
            f"--- process {i} (exit {p.returncode}):\n{log.read_text()[-20000:]}"
            for i, (p, log) in enumerate(zip(procs, logs))
        )
        pytest.fail(f"multi-host workers {why}:\n{report}", pytrace=False)


def _run(tmp_path, configs):
    """{name: [arrays written by process 0, by process 1]} for ``configs``."""
    _launch(tmp_path, configs)
    results = {}
    for name in configs:
        results[name] = []
        for i in range(NUM_PROCESSES):
            with np.load(tmp_path / f"{name}-{i}.npz") as f:
                results[name].append(dict(f))
    return results


def _reference():
    """The same steps with root() on one device, flattened like the workers'
    files (with distributed= too, the reference is plain root())."""
    params, opt_state, loss = worker.train(None)
    return worker.flatten({"params": params, "opt_state": opt_state, "loss": loss})


META = ("process_count", "device_count", "local_device_count", "w1_local_fraction")


def _check(name, results, want):
    """One configuration's two files against the single-device reference."""
    first, second = results
    for got in results:
        assert int(got["process_count"]) == NUM_PROCESSES, name
        assert int(got["device_count"]) == 8, name
        assert int(got["local_device_count"]) == 4, name
        # w1 is split over all 8 devices: each process holds half of it.
        assert float(got["w1_local_fraction"]) == 0.5, name

    # Both processes hold the same global values. For replicated leaves (the
    # counters, the `scale` vector and its moments) each process reads its own
    # copy, so replicas drifting apart between processes would show here.
    assert first.keys() == second.keys(), name
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=name + key)

    got = {k: v for k, v in first.items() if k not in META}
    assert got.keys() == want.keys(), name
    # The params, both branches' state and the counters are all there.
    assert {k for k in want if k.startswith("['params']")} == {
        "['params']['w1']",
        "['params']['b1']",
        "['params']['scale']",
        "['params']['w2']",
    }
    for key in want:
        assert got[key].dtype == want[key].dtype, name + key
        assert got[key].shape == want[key].shape, name + key
        if np.issubdtype(want[key].dtype, np.floating):
            scale = float(np.max(np.abs(want[key]), initial=0.0))
            np.testing.assert_allclose(
                got[key], want[key], rtol=1e-5, atol=1e-6 * scale, err_msg=name + key
            )
        else:
            np.testing.assert_array_equal(got[key], want[key], err_msg=name + key)
    # The NaN step (its NaN lived on process 1 only) was skipped everywhere.
    assert int(got["['opt_state'].skipped"]) == 1, name
    assert bool(got["['opt_state'].last_finite"]), name
    # The run did something: params moved from their initial values.
    initial, _, _ = worker.problem()
    for k, v in initial.items():
        assert not np.allclose(got[f"['params']['{k}']"], v), name + k


def test_two_processes_match_one_device(tmp_path):
    """root() on 8-way FSDP and on a 2 x 4 mesh, across 2 processes."""
    results = _run(tmp_path, DEFAULT_CONFIGS)
    want = _reference()
    for name in DEFAULT_CONFIGS:
        _check(name, results[name], want)


@pytest.mark.skipif(
    not HAS_DISTRIBUTED, reason="this root() has no distributed= option"
)
def test_two_processes_distributed_match_one_device(tmp_path):
    """root(distributed=mesh) on a 2 x 4 mesh and on 8-way FSDP moved over
    2-device sub-axes, across 2 processes: each matrix orthogonalized whole on
    its owner device, wherever its shards came from."""
    results = _run(tmp_path, DISTRIBUTED_CONFIGS)
    want = _reference()
    for name in DISTRIBUTED_CONFIGS:
        _check(name, results[name], want)


def test_state_shardings_recipe_matches_the_state():
    """The out_shardings tree the workers pass to jit fits root()'s state."""
    mesh = worker.make_mesh("fsdp")
    params, _, _ = worker.problem()
    shardings = {
        k: jax.sharding.NamedSharding(mesh, s)
        for k, s in worker.LAYOUTS["fsdp"]["params"].items()
    }
    opt = root_optax.root(worker.LEARNING_RATE)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    tree = worker.state_shardings(opt, params, shardings, replicated)
    state = opt.init(params)
    assert jax.tree.structure(tree) == jax.tree.structure(state)
    momentum = optax.tree.get(tree, "momentum").mu
    assert momentum["w1"] is shardings["w1"] and momentum["w2"] is shardings["w2"]
    assert tree.skipped is replicated and tree.last_finite is replicated


def test_example_trains_in_one_process(capsys):
    """examples/multihost.py's training function on this process's 8 devices.

    Its launcher (two local processes over gloo) is the same recipe as the
    workers above; running it too would double this file's time."""
    path = REPO / "examples" / "multihost.py"
    spec = importlib.util.spec_from_file_location("multihost_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    losses = example.train(steps=10)
    assert len(losses) == 10 and np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses
    assert "step   9  loss" in capsys.readouterr().out
