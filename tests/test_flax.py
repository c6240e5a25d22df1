"""ROOT with Flax: Linen TrainState and NNX Optimizer training, routing, checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import root_optax

flax = pytest.importorskip("flax")

import flax.linen as nn
from flax import nnx, serialization
from flax.training import train_state

VOCAB, SEQ, WIDTH, HIDDEN, CLASSES, BATCH = 16, 4, 8, 32, 4, 64
LR = 1e-2

# ---------------------------------------------------------------------------
# Reading root()'s state: which branch holds each parameter.
# ---------------------------------------------------------------------------


def _is_masked(x):
    return isinstance(x, optax.MaskedNode)


def _name(path):
    """'hidden/kernel' for a Linen dict path or an NNX State path (drops .value)."""
    return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def _held(tree):
    """{name: whether this branch holds the leaf (not an optax.MaskedNode)}."""
    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=_is_masked)
    return {_name(path): not _is_masked(x) for path, x in leaves}


def _routes(opt_state):
    """{name: 'root' | 'adamw'} read off root()'s optimizer state.

    root()'s state is ``SkipNonfiniteState(PartitionState({'root':
    MaskedState({'direction': {'momentum': MomentumState(mu), ...}, ...}),
    'adamw': MaskedState({'adam': ScaleByAdamState, ...})}))``; each branch has
    ``optax.MaskedNode`` where a leaf belongs to the other one.
    """
    assert isinstance(opt_state, root_optax.SkipNonfiniteState)
    branches = opt_state.inner_state.inner_states
    assert set(branches) == {"root", "adamw"}
    momentum_state = optax.tree.get(branches["root"], "momentum")
    assert isinstance(momentum_state, root_optax.MomentumState)
    adam_state = optax.tree.get(branches["adamw"], "adam")
    assert isinstance(adam_state, optax.ScaleByAdamState)
    in_root, in_adamw = _held(momentum_state.mu), _held(adam_state.mu)
    assert in_root.keys() == in_adamw.keys()
    for name in in_root:
        assert in_root[name] != in_adamw[name], name  # exactly one branch
    return {name: "root" if held else "adamw" for name, held in in_root.items()}


def _data():
    """A fixed token-classification problem: the label is the first token mod 4."""
    tokens = jax.random.randint(jax.random.key(0), (BATCH, SEQ), 0, VOCAB)
    return tokens, tokens[:, 0] % CLASSES


def _xent(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


# ---------------------------------------------------------------------------
# Linen: TrainState.
# ---------------------------------------------------------------------------


class LinenNet(nn.Module):
    """Embed -> flatten -> Dense -> GELU -> LayerNorm -> Dense head."""

    @nn.compact
    def __call__(self, tokens):
        h = nn.Embed(VOCAB, WIDTH, name="embed")(tokens)
        h = h.reshape((h.shape[0], SEQ * WIDTH))
        h = nn.Dense(HIDDEN, name="hidden")(h)
        h = nn.LayerNorm(name="norm")(jax.nn.gelu(h))
        return nn.Dense(CLASSES, name="head")(h)


def _linen_state(tx):
    model = LinenNet()
    tokens, _ = _data()
    params = model.init(jax.random.key(1), tokens)["params"]
    return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)


@jax.jit
def _linen_step(state, tokens, labels):
    def loss_fn(params):
        return _xent(state.apply_fn({"params": params}, tokens), labels)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss


LINEN_DEFAULT_ROUTES = {
    # Default routing: every 2-D leaf is a matrix, the embedding table included.
    "embed/embedding": "root",
    "hidden/kernel": "root",
    "head/kernel": "root",
    "hidden/bias": "adamw",
    "head/bias": "adamw",
    "norm/scale": "adamw",
    "norm/bias": "adamw",
}


def test_linen_train_state_trains_and_routes_by_rank():
    state = _linen_state(root_optax.root(LR))
    assert _routes(state.opt_state) == LINEN_DEFAULT_ROUTES
    tokens, labels = _data()
    losses = []
    for _ in range(30):
        state, loss = _linen_step(state, tokens, labels)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses
    assert int(state.step) == 30
    assert _routes(state.opt_state) == LINEN_DEFAULT_ROUTES
    assert int(state.opt_state.skipped) == 0


def test_linen_first_step_is_root_for_kernels_and_adamw_for_the_rest():
    """Kernels take root()'s matrix step; biases and norms Adam's first step."""
    tx = root_optax.root(LR, weight_decay=0.0)
    state = _linen_state(tx)
    tokens, labels = _data()
    grads = jax.grad(lambda p: _xent(state.apply_fn({"params": p}, tokens), labels))(
        state.params
    )
    updates, _ = jax.jit(tx.update)(grads, state.opt_state, state.params)

    kernel = {"w": grads["hidden"]["kernel"]}
    alone, _ = tx.update(kernel, tx.init(kernel), kernel)
    np.testing.assert_allclose(
        updates["hidden"]["kernel"], alone["w"], rtol=1e-5, atol=1e-7
    )
    # An orthogonalized step: not the gradient's direction, RMS set by the scale.
    assert not np.allclose(
        updates["hidden"]["kernel"] / np.linalg.norm(updates["hidden"]["kernel"]),
        -grads["hidden"]["kernel"] / np.linalg.norm(grads["hidden"]["kernel"]),
        atol=1e-2,
    )
    # Adam's first step is -lr * g / (|g| + eps): -lr * sign(g).
    for g, u in (
        (grads["hidden"]["bias"], updates["hidden"]["bias"]),
        (grads["norm"]["scale"], updates["norm"]["scale"]),
        (grads["norm"]["bias"], updates["norm"]["bias"]),
    ):
        big = np.abs(g) > 1e-5
        assert big.any()
        np.testing.assert_allclose(u[big], -LR * np.sign(g[big]), rtol=1e-3)


def test_linen_routing_by_name():
    dims = root_optax.matrix_dimension_numbers(["embed", "head"])
    state = _linen_state(root_optax.root(LR, weight_dimension_numbers=dims))
    expected = {
        **LINEN_DEFAULT_ROUTES,
        "embed/embedding": "adamw",
        "head/kernel": "adamw",
    }
    assert _routes(state.opt_state) == expected
    tokens, labels = _data()
    new_state, loss = _linen_step(state, tokens, labels)
    new_state, new_loss = _linen_step(new_state, tokens, labels)
    assert np.isfinite(float(new_loss)) and float(new_loss) < float(loss)
    assert _routes(new_state.opt_state) == expected


def test_linen_checkpoint_round_trip():
    """msgpack bytes of a TrainState restore it exactly; training resumes bitwise."""
    tokens, labels = _data()
    dims = root_optax.matrix_dimension_numbers(["embed"])
    tx = root_optax.root(LR, weight_dimension_numbers=dims)
    state = _linen_state(tx)
    for _ in range(3):
        state, _ = _linen_step(state, tokens, labels)
    blob = serialization.to_bytes(state)

    uninterrupted = state
    for _ in range(3):
        uninterrupted, _ = _linen_step(uninterrupted, tokens, labels)

    template = _linen_state(tx)  # fresh: different params and zero moments
    restored = serialization.from_bytes(template, blob)
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(state.opt_state)
    jax.tree.map(np.testing.assert_array_equal, restored.opt_state, state.opt_state)
    assert _routes(restored.opt_state) == _routes(state.opt_state)
    for _ in range(3):
        restored, _ = _linen_step(restored, tokens, labels)
    assert int(restored.step) == int(uninterrupted.step) == 6
    jax.tree.map(np.testing.assert_array_equal, restored.params, uninterrupted.params)
    jax.tree.map(
        np.testing.assert_array_equal, restored.opt_state, uninterrupted.opt_state
    )


# ---------------------------------------------------------------------------
# NNX: nnx.Optimizer.
# ---------------------------------------------------------------------------


class NnxNet(nnx.Module):
    """The Linen model's twin in NNX."""

    def __init__(self, rngs):
        self.embed = nnx.Embed(VOCAB, WIDTH, rngs=rngs)
        self.hidden = nnx.Linear(SEQ * WIDTH, HIDDEN, rngs=rngs)
        self.norm = nnx.LayerNorm(HIDDEN, rngs=rngs)
        self.head = nnx.Linear(HIDDEN, CLASSES, rngs=rngs)

    def __call__(self, tokens):
        h = self.embed(tokens)
        h = h.reshape((h.shape[0], SEQ * WIDTH))
        h = self.norm(jax.nn.gelu(self.hidden(h)))
        return self.head(h)


