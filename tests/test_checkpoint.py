"""Sharded root() training state through Orbax: save, restore, resume.

On conftest.py's 8 host CPU devices: train root() with FSDP-sharded params,
checkpoint params and optimizer state with orbax.checkpoint, restore them onto
the mesh from an abstract target (shapes, dtypes, shardings) and resume. The
resumed run must equal the uninterrupted one bit for bit on the same layout,
and to float32 rounding when restored onto a 2 x 4 mesh instead.
"""

import inspect

import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import root_optax
from tests import _multihost_worker as problem

ocp = pytest.importorskip("orbax.checkpoint")

SAVE_AT = 3  # steps before the checkpoint: the NaN step (2) is among them
TOTAL = 6

# root() as is, and with its matrices orthogonalized on their owner devices.
# ("mesh" stands for the mesh of the layout in use, see make_root.)
ROOT_KWARGS = [
    pytest.param({}, id="default"),
    pytest.param(
        {"distributed": "mesh"},
        id="distributed",
        marks=pytest.mark.skipif(
            "distributed" not in inspect.signature(root_optax.root).parameters,
            reason="this root() has no distributed= option",
        ),
    ),
]


def _target(opt, layout):
    """The restore target as a fresh run builds it, without the saved state:
    ``jax.eval_shape`` of the params and of ``opt.init``, with the layout's
    shardings on every leaf. Returns it and the shardings."""
    mesh = problem.make_mesh(layout)
    param_sh = {
        k: NamedSharding(mesh, spec)
        for k, spec in problem.LAYOUTS[layout]["params"].items()
    }
    params = jax.eval_shape(lambda: problem.problem()[0])
    state_sh = problem.state_shardings(opt, params, param_sh, NamedSharding(mesh, P()))
    shardings = {"params": param_sh, "opt_state": state_sh}
    abstract = {"params": params, "opt_state": jax.eval_shape(opt.init, params)}
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract,
        shardings,
    )
    return target, shardings


def _train(opt, layout, start, stop, params=None, opt_state=None):
    """Steps [start, stop) on ``layout``; from :func:`problem.setup` if no
    params are given, else from the given (possibly restored) ones."""
    init_params, init_state, batch, shardings = problem.setup(opt, layout)
    if params is None:
        params, opt_state = init_params, init_state
    step = problem.make_step(opt, shardings)
    for i in range(start, stop):
        params, opt_state, _ = step(params, opt_state, batch, i)
    return params, opt_state


def _assert_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, g), w in zip(
        jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)
    ):
        assert g.dtype == w.dtype, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(g, w, err_msg=jax.tree_util.keystr(path))


def _assert_shardings(tree, shardings):
    for (path, x), s in zip(
        jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(shardings)
    ):
        assert x.sharding.is_equivalent_to(s, x.ndim), (
            jax.tree_util.keystr(path),
            x.sharding,
            s,
        )


@pytest.fixture(scope="module", params=ROOT_KWARGS)
def saved(request, tmp_path_factory):
    """root() trained SAVE_AT steps on the 8-way FSDP mesh, checkpointed with
    StandardCheckpointer; and the uninterrupted run to TOTAL steps."""
    opt = problem.make_root("fsdp", **request.param)
    params, opt_state = _train(opt, "fsdp", 0, SAVE_AT)
    path = tmp_path_factory.mktemp("checkpoint") / "state"
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, {"params": params, "opt_state": opt_state})
        checkpointer.wait_until_finished()
    uninterrupted = _train(opt, "fsdp", SAVE_AT, TOTAL, params, opt_state)
    return {
        "root_kwargs": request.param,
        "opt": opt,
        "path": path,
        "state": {"params": params, "opt_state": opt_state},
        "uninterrupted": uninterrupted,
    }


def _restore_standard(path, target):
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(path, target)


