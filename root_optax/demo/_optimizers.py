"""The demo's optimizers: ROOT, Muon and AdamW on one warmup + cosine schedule."""

from __future__ import annotations

import functools

import optax

import root_optax
from root_optax.demo._config import OPTIMIZERS, Config
from root_optax.demo._model import ADAMW_PARAMS


def schedule(peak: float, steps: int, warmup_fraction: float) -> optax.Schedule:
    """Linear warmup to ``peak``, then cosine decay to ``peak / 10`` at ``steps``."""
    warmup = max(1, int(steps * warmup_fraction))
    return optax.warmup_cosine_decay_schedule(
        0.0,
        peak,
        warmup_steps=warmup,
        decay_steps=max(steps, warmup + 1),
        end_value=peak / 10,
    )


def make_optimizer(name: str, cfg: Config) -> optax.GradientTransformation:
    """The optimizer ``name`` with the run's schedule and shared settings.

    All three use decoupled weight decay ``cfg.weight_decay`` and Adam betas
    (0.9, 0.95). ROOT and Muon orthogonalize the attention and MLP kernels and
    send the embeddings, head and norms (:data:`ADAMW_PARAMS`) to their
    AdamW branch. ROOT's AdamW branch shares its learning rate (its update RMS is
    matched to AdamW's, as in the reference); Muon's Adam branch uses the AdamW
    learning rate, as is usual for Muon.
    """
    sched = functools.partial(
        schedule, steps=cfg.steps, warmup_fraction=cfg.warmup_fraction
    )
    dims = root_optax.matrix_dimension_numbers(ADAMW_PARAMS)
    if name == "root":
        return root_optax.root(
            sched(cfg.lr_root),
            weight_decay=cfg.weight_decay,
            weight_dimension_numbers=dims,
        )
    if name == "muon":
        return optax.contrib.muon(
            sched(cfg.lr_muon),
            weight_decay=cfg.weight_decay,
            adam_b2=0.95,
            adam_weight_decay=cfg.weight_decay,
            adam_learning_rate=sched(cfg.lr_adamw),
            muon_weight_dimension_numbers=dims,
        )
    if name == "adamw":
        return optax.adamw(
            sched(cfg.lr_adamw), b1=0.9, b2=0.95, weight_decay=cfg.weight_decay
        )
    raise ValueError(
        f"root_optax.demo.make_optimizer(name=...) got unknown optimizer {name!r}; "
        f"expected one of {OPTIMIZERS}."
    )