@nnx.jit
def _nnx_step(model, optimizer, tokens, labels):
    loss, grads = nnx.value_and_grad(lambda m: _xent(m(tokens), labels))(model)
    optimizer.update(model, grads)
    return loss


def _nnx_setup(seed=1, **root_kwargs):
    model = NnxNet(nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, root_optax.root(LR, **root_kwargs), wrt=nnx.Param)
    return model, optimizer


def test_nnx_optimizer_trains_and_routes_by_rank():
    model, optimizer = _nnx_setup()
    # The same routing as Linen: NNX Param leaves are seen by their rank.
    assert _routes(optimizer.opt_state) == LINEN_DEFAULT_ROUTES
    tokens, labels = _data()
    losses = [float(_nnx_step(model, optimizer, tokens, labels)) for _ in range(30)]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses
    assert int(optimizer.step[...]) == 30
    assert _routes(optimizer.opt_state) == LINEN_DEFAULT_ROUTES


def test_nnx_routing_by_path():
    dims = root_optax.matrix_dimension_numbers(["embed"])
    model, optimizer = _nnx_setup(weight_dimension_numbers=dims)
    expected = {**LINEN_DEFAULT_ROUTES, "embed/embedding": "adamw"}
    assert _routes(optimizer.opt_state) == expected
    tokens, labels = _data()
    before = np.asarray(model.embed.embedding[...])
    losses = [float(_nnx_step(model, optimizer, tokens, labels)) for _ in range(3)]
    assert losses[-1] < losses[0], losses
    assert _routes(optimizer.opt_state) == expected
    # The embedding moved by AdamW: its first moments live in the AdamW branch.
    assert not np.array_equal(before, model.embed.embedding[...])
    adam_mu = optax.tree.get(optimizer.opt_state, "adam").mu
    assert np.abs(adam_mu["embed"]["embedding"][...]).max() > 0


