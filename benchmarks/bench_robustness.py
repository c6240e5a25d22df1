"""Does ROOT train more robustly than Muon and AdamW under gradient and label noise?

The paper's robustness experiment at small scale: the demo's byte-level NNX
transformer (``root_optax.demo``) on the Python standard-library source, trained
from the same initialisation on the same batches by ROOT, two ROOT ablations,
``optax.contrib.muon`` and ``optax.adamw``, under four conditions:

* ``clean``: the demo's training.
* ``outliers``: on a fraction of steps a few gradient entries of every
  orthogonalized matrix are multiplied by a large factor (sparse outliers).
* ``heavy_tail``: every step, Student-t noise (infinite variance) scaled by each
  matrix's gradient RMS is added to that matrix's gradient.
* ``label_noise``: a fraction of the training target bytes are replaced by
  random bytes (validation stays clean).

The noise is drawn from ``(seed, step, leaf)`` only, so every optimizer gets the
same outlier positions and the same noise draws, and is injected into the
gradients before ``tx.update``. Each (condition, optimizer) is run for several
seeds (seed = model init, data order and noise). Reports final validation and
train loss (bits per byte), their spread, divergences and steps skipped by
ROOT's non-finite guard; writes ``benchmarks/results/bench_robustness.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import _common  # first: puts the checkout's root_optax on sys.path
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from optax.contrib import MuonDimensionNumbers

import root_optax
from root_optax.demo import _data, _model, _train

BITS = 1 / math.log(2)

OPTIMIZERS = {
    "root": "ROOT",
    "root_noclip": "ROOT (no clip)",
    "root_muon_ns": "ROOT (Muon NS coeffs)",
    "muon": "Muon",
    "adamw": "AdamW",
}
OPTIMIZER_DETAILS = {
    "root": "root_optax.root(lr_root schedule), defaults (clip_quantile=0.9, "
    "ns_coeffs='root', skip_nonfinite=True)",
    "root_noclip": "as ROOT with clip_quantile=None (no robust clipping)",
    "root_muon_ns": "as ROOT with ns_coeffs='muon' (Muon's fixed quintic "
    "coefficients for every shape)",
    "muon": "optax.contrib.muon(lr_muon schedule), its Adam branch at lr_adamw "
    "(exactly the demo's)",
    "adamw": "optax.adamw(lr_adamw schedule), b1=0.9, b2=0.95 (exactly the demo's)",
}
CONDITIONS = ("clean", "outliers", "heavy_tail", "label_noise")


@dataclasses.dataclass(frozen=True)
class Noise:
    """The corruptions (all conditions' settings; each condition uses its own)."""

    outlier_step_fraction: float = 0.1
    outlier_entry_fraction: float = 1e-3
    outlier_factor: float = 1000.0
    t_df: float = 1.5
    t_scale: float = 1.0
    label_fraction: float = 0.2


@dataclasses.dataclass(frozen=True)
class Setup:
    """Model, data and schedule (the demo's, at a smaller width) and the runs."""

    steps: int = 250
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    seq_len: int = 64
    batch_size: int = 16
    seeds: tuple[int, ...] = (0, 1, 2)
    conditions: tuple[str, ...] = CONDITIONS
    optimizers: tuple[str, ...] = tuple(OPTIMIZERS)
    eval_every: int = 50
    eval_batches: int = 8
    noise: Noise = Noise()

    def demo_config(self, seed: int = 0) -> _train.Config:
        """The demo's :class:`~root_optax.demo._train.Config` for this setup."""
        return _train.Config(
            steps=self.steps,
            d_model=self.d_model,
            layers=self.layers,
            heads=self.heads,
            seq_len=self.seq_len,
            batch_size=self.batch_size,
            seed=seed,
            progress=False,
        )


QUICK = {
    "steps": 40,
    "d_model": 32,
    "layers": 1,
    "heads": 2,
    "seq_len": 32,
    "batch_size": 8,
    "seeds": (0, 1),
    "eval_every": 20,
    "eval_batches": 2,
}


# --------------------------------------------------------------------------- noise


def outlier_count(size: int, fraction: float) -> int:
    """Entries of a ``size``-entry matrix that an outlier step corrupts (>= 1)."""
    return max(1, round(fraction * size))


def outlier_schedule(steps: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean ``(steps,)``: exactly ``round(fraction * steps)`` outlier steps.

    Drawn from ``seed`` alone (uniformly without replacement), so every optimizer
    of a seed has the same outlier steps.
    """
    flags = np.zeros(steps, dtype=bool)
    count = min(steps, round(fraction * steps))
    rng = np.random.default_rng([seed, 1])
    flags[rng.choice(steps, size=count, replace=False)] = True
    return flags


def corrupt_targets(
    targets: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Replace ``round(fraction * B * L)`` target bytes of every batch at random.

    ``targets`` is ``(steps, B, L)``; in each step's batch exactly that many
    positions, uniformly without replacement, get a uniformly random byte (equal
    to the true one 1/256 of the time). Returns the noisy targets and the mask of
    replaced positions. Inputs and validation data are not touched.
    """
    steps, batch, length = targets.shape
    count = round(fraction * batch * length)
    rng = np.random.default_rng([seed, 2])
    noisy = targets.copy().reshape(steps, batch * length)
    mask = np.zeros_like(noisy, dtype=bool)
    for t in range(steps):
        where = rng.choice(batch * length, size=count, replace=False)
        noisy[t, where] = rng.integers(0, _data.VOCAB_SIZE, size=count)
        mask[t, where] = True
    return noisy.reshape(targets.shape), mask.reshape(targets.shape)


def matrix_leaves(params: Any) -> tuple[bool, ...]:
    """Per leaf of ``params`` (in ``jax.tree.leaves`` order): is it a matrix that
    ROOT and Muon orthogonalize (attention and MLP kernels)? Noise goes there."""
    dims = root_optax.matrix_dimension_numbers(_model.ADAMW_PARAMS)(params)
    specs = jax.tree.leaves(
        dims, is_leaf=lambda x: x is None or isinstance(x, MuonDimensionNumbers)
    )
    return tuple(spec is not None for spec in specs)


def step_key(seed: int | jax.Array, step: int | jax.Array) -> jax.Array:
    """The noise key of ``(seed, step)``, independent of the optimizer."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), step)


@functools.lru_cache(maxsize=1)
def heavy_tail_draws(seed: int, steps: int, size: int, df: float) -> np.ndarray:
    """I.i.d. Student-t(``df``) draws ``(steps, size)`` float32 from ``seed``.

    Row ``t`` is step ``t``'s noise for all noisy matrices (flattened in leaf
    order); the same for every optimizer. Cached for the latest arguments.
    """
    rng = np.random.default_rng([seed, 3])
    return rng.standard_t(df, size=(steps, size)).astype(np.float32)


def corrupt_gradients(
    grads: Any,
    is_matrix: Sequence[bool],
    key: jax.Array,
    *,
    outlier_on: jax.typing.ArrayLike = False,
    t_scale: jax.typing.ArrayLike = 0.0,
    t_draws: jax.typing.ArrayLike | None = None,
    noise: Noise = Noise(),
) -> Any:
    """The gradients with this step's noise injected into the matrix leaves.

    The draws depend only on ``key``, ``t_draws`` and the leaves' shapes, never
    on the gradient values or the optimizer. If ``outlier_on``,
    ``outlier_count`` entries (uniform, without replacement: the smallest of
    i.i.d. uniform scores) of each matrix are multiplied by
    ``noise.outlier_factor``. If ``t_scale > 0``, ``t_scale * rms(g) * T`` is
    added to each matrix ``g`` (``rms`` of this step's clean gradient of that
    matrix), ``T`` its slice of ``t_draws`` (one flat vector for all matrices in
    leaf order, from :func:`heavy_tail_draws`; JAX's Student-t sampler is
    ~50x slower than NumPy's on CPU). Other leaves are unchanged. Both switches
    may be traced (``lax.cond`` computes only what is on).
    """
    leaves, treedef = jax.tree.flatten(grads)
    if len(leaves) != len(is_matrix):
        raise ValueError(f"{len(leaves)} gradient leaves but {len(is_matrix)} flags.")
    matrices = [i for i, m in enumerate(is_matrix) if m]
    offsets = np.cumsum([0] + [leaves[i].size for i in matrices]).tolist()
    if t_draws is not None and jnp.shape(t_draws) != (offsets[-1],):
        raise ValueError(
            f"t_draws must have shape ({offsets[-1]},), got {jnp.shape(t_draws)}."
        )

    def pieces(draw):
        return {i: draw[offsets[j] : offsets[j + 1]] for j, i in enumerate(matrices)}

    def outliers(gs):
        gs = list(gs)
        scores = pieces(jax.random.uniform(key, (offsets[-1],)))
        for i in matrices:
            g = gs[i]
            count = outlier_count(g.size, noise.outlier_entry_fraction)
            _, where = jax.lax.top_k(-scores[i], count)
            factor = jnp.asarray(noise.outlier_factor, g.dtype)
            gs[i] = g.reshape(-1).at[where].multiply(factor).reshape(g.shape)
        return gs

    def heavy_tail(gs):
        gs = list(gs)
        draws = pieces(jnp.asarray(t_draws))
        for i in matrices:
            g = gs[i]
            rms = jnp.sqrt(jnp.mean(jnp.square(g)))
            t = draws[i].reshape(g.shape).astype(g.dtype)
            gs[i] = g + (jnp.asarray(t_scale, g.dtype) * rms) * t
        return gs

    identity = lambda gs: list(gs)
    if matrices:
        leaves = jax.lax.cond(jnp.asarray(outlier_on), outliers, identity, leaves)
        if t_draws is not None:
            on = jnp.asarray(t_scale) > 0
            leaves = jax.lax.cond(on, heavy_tail, identity, leaves)
    return jax.tree.unflatten(treedef, leaves)


# ----------------------------------------------------------------------- training


def make_optimizer(name: str, setup: Setup) -> optax.GradientTransformation:
    """``name`` with the demo's schedule, learning rates, weight decay, routing."""
    cfg = setup.demo_config()
    if name in ("root", "muon", "adamw"):
        return _train.make_optimizer(name, cfg)
    ablation = {
        "root_noclip": {"clip_quantile": None},
        "root_muon_ns": {"ns_coeffs": "muon"},
    }
    if name not in ablation:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}.")
    return root_optax.root(
        _train.schedule(cfg.lr_root, cfg.steps, cfg.warmup_fraction),
        weight_decay=cfg.weight_decay,
        weight_dimension_numbers=root_optax.matrix_dimension_numbers(
            _model.ADAMW_PARAMS
        ),
        **ablation[name],
    )


def learning_rate(name: str) -> dict[str, float]:
    """Peak learning rates of ``name`` (the demo's tuned ones)."""
    lr = _train.DEFAULT_LR
    if name == "muon":
        return {"matrices": lr["muon"], "adam_branch": lr["adamw"]}
    if name == "adamw":
        return {"all": lr["adamw"]}
    return {"all": lr["root"]}


def cross_entropy(model, inputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-byte cross-entropy (nats); the demo's ``loss_fn`` with the
    targets given separately so that they can be noisy."""
    logits = model(inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


class Trainer:
    """Jitted train and eval steps for one setup, compiled once per optimizer."""

    def __init__(self, setup: Setup):
        self.setup = setup
        model = _train.build_model(setup.demo_config())
        self.graphdef, state = nnx.split(model, nnx.Param)
        params = nnx.to_pure_dict(state)
        self.is_matrix = matrix_leaves(params)
        self.num_params = sum(x.size for x in jax.tree.leaves(params))
        self.matrix_shapes = [
            list(x.shape) for x, m in zip(jax.tree.leaves(params), self.is_matrix) if m
        ]
        self.noise_size = sum(math.prod(s) for s in self.matrix_shapes)
        self.optimizers: dict[str, optax.GradientTransformation] = {}
        self.steps: dict[str, Any] = {}

        @jax.jit
        def eval_loss(params, windows):
            model = nnx.merge(self.graphdef, params)
            return jax.lax.map(functools.partial(_model.loss_fn, model), windows).mean()

        self.eval_loss = eval_loss

    def init_params(self, seed: int) -> dict:
        """The model's parameters (a pure dict) initialised from ``seed``."""
        model = _train.build_model(self.setup.demo_config(seed))
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))

    def optimizer(self, name: str) -> optax.GradientTransformation:
        if name not in self.optimizers:
            self.optimizers[name] = make_optimizer(name, self.setup)
        return self.optimizers[name]

    def train_step(self, name: str):
        """``step(params, opt_state, inputs, targets, seed, t, outlier_on,
        t_scale, t_draws) -> (params, opt_state, loss)``: loss and gradients on
        the batch, noise injected into the gradients (:func:`corrupt_gradients`),
        then ``name``'s update."""
        if name in self.steps:
            return self.steps[name]
        tx = self.optimizer(name)
        graphdef, is_matrix, noise = self.graphdef, self.is_matrix, self.setup.noise

        @functools.partial(jax.jit, donate_argnums=(0, 1))
        def step(
            params, opt_state, inputs, targets, seed, t, outlier_on, t_scale, t_draws
        ):
            loss, grads = jax.value_and_grad(
                lambda p: cross_entropy(nnx.merge(graphdef, p), inputs, targets)
            )(params)
            grads = corrupt_gradients(
                grads,
                is_matrix,
                step_key(seed, t),
                outlier_on=outlier_on,
                t_scale=t_scale,
                t_draws=t_draws,
                noise=noise,
            )
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        self.steps[name] = step
        return step


