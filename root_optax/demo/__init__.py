"""Training demo: a small transformer LM trained with ROOT, Muon and AdamW."""

from root_optax.demo._train import main

__all__ = ("main",)