def test_nnx_routing_by_path_anchored_regex():
    """A regex for the documented path form ("['embed']['embedding']") must work."""
    dims = root_optax.matrix_dimension_numbers([r"\['embedding'\]$"])
    model, optimizer = _nnx_setup(weight_dimension_numbers=dims)
    tokens, labels = _data()
    loss = _nnx_step(model, optimizer, tokens, labels)
    assert np.isfinite(float(loss))
    assert _routes(optimizer.opt_state) == {
        **LINEN_DEFAULT_ROUTES,
        "embed/embedding": "adamw",
    }


def test_nnx_checkpoint_round_trip():
    """nnx.state -> pure dict -> msgpack -> nnx.update resumes training bitwise."""
    dims = root_optax.matrix_dimension_numbers(["embed"])
    tokens, labels = _data()
    model, optimizer = _nnx_setup(weight_dimension_numbers=dims)
    for _ in range(3):
        _nnx_step(model, optimizer, tokens, labels)
    # to_bytes, not msgpack_serialize: the pure dict holds optax.MaskedNode
    # leaves, which to_state_dict turns into {} (raw msgpack rejects them).
    blob = serialization.to_bytes(nnx.to_pure_dict(nnx.state((model, optimizer))))
    for _ in range(3):  # the uninterrupted run
        _nnx_step(model, optimizer, tokens, labels)

    model2, optimizer2 = _nnx_setup(seed=7, weight_dimension_numbers=dims)
    saved = nnx.state((model2, optimizer2))
    nnx.replace_by_pure_dict(
        saved, serialization.from_bytes(nnx.to_pure_dict(saved), blob)
    )
    nnx.update((model2, optimizer2), saved)
    assert int(optimizer2.step[...]) == 3
    assert _routes(optimizer2.opt_state) == _routes(optimizer.opt_state)
    for _ in range(3):
        _nnx_step(model2, optimizer2, tokens, labels)

    assert int(optimizer2.step[...]) == 6
    jax.tree.map(
        np.testing.assert_array_equal,
        nnx.to_pure_dict(nnx.state(model2, nnx.Param)),
        nnx.to_pure_dict(nnx.state(model, nnx.Param)),
    )
    jax.tree.map(
        np.testing.assert_array_equal,
        nnx.to_pure_dict(nnx.state(optimizer2)),
        nnx.to_pure_dict(nnx.state(optimizer)),
    )


