"""The demo's optional dependencies (the ``examples`` extra) and a clear error."""

from __future__ import annotations

import importlib

INSTALL = 'pip install "root-optax[examples]"'
"""How to install everything the demo needs (flax, matplotlib, tqdm)."""


def missing(module: str, purpose: str) -> str:
    """The message for a missing optional ``module`` needed for ``purpose``."""
    return (
        f"root_optax.demo needs {module} ({purpose}), which is not installed; it is "
        f"part of the examples extra: {INSTALL}"
    )


def require(module: str, purpose: str) -> None:
    """Import ``module`` or raise an :class:`ImportError` naming the extra."""
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise ImportError(missing(module, purpose)) from err