def condition_data(
    setup: Setup,
    condition: str,
    train_windows: np.ndarray,
    seed: int,
    noise_size: int,
):
    """``(inputs, targets, outlier_flags, t_scale, t_draws)`` of ``condition``
    for ``seed``; ``t_draws`` is ``None`` unless the condition is heavy_tail."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; expected {CONDITIONS}.")
    noise = setup.noise
    inputs, targets = train_windows[..., :-1], train_windows[..., 1:]
    if condition == "label_noise":
        targets, _ = corrupt_targets(targets, noise.label_fraction, seed)
    flags = np.zeros(setup.steps, dtype=bool)
    if condition == "outliers":
        flags = outlier_schedule(setup.steps, noise.outlier_step_fraction, seed)
    t_scale, t_draws = 0.0, None
    if condition == "heavy_tail":
        t_scale = noise.t_scale
        t_draws = heavy_tail_draws(seed, setup.steps, noise_size, noise.t_df)
    return inputs, targets, flags, t_scale, t_draws


def divergence(train_losses, eval_losses) -> tuple[bool, int | None, str]:
    """``(diverged, first non-finite train step or None, reason)``.

    A run diverged if any train or validation loss is non-finite, or if its
    final validation loss is above its initial (untrained) validation loss.
    """
    train = np.asarray(train_losses, dtype=float)
    bad = np.flatnonzero(~np.isfinite(train))
    first = int(bad[0]) + 1 if bad.size else None
    if first is not None or not np.all(np.isfinite(eval_losses)):
        return True, first, "non-finite loss"
    if eval_losses[-1] > eval_losses[0]:
        return True, None, "final validation loss above initial"
    return False, None, ""


def run_one(
    trainer: Trainer,
    name: str,
    condition: str,
    seed: int,
    train_windows: np.ndarray,
    eval_windows: jax.Array,
) -> dict[str, Any]:
    """Train optimizer ``name`` under ``condition`` from ``seed``; one result row."""
    setup = trainer.setup
    started = time.perf_counter()
    inputs, targets, flags, t_scale, t_draws = condition_data(
        setup, condition, train_windows, seed, trainer.noise_size
    )
    tx = trainer.optimizer(name)
    step = trainer.train_step(name)
    params = trainer.init_params(seed)
    opt_state = tx.init(params)
    eval_steps = [0]
    eval_losses = [float(trainer.eval_loss(params, eval_windows))]
    losses = []
    t_scale = jnp.float32(t_scale)
    no_draws = jnp.zeros(trainer.noise_size, jnp.float32)
    for t in range(setup.steps):
        params, opt_state, loss = step(
            params,
            opt_state,
            inputs[t],
            targets[t],
            jnp.int32(seed),
            jnp.int32(t),
            jnp.bool_(flags[t]),
            t_scale,
            no_draws if t_draws is None else t_draws[t],
        )
        losses.append(loss)
        done = t + 1
        if done % setup.eval_every == 0 or done == setup.steps:
            eval_steps.append(done)
            eval_losses.append(float(trainer.eval_loss(params, eval_windows)))
    train = [float(x) for x in losses]
    skipped = None
    if isinstance(opt_state, root_optax.SkipNonfiniteState):
        skipped = int(opt_state.skipped)
    diverged, first_bad, reason = divergence(train, eval_losses)
    window = max(1, min(10, setup.steps // 10))
    return {
        "condition": condition,
        "optimizer": name,
        "seed": seed,
        "final_valid_bpb": eval_losses[-1] * BITS,
        "final_train_bpb": float(np.mean(train[-window:])) * BITS,
        "initial_valid_bpb": eval_losses[0] * BITS,
        "diverged": diverged,
        "divergence_reason": reason,
        "first_nonfinite_step": first_bad,
        "skipped_steps": skipped,
        "outlier_steps": int(flags.sum()),
        "wall_s": time.perf_counter() - started,
        "train_loss_window": window,
        "eval_steps": eval_steps,
        "eval_bpb": [x * BITS for x in eval_losses],
        "train_bpb": [x * BITS for x in train],
    }


def identical_coefficients(shapes: Sequence[Sequence[int]]) -> bool:
    """Do ``ns_coeffs="root"`` and ``"muon"`` orthogonalize every matrix shape of
    ``shapes`` bit-identically? Then the ``root_muon_ns`` ablation is ROOT itself.
    """
    for shape in shapes:
        x = jax.random.normal(jax.random.key(0), tuple(shape))
        ours = root_optax.orthogonalize(x, ns_coeffs="root")
        if not bool(jnp.array_equal(ours, root_optax.orthogonalize(x, "muon"))):
            return False
    return True


def load_data(setup: Setup):
    """The corpus, per-seed training windows and the clean validation windows."""
    corpus = _data.load_corpus()
    windows = {}
    for seed in setup.seeds:
        starts = _data.train_batches(
            corpus.train,
            steps=setup.steps,
            batch_size=setup.batch_size,
            seq_len=setup.seq_len,
            seed=seed,
        )
        windows[seed] = _data.gather(corpus.train, starts, setup.seq_len)
    eval_starts = _data.eval_batches(
        corpus.valid,
        num_batches=setup.eval_batches,
        batch_size=setup.batch_size,
        seq_len=setup.seq_len,
    )
    eval_windows = jax.device_put(
        _data.gather(corpus.valid, eval_starts, setup.seq_len)
    )
    return corpus, windows, eval_windows


def run_all(setup: Setup, log=print) -> tuple[Trainer, list[dict[str, Any]]]:
    """Every (condition, seed, optimizer) run, in that loop order."""
    trainer = Trainer(setup)
    _, windows, eval_windows = load_data(setup)
    runs = []
    total = len(setup.conditions) * len(setup.seeds) * len(setup.optimizers)
    for condition in setup.conditions:
        for seed in setup.seeds:
            for name in setup.optimizers:
                row = run_one(
                    trainer, name, condition, seed, windows[seed], eval_windows
                )
                runs.append(row)
                if log is not None:
                    skipped = row["skipped_steps"]
                    log(
                        f"[{len(runs):>3}/{total}] {condition:<11} seed {seed} "
                        f"{OPTIMIZERS[name]:<22} valid {row['final_valid_bpb']:.3f} "
                        f"train {row['final_train_bpb']:.3f} bits/byte"
                        + (" DIVERGED" if row["diverged"] else "")
                        + ("" if skipped is None else f", skipped {skipped}")
                        + f" ({row['wall_s']:.1f} s)"
                    )
    return trainer, runs


# ------------------------------------------------------------------------ report


def _spread(values: Sequence[float]) -> dict[str, Any]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {
        "n": len(finite),
        "mean": float(np.mean(finite)),
        "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0,
        "min": float(np.min(finite)),
        "max": float(np.max(finite)),
    }


def summarize(runs: Sequence[dict[str, Any]], setup: Setup) -> list[dict[str, Any]]:
    """One row per (condition, optimizer): spreads over seeds, divergences and
    the per-seed (paired) change of validation loss against ``clean``."""
    by = {(r["condition"], r["optimizer"], r["seed"]): r for r in runs}
    rows = []
    for condition in setup.conditions:
        for name in setup.optimizers:
            group = [by[(condition, name, s)] for s in setup.seeds]
            deltas = []
            if condition != "clean" and "clean" in setup.conditions:
                deltas = [
                    by[(condition, name, s)]["final_valid_bpb"]
                    - by[("clean", name, s)]["final_valid_bpb"]
                    for s in setup.seeds
                ]
            skipped = [r["skipped_steps"] for r in group]
            rows.append(
                {
                    "condition": condition,
                    "optimizer": name,
                    "runs": len(group),
                    "valid_bpb": _spread([r["final_valid_bpb"] for r in group]),
                    "train_bpb": _spread([r["final_train_bpb"] for r in group]),
                    "diverged": sum(r["diverged"] for r in group),
                    "skipped_steps": None if None in skipped else sum(skipped),
                    "valid_delta_vs_clean": _spread(deltas) if deltas else None,
                }
            )
    return rows


def _fmt(spread: dict[str, Any] | None, signed: bool = False) -> str:
    if spread is None:
        return ""
    if not spread["n"]:
        return "n/a"
    sign = "+" if signed else ""
    return f"{spread['mean']:{sign}.3f} ± {spread['std']:.3f}"


def _range(spread: dict[str, Any]) -> str:
    if not spread["n"]:
        return "n/a"
    return f"[{spread['min']:.3f}, {spread['max']:.3f}]"


def results_table(rows: Sequence[dict[str, Any]]) -> str:
    """The full table: one line per (condition, optimizer)."""
    return _common.markdown_table(
        [
            "condition",
            "optimizer",
            "valid bpb mean ± std",
            "valid [min, max]",
            "Δ valid vs clean",
            "train bpb mean ± std",
            "train [min, max]",
            "diverged",
            "skipped",
        ],
        [
            [
                r["condition"],
                OPTIMIZERS[r["optimizer"]],
                _fmt(r["valid_bpb"]),
                _range(r["valid_bpb"]),
                _fmt(r["valid_delta_vs_clean"], signed=True),
                _fmt(r["train_bpb"]),
                _range(r["train_bpb"]),
                f"{r['diverged']}/{r['runs']}",
                "" if r["skipped_steps"] is None else r["skipped_steps"],
            ]
            for r in rows
        ],
    )


def pivot_table(rows: Sequence[dict[str, Any]], setup: Setup) -> str:
    """Final validation loss, optimizers x conditions (mean ± std, diverged)."""
    cell = {(r["condition"], r["optimizer"]): r for r in rows}

    def text(r):
        out = _fmt(r["valid_bpb"])
        return out + (f" ({r['diverged']} div.)" if r["diverged"] else "")

    return _common.markdown_table(
        ["optimizer", *setup.conditions],
        [
            [OPTIMIZERS[name], *(text(cell[(c, name)]) for c in setup.conditions)]
            for name in setup.optimizers
        ],
    )


def setup_text(setup: Setup, trainer: Trainer) -> str:
    """The Markdown description of the experiment."""
    n = setup.noise
    lrs = _train.DEFAULT_LR
    shapes = ", ".join("x".join(map(str, s)) for s in trainer.matrix_shapes)
    counts = sorted(
        {
            (math.prod(s), outlier_count(math.prod(s), n.outlier_entry_fraction))
            for s in trainer.matrix_shapes
        }
    )
    count_text = ", ".join(f"{k} of {size:,}" for size, k in counts)
    seeds = ", ".join(map(str, setup.seeds))
    return "\n".join(
        [
            (
                f"- Model: the demo's byte-level decoder-only NNX transformer, "
                f"{setup.layers} layers, d_model {setup.d_model}, {setup.heads} heads, "
                f"seq_len {setup.seq_len}, {trainer.num_params:,} parameters; corpus: "
                "the demo's (Python standard-library source, last 10% held out)."
            ),
            (
                f"- Training: {setup.steps} steps x batch {setup.batch_size}, the "
                "demo's schedule (10% linear warmup, cosine to peak/10), weight "
                "decay 0.1, "
                f"the demo's tuned peak learning rates (ROOT {lrs['root']:g} for all "
                f"three ROOT variants, Muon {lrs['muon']:g} with its Adam branch at "
                f"{lrs['adamw']:g}, AdamW {lrs['adamw']:g}), the same for every "
                "condition. They were tuned for the demo's d_model 128 and are not "
                "retuned here."
            ),
            (
                f"- Seeds {seeds}: a seed fixes the model initialisation, the batch "
                "order and all noise draws; within a seed every optimizer starts from "
                "the same weights and sees the same batches and the same noise."
            ),
            (
                "- Noise goes into the gradients of the matrices that ROOT and Muon "
                f"orthogonalize ({shapes}) after backprop and before `tx.update`, for "
                "every optimizer. Embeddings, head and norms (AdamW in every "
                "optimizer) get none, so the conditions probe where the optimizers "
                "differ. Draws depend only on (seed, step) and the matrix shapes; "
                "the gradient they act on is each optimizer's own."
            ),
            (
                f"- `outliers`: on exactly {n.outlier_step_fraction:.0%} of the steps "
                f"(drawn per seed), {n.outlier_entry_fraction:.1%} of the entries of "
                f"every matrix ({count_text}; uniform positions, new each step) are "
                f"multiplied by {n.outlier_factor:g}. At this factor the outliers "
                "carry about 99.9% of a matrix's squared Frobenius norm (91% at "
                "100x), so any norm-based normalisation (Newton–Schulz's first step) "
                "is dominated by them, yet they are far fewer than the 10% of entries "
                "ROOT's quantile clip removes: the sparse-outlier regime the paper's "
                "clip is designed for. The outliers also enter the momenta."
            ),
            (
                f"- `heavy_tail`: every step, each matrix gradient `g` gets "
                f"`{n.t_scale:g} * rms(g) * T` added, `T` i.i.d. Student-t with "
                f"{n.t_df:g} degrees of freedom (finite mean, infinite variance; the "
                "median |T| is about 0.87, and the largest of n draws grows like "
                "n^(1/df))."
            ),
            (
                f"- `label_noise`: in every training batch exactly "
                f"{n.label_fraction:.0%} of the target bytes (uniform positions) are "
                "replaced by uniformly random bytes; inputs and the validation set "
                "are clean. The train loss of this condition is measured on the "
                "noisy targets."
            ),
            (
                "- Reported: final validation loss (clean held-out text, "
                f"{setup.eval_batches} batches) and train loss (mean of the last "
                "10 steps' batch losses, measured before the noise is injected), in "
                "bits per byte; mean ± sample std over seeds and [min, max]; "
                "Δ valid vs clean is the per-seed difference to the same optimizer's "
                "clean run (mean ± std). Spreads are over runs with finite losses."
            ),
            (
                "- Diverged: any non-finite train or validation loss, or a final "
                "validation loss above the run's initial one. ROOT's `root()` skips "
                "any step whose gradients hold NaN/Inf (`skip_nonfinite=True`; the "
                "skipped column sums `state.skipped` over seeds); `optax.contrib.muon` "
                "and `optax.adamw` have no such guard, so a NaN gradient poisons "
                "their parameters and every later loss. The noise here is finite, so "
                "NaNs can only come from the training itself."
            ),
        ]
    )


def plot(plt, setup: Setup, rows, runs):
    """Bar chart of final validation loss per condition; train curves below."""
    conditions, names = setup.conditions, setup.optimizers
    fig = plt.figure(figsize=(3.2 * max(3, len(conditions)), 8.0))
    grid = fig.add_gridspec(2, len(conditions), height_ratios=[1.1, 1])
    ax = fig.add_subplot(grid[0, :])
    cell = {(r["condition"], r["optimizer"]): r for r in rows}
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        xs = np.arange(len(conditions)) + (j - (len(names) - 1) / 2) * width
        means = [cell[(c, name)]["valid_bpb"]["mean"] for c in conditions]
        stds = [cell[(c, name)]["valid_bpb"]["std"] for c in conditions]
        means = [np.nan if m is None else m for m in means]
        stds = [0.0 if s is None else s for s in stds]
        ax.bar(
            xs,
            means,
            width,
            yerr=stds,
            capsize=3,
            color=f"C{j}",
            label=OPTIMIZERS[name],
        )
        for x, c in zip(xs, conditions):
            seeds = [
                r["final_valid_bpb"]
                for r in runs
                if r["condition"] == c and r["optimizer"] == name
            ]
            finite = [v for v in seeds if math.isfinite(v)]
            ax.plot([x] * len(finite), finite, "k.", markersize=3)
            diverged = cell[(c, name)]["diverged"]
            if diverged:
                top = max(finite) if finite else ax.get_ylim()[1]
                ax.annotate(
                    f"{diverged} div.",
                    (x, top),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color="red",
                )
    finite_means = [
        r["valid_bpb"]["min"] for r in rows if r["valid_bpb"]["min"] is not None
    ]
    if finite_means:
        ax.set_ylim(max(0.0, min(finite_means) - 0.3), None)
    ax.set_xticks(np.arange(len(conditions)), conditions)
    ax.set_ylabel("final validation loss (bits/byte)")
    ax.set_title(
        f"final validation loss, mean ± std over {len(setup.seeds)} seeds (dots: seeds)"
    )
    ax.legend(ncol=len(names), fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    for i, c in enumerate(conditions):
        axc = fig.add_subplot(grid[1, i])
        for j, name in enumerate(names):
            curves = np.array(
                [
                    r["train_bpb"]
                    for r in runs
                    if r["condition"] == c and r["optimizer"] == name
                ]
            )
            mean = np.mean(curves, axis=0)
            w = max(1, setup.steps // 25)
            smooth = np.convolve(mean, np.ones(w) / w, mode="valid")
            axc.plot(np.arange(w, setup.steps + 1), smooth, color=f"C{j}", linewidth=1)
        axc.set_title(f"{c}: train loss ({w}-step avg)", fontsize=9)
        axc.set_xlabel("step")
        axc.set_ylim(max(0.0, (min(finite_means) if finite_means else 2) - 0.5), 8.5)
        axc.grid(alpha=0.3)
        if i == 0:
            axc.set_ylabel("bits/byte (mean over seeds)")
    fig.suptitle(
        f"Robustness: {setup.layers}-layer d={setup.d_model} byte-level "
        f"transformer, {setup.steps} steps"
    )
    fig.tight_layout()
    return fig


def json_safe(x: Any, digits: int = 5) -> Any:
    """``x`` with floats rounded to ``digits`` and NaN/Inf as ``None`` (JSON
    null), so the file is strict JSON."""
    if isinstance(x, dict):
        return {k: json_safe(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v, digits) for v in x]
    if isinstance(x, float):
        return round(x, digits) if math.isfinite(x) else None
    return x


# -------------------------------------------------------------------------- main


def _choices(text: str, allowed: Sequence[str], flag: str) -> tuple[str, ...]:
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in items if x not in allowed]
    if bad or not items or len(set(items)) != len(items):
        raise SystemExit(
            f"{flag} must be distinct names from {','.join(allowed)}, got {text!r}"
        )
    return items


def parse_args(argv: Sequence[str] | None = None) -> tuple[Setup, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = Setup()
    add = parser.add_argument
    add("--steps", type=int, default=None, help=f"steps per run ({d.steps})")
    add(
        "--seeds",
        default=None,
        help="number of seeds (0..N-1) or a comma-separated list (3)",
    )
    add("--conditions", default=",".join(CONDITIONS), help="subset, in this order")
    add("--optimizers", default=",".join(OPTIMIZERS), help="subset, in this order")
    add("--d-model", type=int, default=None, help=f"model width ({d.d_model})")
    add("--layers", type=int, default=None, help=f"blocks ({d.layers})")
    add("--heads", type=int, default=None, help=f"attention heads ({d.heads})")
    add("--seq-len", type=int, default=None, help=f"bytes per sequence ({d.seq_len})")
    add("--batch-size", type=int, default=None, help=f"batch ({d.batch_size})")
    add("--eval-every", type=int, default=None, help=f"({d.eval_every})")
    add("--eval-batches", type=int, default=None, help=f"({d.eval_batches})")
    n = Noise()
    for field in dataclasses.fields(Noise):
        add(
            f"--{field.name.replace('_', '-')}",
            type=float,
            default=getattr(n, field.name),
            help=f"noise setting ({getattr(n, field.name):g})",
        )
    add(
        "--quick",
        action="store_true",
        help="tiny model, 40 steps, 2 seeds, to check the pipeline; writes no files",
    )
    add(
        "--run-identical",
        action="store_true",
        help="run the root_muon_ns ablation even when its Newton–Schulz "
        "coefficients equal ROOT's for every matrix shape (bit-identical runs)",
    )
    add("--no-plot", action="store_true", help="skip the PNG")
    args = parser.parse_args(argv)

    values = dict(QUICK) if args.quick else {}
    for field in (
        "steps",
        "d_model",
        "layers",
        "heads",
        "seq_len",
        "batch_size",
        "eval_every",
        "eval_batches",
    ):
        if getattr(args, field) is not None:
            if getattr(args, field) < 1:
                parser.error(f"--{field.replace('_', '-')} must be at least 1")
            values[field] = getattr(args, field)
    if args.seeds is not None:
        if "," in args.seeds:
            values["seeds"] = tuple(int(s) for s in args.seeds.split(",") if s)
        else:
            values["seeds"] = tuple(range(int(args.seeds)))
        if not values["seeds"]:
            parser.error("--seeds needs at least one seed")
    values["conditions"] = _choices(args.conditions, CONDITIONS, "--conditions")
    values["optimizers"] = _choices(args.optimizers, tuple(OPTIMIZERS), "--optimizers")
    values["noise"] = Noise(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(Noise)}
    )
    setup = Setup(**values)
    if setup.d_model % setup.heads:
        parser.error(f"--d-model {setup.d_model} must be divisible by --heads")
    return setup, args


def main(argv: Sequence[str] | None = None) -> int:
    setup, args = parse_args(argv)
    started = time.perf_counter()
    env = _common.environment()
    omitted = {}
    if {"root", "root_muon_ns"} <= set(setup.optimizers) and not args.run_identical:
        shapes = Trainer(setup).matrix_shapes
        if identical_coefficients(shapes):
            omitted["root_muon_ns"] = (
                f"not run: ns_coeffs='root' and 'muon' give bit-identical "
                f"Newton–Schulz results for every matrix shape of this model "
                f"({', '.join('x'.join(map(str, s)) for s in shapes)}), so it "
                "would repeat ROOT's runs exactly (--run-identical runs it anyway)"
            )
            print(f"{OPTIMIZERS['root_muon_ns']}: {omitted['root_muon_ns']}.")
            kept = tuple(o for o in setup.optimizers if o != "root_muon_ns")
            setup = dataclasses.replace(setup, optimizers=kept)
    print(
        f"{env['platform']} / {env['device_kind']}, {env['cpu_count']} CPUs; "
        f"{len(setup.conditions)} conditions x {len(setup.optimizers)} optimizers "
        f"x {len(setup.seeds)} seeds, {setup.steps} steps each"
    )
    trainer, runs = run_all(setup)
    rows = summarize(runs, setup)
    wall = time.perf_counter() - started
    table = results_table(rows)
    pivot = pivot_table(rows, setup)
    print()
    print(pivot)
    print()
    print(table)
    print(f"\nTotal wall time {wall:.0f} s")
    if args.quick:
        print("--quick: no files written.")
        return 0
    sections = [
        ("Final validation loss (bits/byte, mean ± std over seeds)", pivot),
        ("All numbers", table),
        ("Setup", setup_text(setup, trainer)),
        ("Wall time", f"{wall:.0f} s for {len(runs)} runs."),
    ]
    if omitted:
        sections.insert(
            2,
            (
                "Omitted",
                "\n".join(f"- {OPTIMIZERS[k]}: {v}." for k, v in omitted.items()),
            ),
        )
    plt = None if args.no_plot else _common.pyplot()
    figure = None if plt is None else plot(plt, setup, rows, runs)
    config = dataclasses.asdict(setup)
    config.update(
        num_params=int(trainer.num_params),
        noise_matrix_shapes=trainer.matrix_shapes,
        learning_rates={name: learning_rate(name) for name in setup.optimizers},
        optimizers={name: OPTIMIZER_DETAILS[name] for name in setup.optimizers},
        omitted_optimizers=omitted,
        schedule="linear warmup 10% then cosine to peak/10 (the demo's)",
        weight_decay=0.1,
    )
    paths = _common.write_results(
        "bench_robustness",
        title="Robustness to gradient outliers, heavy-tailed gradient noise and "
        "label noise: ROOT vs Muon vs AdamW",
        env=env,
        data={
            "config": config,
            "units": "bits per byte (nats / ln 2); null: non-finite",
            "divergence_rule": "any non-finite train/validation loss, or final "
            "validation loss above the run's initial validation loss",
            "summary": json_safe(rows),
            "runs": json_safe(runs),
            "wall_seconds": wall,
        },
        sections=sections,
        figure=figure,
    )
    print("wrote " + ", ".join(str(p.relative_to(_common.REPO_ROOT)) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
