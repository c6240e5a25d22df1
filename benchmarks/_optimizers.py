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
}
"""What each variant is, for the reports."""

ABLATIONS = {
    "root_noclip": {"clip_quantile": None},
    "root_muon_ns": {"ns_coeffs": "muon"},
}
"""The ``root_optax.root`` arguments each ROOT ablation changes."""


def make_optimizer(name: str, cfg: demo.Config) -> optax.GradientTransformation:
    """``name`` with ``cfg``'s schedule, learning rates, weight decay, routing."""
    if name in demo.OPTIMIZERS:
        return demo.make_optimizer(name, cfg)
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