def test_restore_on_the_same_mesh_resumes_bitwise(saved):
    opt = saved["opt"]
    target, shardings = _target(opt, "fsdp")
    restored = _restore_standard(saved["path"], target)

    _assert_equal(restored, saved["state"])
    _assert_shardings(restored, shardings)
    # The step just before the save (2) was skipped: its flag and count survive.
    assert int(restored["opt_state"].skipped) == 1
    assert not bool(restored["opt_state"].last_finite)

    params, opt_state = _train(
        opt, "fsdp", SAVE_AT, TOTAL, restored["params"], restored["opt_state"]
    )
    want_params, want_state = saved["uninterrupted"]
    _assert_equal(params, want_params)
    _assert_equal(opt_state, want_state)


def test_restored_state_keeps_root_state_types(saved):
    """Every node of root()'s state comes back as its own type (namedtuples,
    optax.MaskedNode where a branch does not hold a leaf), not dicts/lists."""
    target, shardings = _target(saved["opt"], "fsdp")
    restored = _restore_standard(saved["path"], target)["opt_state"]

    assert jax.tree.structure(restored) == jax.tree.structure(
        saved["state"]["opt_state"]
    )
    assert isinstance(restored, root_optax.SkipNonfiniteState)
    partition = restored.inner_state
    assert isinstance(partition, optax.PartitionState)
    assert set(partition.inner_states) == {"root", "adamw"}
    matrix, adamw = partition.inner_states["root"], partition.inner_states["adamw"]
    assert isinstance(matrix, optax.MaskedState)
    assert isinstance(adamw, optax.MaskedState)
    momentum = matrix.inner_state["direction"]["momentum"]
    assert isinstance(momentum, root_optax.MomentumState)
    adam = adamw.inner_state["adam"]
    assert isinstance(adam, optax.ScaleByAdamState)
    # Each branch holds exactly its own leaves; the others are MaskedNodes.
    masked = lambda x: isinstance(x, optax.MaskedNode)
    assert {k for k, v in momentum.mu.items() if not masked(v)} == {"w1", "w2"}
    assert {k for k, v in adam.mu.items() if not masked(v)} == {"b1", "scale"}
    assert {k for k, v in adam.nu.items() if not masked(v)} == {"b1", "scale"}
    # The matrix momenta are sharded like their params, the counters replicated.
    w1_sharding = shardings["params"]["w1"]
    assert momentum.mu["w1"].sharding.is_equivalent_to(w1_sharding, 2)
    assert restored.skipped.sharding.is_fully_replicated
    assert restored.skipped.dtype == np.int32
    assert restored.last_finite.dtype == np.bool_
    assert int(adam.count) == SAVE_AT - 1  # the NaN step did not count


def test_restore_onto_a_2x4_mesh_with_checkpoint_manager(saved, tmp_path):
    """Saved from 8-way FSDP, restored onto a 2 x 4 layout, training continues
    to float32 rounding of the uninterrupted run."""
    opt = problem.make_root("2d", **saved["root_kwargs"])
    with ocp.CheckpointManager(tmp_path / "run") as manager:
        manager.save(SAVE_AT, args=ocp.args.StandardSave(saved["state"]))
        manager.wait_until_finished()
    target, shardings = _target(opt, "2d")
    with ocp.CheckpointManager(tmp_path / "run") as manager:
        assert manager.latest_step() == SAVE_AT
        restored = manager.restore(SAVE_AT, args=ocp.args.StandardRestore(target))

    # The layout changed; the values did not.
    assert shardings["params"]["w1"].spec == P("data", "model")
    _assert_shardings(restored, shardings)
    _assert_equal(restored, saved["state"])

    params, opt_state = _train(
        opt, "2d", SAVE_AT, TOTAL, restored["params"], restored["opt_state"]
    )
    want_params, want_state = saved["uninterrupted"]
    assert jax.tree.structure(opt_state) == jax.tree.structure(want_state)
    for got, want in zip(
        jax.tree.leaves((params, opt_state)), jax.tree.leaves((want_params, want_state))
    ):
        assert got.dtype == want.dtype
        if np.issubdtype(want.dtype, np.floating):
            scale = float(np.max(np.abs(want), initial=0.0))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * scale)
        else:
            np.testing.assert_array_equal(got, want)
    # Training went on after the restore: the params moved.
    for got, before in zip(
        jax.tree.leaves(params), jax.tree.leaves(saved["state"]["params"])
    ):
        assert not np.array_equal(got, before)
