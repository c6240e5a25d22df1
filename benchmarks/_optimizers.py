"""The optimizers the demo-model benchmarks compare: the demo's three and ROOT ablations.

Every variant is built from a :class:`root_optax.demo.Config` (its schedule,
peak learning rates ``lr_root``/``lr_muon``/``lr_adamw``, weight decay and
parameter routing), so a learning-rate sweep is a ``dataclasses.replace`` of
the config.
"""

from __future__ import annotations

from collections.abc import Sequence

import _common  # noqa: F401  (first: puts the checkout's root_optax on sys.path)
import jax
import jax.numpy as jnp
import optax

import root_optax
from root_optax import demo

OPTIMIZERS = {
    "root": "ROOT",
    "root_noclip": "ROOT (no clip)",
    "root_muon_ns": "ROOT (Muon NS coeffs)",
    "muon": "Muon",
    "adamw": "AdamW",
    "muon_root_recipe": "Muon (ROOT's recipe)",
}
"""Display name of each variant."""

OPTIMIZER_DETAILS = {
    "root": "root_optax.root(lr_root schedule), defaults (clip_quantile=0.9, "
    "ns_coeffs='root', skip_nonfinite=True)",
    "root_noclip": "as ROOT with clip_quantile=None (no robust clipping)",
    "root_muon_ns": "as ROOT with ns_coeffs='muon' (Muon's fixed quintic "
    "coefficients for every shape)",
    "muon": "optax.contrib.muon(lr_muon schedule), its Adam branch at lr_adamw "
    "(exactly the demo's)",
    "adamw": "optax.adamw(lr_adamw schedule), b1=0.9, b2=0.95 (exactly the demo's)",
    "muon_root_recipe": "optax.contrib.muon(lr_root schedule) in ROOT's recipe: "
    "fed ROOT's undampened Nesterov momentum (root_optax.momentum, beta=0.95; "
    "muon's own beta=0, nesterov=False), ROOT's shape scale (consistent_rms=0.2, "
    "i.e. 0.2*sqrt(max(m, n))), its Adam branch plain AdamW (b2=0.95) at the same "
    "learning rate and decay; equal to ROOT with clip_quantile=None and "
    "ns_coeffs='muon' up to rounding (tested)",
}
"""What each variant is, for the reports."""

ABLATIONS = {
    "root_noclip": {"clip_quantile": None},
    "root_muon_ns": {"ns_coeffs": "muon"},
}
"""The ``root_optax.root`` arguments each ROOT ablation changes."""


def muon_with_root_recipe(cfg: demo.Config) -> optax.GradientTransformation:
    """``optax.contrib.muon`` in ROOT's recipe: only ROOT's mechanisms differ.

    ROOT's undampened Nesterov momentum (:func:`root_optax.momentum`) feeds
    ``optax.contrib.muon`` with ``beta=0, nesterov=False`` (so Muon adds no
    momentum of its own and its Adam branch is plain AdamW, as ROOT's), its
    shape scale is ROOT's (``consistent_rms=0.2``: ``0.2 sqrt(max(m, n))``),
    and its Adam branch shares ROOT's learning rate and decay. (Muon's own
    ``nesterov=True`` would also make its Adam branch NAdam, and its momentum
    is bias-corrected.) Up to rounding this is
    ``root(clip_quantile=None, ns_coeffs="muon")``.
    """
    dims = root_optax.matrix_dimension_numbers(demo.ADAMW_PARAMS)
    is_matrix = lambda params: jax.tree.map(
        lambda d: d is not None,
        dims(params),
        is_leaf=lambda d: (
            d is None or isinstance(d, optax.contrib.MuonDimensionNumbers)
        ),
    )
    return optax.chain(
        optax.masked(root_optax.momentum(0.95, nesterov=True), is_matrix),
        optax.contrib.muon(
            demo.schedule(cfg.lr_root, cfg.steps, cfg.warmup_fraction),
            beta=0.0,
            nesterov=False,
            consistent_rms=0.2,
            weight_decay=cfg.weight_decay,
            adam_b1=0.9,
            adam_b2=0.95,
            adam_weight_decay=cfg.weight_decay,
            muon_weight_dimension_numbers=dims,
        ),
    )


def make_optimizer(name: str, cfg: demo.Config) -> optax.GradientTransformation:
    """``name`` with ``cfg``'s schedule, learning rates, weight decay, routing."""
    if name in demo.OPTIMIZERS:
        return demo.make_optimizer(name, cfg)
    if name == "muon_root_recipe":
        return muon_with_root_recipe(cfg)
    if name not in ABLATIONS:
        raise ValueError(
            f"make_optimizer(name=...) got unknown optimizer {name!r}; expected one "
            f"of {tuple(OPTIMIZERS)}."
        )
    return root_optax.root(
        demo.schedule(cfg.lr_root, cfg.steps, cfg.warmup_fraction),
        weight_decay=cfg.weight_decay,
        weight_dimension_numbers=root_optax.matrix_dimension_numbers(demo.ADAMW_PARAMS),
        **ABLATIONS[name],
    )


def learning_rate(name: str, cfg: demo.Config) -> dict[str, float]:
    """Peak learning rates of ``name`` under ``cfg``."""
    if name == "muon":
        return {"matrices": cfg.lr_muon, "adam_branch": cfg.lr_adamw}
    if name == "adamw":
        return {"all": cfg.lr_adamw}
    return {"all": cfg.lr_root}


SWEPT_LR = {
    "root": "lr_root",
    "root_noclip": "lr_root",
    "root_muon_ns": "lr_root",
    "muon_root_recipe": "lr_root",
    "muon": "lr_muon",
    "adamw": "lr_adamw",
}
"""The config field a learning-rate sweep of each variant changes (Muon as
shipped keeps its Adam branch at ``lr_adamw``)."""


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