# ---------------------------------------------------------------------------
# NNX: a stack of layers built with nnx.vmap (scan-over-layers style).
# ---------------------------------------------------------------------------

LAYERS, FAN_IN, FAN_OUT = 3, 6, 5


class Stack(nnx.Module):
    """LAYERS Linear layers with kernel (LAYERS, 6, 5) and bias (LAYERS, 5)."""

    def __init__(self, rngs):
        @nnx.split_rngs(splits=LAYERS)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return nnx.Linear(FAN_IN, FAN_OUT, rngs=rngs)

        self.layers = make(rngs)

    def __call__(self, x):
        # Every layer reads the same input; the outputs are summed.
        y = jnp.einsum("bi,lio->lbo", x, self.layers.kernel[...])
        return (y + self.layers.bias[...][:, None, :]).sum(0)


def test_nnx_stacked_layers_orthogonalized_per_slice():
    model = Stack(nnx.Rngs(0))
    assert model.layers.kernel.shape == (LAYERS, FAN_IN, FAN_OUT)
    # A stacked bias is rank 2 like a matrix: it must be routed by name.
    dims = root_optax.matrix_dimension_numbers(["bias"], stacked=True)
    tx = root_optax.root(LR, weight_dimension_numbers=dims)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    assert _routes(optimizer.opt_state) == {
        "layers/kernel": "root",
        "layers/bias": "adamw",
    }
    # Without stacked=True the rank-3 kernel is not a matrix: AdamW.
    flat = nnx.Optimizer(
        model,
        root_optax.root(
            LR, weight_dimension_numbers=root_optax.matrix_dimension_numbers(["bias"])
        ),
        wrt=nnx.Param,
    )
    assert _routes(flat.opt_state)["layers/kernel"] == "adamw"

    x = jax.random.normal(jax.random.key(1), (16, FAN_IN))
    y = jax.random.normal(jax.random.key(2), (16, FAN_OUT))

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        updates = optimizer.update(model, grads)
        return grads["layers"]["kernel"][...], updates["layers"]["kernel"]

    kernel0 = np.asarray(model.layers.kernel[...])
    steps = [step(model, optimizer) for _ in range(2)]  # two: momentum matters

    # Each slice, alone, through root() with default routing (a plain matrix).
    solo_tx = root_optax.root(LR)
    for i in range(LAYERS):
        params = {"w": jnp.asarray(kernel0[i])}
        solo_state = solo_tx.init(params)
        for grad, update in steps:
            solo, solo_state = solo_tx.update({"w": grad[i]}, solo_state, params)
            np.testing.assert_allclose(update[i], solo["w"], rtol=1e-5, atol=1e-7)
            params = optax.apply_updates(params, solo)
        np.testing.assert_allclose(
            model.layers.kernel[...][i], params["w"], rtol=1e-5, atol=1e-7
        )


