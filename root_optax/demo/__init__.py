"""Training demo: a small byte-level transformer LM trained with ROOT, Muon and AdamW.

``python -m root_optax.demo`` trains one model per optimizer in lockstep on the
Python standard library's source and writes ``results.{json,md}`` and
``loss_curves.png`` (flags: ``--help``). Needs the ``examples`` extra
(``pip install "root-optax[examples]"``: flax, matplotlib, tqdm); importing
this package without flax raises an :class:`ImportError` that says so.

The pieces are public so that benchmarks reuse exactly the demo's model, data
and optimizers:

* :class:`Config` (every setting of a run; ``dataclasses.replace`` it),
  :data:`DEFAULT_LR`, :data:`OPTIMIZERS`, :data:`NAMES`;
* the corpus and batches: :func:`load_corpus` (a :class:`Corpus`),
  :func:`train_windows`, :func:`eval_windows` (built from
  :func:`train_batches`, :func:`eval_batches` and :func:`gather`),
  :data:`VOCAB_SIZE`;
* the model: :func:`build_model` (a :class:`TransformerLM`), :func:`loss_fn`,
  :data:`ADAMW_PARAMS` (the parameters every optimizer sends to AdamW);
* the optimizers: :func:`make_optimizer`, :func:`schedule`;
* :func:`train` (all optimizers in lockstep) and :func:`main` (the command line).

Layout: ``_config`` (no dependencies) < ``_data`` (numpy) < ``_model`` (flax)
< ``_optimizers`` < ``_train`` < ``_report`` < ``_cli``. The demo imports only
``root_optax``'s public API. :mod:`root_optax.demo.record_spectra` sits above it
(it trains the demo to re-record ``root_optax.coefficients``' spectra).
"""

from root_optax.demo import _extra

try:
    import flax  # noqa: F401  (the model is Flax NNX)
except ImportError as err:
    raise ImportError(_extra.missing("flax", "its model is Flax NNX")) from err

from root_optax.demo._cli import main
from root_optax.demo._config import DEFAULT_LR, NAMES, OPTIMIZERS, Config
from root_optax.demo._data import (
    VOCAB_SIZE,
    Corpus,
    eval_batches,
    eval_windows,
    gather,
    load_corpus,
    train_batches,
    train_windows,
)
from root_optax.demo._model import ADAMW_PARAMS, TransformerLM, build_model, loss_fn
from root_optax.demo._optimizers import make_optimizer, schedule
from root_optax.demo._train import train

__all__ = (
    "ADAMW_PARAMS",
    "DEFAULT_LR",
    "NAMES",
    "OPTIMIZERS",
    "VOCAB_SIZE",
    "Config",
    "Corpus",
    "TransformerLM",
    "build_model",
    "eval_batches",
    "eval_windows",
    "gather",
    "load_corpus",
    "loss_fn",
    "main",
    "make_optimizer",
    "schedule",
    "train",
    "train_batches",
    "train_windows",
)
