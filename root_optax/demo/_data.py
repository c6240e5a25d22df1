"""The demo corpus: Python standard-library source as bytes, split and batched."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import sysconfig
from pathlib import Path

import numpy as np

from root_optax.demo._config import Config

# Pure-Python standard-library modules that are single files in every CPython from
# 3.10 on, in a fixed (sorted) order: about 1.5 MB of text. The source ships with
# every Python installation (no download) under the Python Software Foundation
# License; its exact bytes differ between Python versions, so the corpus digest is
# recorded with every result.
STDLIB_FILES = (
    "argparse.py",
    "ast.py",
    "calendar.py",
    "collections/__init__.py",
    "configparser.py",
    "contextlib.py",
    "csv.py",
    "dataclasses.py",
    "difflib.py",
    "enum.py",
    "fractions.py",
    "functools.py",
    "heapq.py",
    "inspect.py",
    "ipaddress.py",
    "json/decoder.py",
    "json/encoder.py",
    "logging/__init__.py",
    "optparse.py",
    "pprint.py",
    "shutil.py",
    "statistics.py",
    "subprocess.py",
    "tarfile.py",
    "textwrap.py",
    "threading.py",
    "tokenize.py",
    "typing.py",
)

PROVENANCE = (
    "Python {version} standard-library source ({n} files under {root}, "
    "PSF License Agreement, https://docs.python.org/3/license.html)"
)

VOCAB_SIZE = 256  # byte-level tokens


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Byte tokens of the corpus, split by position into train and validation."""

    train: np.ndarray
    valid: np.ndarray
    files: tuple[str, ...]
    sha256: str
    description: str


def load_corpus(valid_fraction: float = 0.1) -> Corpus:
    """Read :data:`STDLIB_FILES`, concatenate them and split off the last bytes.

    The train split is the first ``1 - valid_fraction`` of the concatenation, the
    validation split the rest (so validation text is never trained on). Files
    missing from this Python's standard library are skipped; the digest of what
    was read identifies the corpus.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, files = [], []
    for name in STDLIB_FILES:
        path = root / name
        if path.is_file():
            chunks.append(path.read_bytes())
            files.append(name)
    data = b"\n".join(chunks)
    if len(data) < 200_000:
        raise RuntimeError(
            f"root_optax.demo found only {len(data)} bytes of standard-library "
            f"source under {root} (files {files}); it needs a Python installation "
            "that ships its .py sources."
        )
    tokens = np.frombuffer(data, dtype=np.uint8).astype(np.int32)
    split = int(len(tokens) * (1.0 - valid_fraction))
    version = ".".join(map(str, sys.version_info[:3]))
    return Corpus(
        train=tokens[:split],
        valid=tokens[split:],
        files=tuple(files),
        sha256=hashlib.sha256(data).hexdigest(),
        description=PROVENANCE.format(version=version, n=len(files), root=root),
    )


def train_batches(
    tokens: np.ndarray, *, steps: int, batch_size: int, seq_len: int, seed: int
) -> np.ndarray:
    """Start offsets ``(steps, batch_size)`` of random training windows.

    Drawn once from ``seed`` so every optimizer sees the same data in the same
    order. A window is ``seq_len + 1`` tokens (inputs and shifted targets).
    """
    rng = np.random.default_rng(seed)
    return rng.integers(0, len(tokens) - seq_len - 1, size=(steps, batch_size))


def eval_batches(
    tokens: np.ndarray, *, num_batches: int, batch_size: int, seq_len: int
) -> np.ndarray:
    """Start offsets ``(num_batches, batch_size)`` evenly spread over ``tokens``."""
    count = num_batches * batch_size
    starts = np.linspace(0, len(tokens) - seq_len - 1, count).astype(np.int64)
    return starts.reshape(num_batches, batch_size)


def gather(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> np.ndarray:
    """Windows ``tokens[s : s + seq_len + 1]`` for each start, shape ``(..., L+1)``."""
    return tokens[starts[..., None] + np.arange(seq_len + 1)]


def train_windows(corpus: Corpus, cfg: Config) -> np.ndarray:
    """Training windows ``(cfg.steps, cfg.batch_size, cfg.seq_len + 1)``, in the
    order of :func:`train_batches` drawn from ``cfg.seed``."""
    starts = train_batches(
        corpus.train,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        seq_len=cfg.seq_len,
        seed=cfg.seed,
    )
    return gather(corpus.train, starts, cfg.seq_len)


def eval_windows(corpus: Corpus, cfg: Config) -> np.ndarray:
    """Validation windows ``(cfg.eval_batches, cfg.batch_size, cfg.seq_len + 1)``
    spread evenly over the held-out split (:func:`eval_batches`)."""
    starts = eval_batches(
        corpus.valid,
        num_batches=cfg.eval_batches,
        batch_size=cfg.batch_size,
        seq_len=cfg.seq_len,
    )
    return gather(corpus.valid, starts, cfg.seq_len)