# ---------------------------------------------------------------------------
# Routing of the layouts users train: scan over layers (Linen nn.scan, NNX
# nnx.vmap), plain models and a CNN, as root_optax.routing_table shows it and
# as root()'s state holds it.
# ---------------------------------------------------------------------------

DEPTH, D = 4, 8
SCANNED = root_optax.matrix_dimension_numbers(["embed", "head"], stacked="layers")


def _table_routes(table):
    """{'a/b': branch} from a routing table (the names _routes uses)."""
    names = lambda path: "/".join(part for part in path[2:-2].split("']['"))
    return {names(row.path): row.branch for row in table}


class LinenBlock(nn.Module):
    @nn.compact
    def __call__(self, h, _):
        h = h + nn.Dense(D, name="mlp")(nn.LayerNorm(name="norm")(h))
        return h, None


class LinenScanned(nn.Module):
    """Embed -> nn.scan over DEPTH blocks (params stacked on axis 0) -> head."""

    @nn.compact
    def __call__(self, tokens):
        h = nn.Embed(VOCAB, D, name="embed")(tokens)
        scan = nn.scan(
            LinenBlock,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=DEPTH,
        )
        h, _ = scan(name="layers")(h, None)
        return nn.Dense(CLASSES, name="head")(h.mean(axis=1))


class NnxBlock(nnx.Module):
    def __init__(self, rngs):
        self.norm = nnx.LayerNorm(D, rngs=rngs)
        self.mlp = nnx.Linear(D, D, rngs=rngs)

    def __call__(self, h):
        return h + self.mlp(self.norm(h))


class NnxScanned(nnx.Module):
    """The official NNX scan-over-layers pattern: nnx.vmap builds, nnx.scan runs."""

    def __init__(self, rngs):
        self.embed = nnx.Embed(VOCAB, D, rngs=rngs)

        @nnx.split_rngs(splits=DEPTH)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return NnxBlock(rngs)

        self.layers = make(rngs)
        self.head = nnx.Linear(D, CLASSES, rngs=rngs)

    def __call__(self, tokens):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def run(h, block):
            return block(h)

        return self.head(run(self.embed(tokens), self.layers).mean(axis=1))


class LinenCnn(nn.Module):
    @nn.compact
    def __call__(self, images):
        h = nn.relu(nn.Conv(6, (3, 3), name="conv")(images))
        return nn.Dense(CLASSES, name="head")(h.mean(axis=(1, 2)))


SCANNED_ROUTES = {
    "embed/embedding": "adamw",
    "layers/mlp/kernel": "root",
    "layers/mlp/bias": "adamw",
    "layers/norm/scale": "adamw",
    "layers/norm/bias": "adamw",
    "head/kernel": "adamw",
    "head/bias": "adamw",
}


def _linen_scanned_params():
    tokens, _ = _data()
    return LinenScanned().init(jax.random.key(0), tokens)["params"]


def test_linen_scan_routes_stacked_kernels_to_root_and_stacked_vectors_to_adamw():
    params = _linen_scanned_params()
    assert params["layers"]["mlp"]["kernel"].shape == (DEPTH, D, D)
    assert params["layers"]["mlp"]["bias"].shape == (DEPTH, D)
    table = root_optax.routing_table(params, SCANNED)
    assert _table_routes(table) == SCANNED_ROUTES
    [kernel] = [
        row for row in table if row.path.endswith("['kernel']") and "mlp" in row.path
    ]
    assert (kernel.matrix_shape, kernel.batch) == ((D, D), DEPTH)
    assert kernel.coefficients.startswith("root table")
    # root()'s state agrees with the table, and one step trains.
    state = train_state.TrainState.create(
        apply_fn=LinenScanned().apply,
        params=params,
        tx=root_optax.root(LR, weight_dimension_numbers=SCANNED),
    )
    assert _routes(state.opt_state) == SCANNED_ROUTES
    tokens, labels = _data()
    state, loss = _linen_step(state, tokens, labels)
    state, new_loss = _linen_step(state, tokens, labels)
    assert float(new_loss) < float(loss)


def test_default_routing_of_a_stacked_model_warns():
    """By default exactly the 2-D leaves are matrices: in a stacked model that
    sends stacked kernels to AdamW and stacked biases to Newton–Schulz."""
    params = _linen_scanned_params()
    table = root_optax.routing_table(params)
    assert _table_routes(table)["layers/mlp/kernel"] == "adamw"
    assert _table_routes(table)["layers/mlp/bias"] == "root"
    with pytest.warns(UserWarning, match=r"stacked=.*routing_table"):
        root_optax.root(LR).init(params)


def test_nnx_vmap_scan_routes_like_linen_scan():
    model = NnxScanned(nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    assert _table_routes(root_optax.routing_table(params, SCANNED)) == SCANNED_ROUTES
    optimizer = nnx.Optimizer(
        model, root_optax.root(LR, weight_dimension_numbers=SCANNED), wrt=nnx.Param
    )
    assert _routes(optimizer.opt_state) == SCANNED_ROUTES
    tokens, labels = _data()
    losses = [float(_nnx_step(model, optimizer, tokens, labels)) for _ in range(3)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.parametrize("flavour", ["linen", "nnx"])
def test_plain_models_route_the_same_with_the_scan_recipe(flavour):
    """The scan recipe on an unstacked model: nothing matches "layers", so each
    leaf keeps its rank (2-D kernels are matrices), names route the rest."""
    if flavour == "linen":
        tokens, _ = _data()
        params = LinenNet().init(jax.random.key(1), tokens)["params"]
    else:
        params = nnx.state(NnxNet(nnx.Rngs(1)), nnx.Param)
    assert _table_routes(root_optax.routing_table(params, SCANNED)) == {
        **LINEN_DEFAULT_ROUTES,
        "embed/embedding": "adamw",
        "head/kernel": "adamw",
    }


def test_cnn_kernels_are_not_split_into_window_matrices():
    images = jnp.ones((2, 8, 8, 3))
    params = LinenCnn().init(jax.random.key(0), images)["params"]
    assert params["conv"]["kernel"].shape == (3, 3, 3, 6)
    for stacked in (False, True):
        dims = root_optax.matrix_dimension_numbers(["head"], stacked=stacked)
        rows = {r.path: r for r in root_optax.routing_table(params, dims)}
        assert rows["['conv']['kernel']"].branch == "adamw"
    dims = root_optax.matrix_dimension_numbers(["head"], conv="matrix")
    rows = {r.path: r for r in root_optax.routing_table(params, dims)}
    kernel = rows["['conv']['kernel']"]
    assert (kernel.branch, kernel.matrix_shape, kernel.batch) == ("root", (27, 6), 1)
    assert rows["['conv']['bias']"].branch == "adamw"
    # The flattened kernel is one matrix: its update is orthogonal as (27, 6).
    tx = root_optax.root(LR, weight_decay=0.0, weight_dimension_numbers=dims)
    grads = jax.tree.map(
        lambda x: jax.random.normal(jax.random.key(3), x.shape), params
    )
    updates, _ = tx.update(grads, tx.init(params), params)
    flat = np.asarray(updates["conv"]["kernel"]).reshape(27, 6)
    singular = np.linalg.svd(flat, compute_uv=False)
    assert np.ptp(singular) < 0.5 * singular.mean()
    with pytest.warns(UserWarning, match="conv='matrix'"):
        root_optax.root(LR).init(params)
