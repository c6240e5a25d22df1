"""Command line: ``python -m root_optax.coefficients {fit,table} ...``.

``fit 4096 11008 --steps 5`` prints fitted coefficients and their measured
error per spectrum family next to Muon's; ``table`` regenerates the shipped
``root_optax/coefficient_table.json`` (deterministic). The recorded momentum
spectra are re-recorded by ``python -m root_optax.demo.record_spectra``
(trains the demo model, needs flax).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

from root_optax import _coefficient_safety, _coefficient_table
from root_optax.coefficients import _fit, _generate, _spectra


def _progress(items):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is an optional extra
        return items
    return tqdm(items, desc="fitting", unit="fit")


def _cmd_fit(args) -> None:
    result = _fit.fit(
        (args.m, args.n),
        args.steps,
        per_iteration=args.per_iteration,
        normalization=args.normalization,
    )
    print(f"shape {result.shape}, {args.steps} steps, fitted in {result.seconds:.3f} s")
    with np.printoptions(precision=6, suppress=True):
        print("coefficients (a, b, c) per iteration:")
        print(result.coefficients)
    lo, hi = result.output_range
    delta = _coefficient_safety.safe_delta(args.steps)
    print(f"output singular values for s in [{delta:.4g}, 1]: [{lo:.4f}, {hi:.4f}]")
    print(f"{'family':<12}{'ours':>10}{'muon':>10}{'ratio':>10}")
    for family, error in result.errors.items():
        muon = result.muon_errors[family]
        print(f"{family:<12}{error:>10.4f}{muon:>10.4f}{error / muon:>10.3f}")


def _cmd_table(args) -> None:
    start = time.perf_counter()
    data = _generate.generate(
        args.out,
        steps=args.steps,
        progress=_progress,
        normalization=args.normalization,
    )
    count = sum(len(rows) for rows in data["entries"].values())
    out = args.out or _coefficient_table.TABLE_FILES[args.normalization]
    print(f"wrote {count} entries to {out} in {time.perf_counter() - start:.0f} s")
    print("worst error ratio to Muon per step count/family:")
    for key, ratio in data["worst_ratio_to_muon"].items():
        print(f"  {key:<20}{ratio:.3f}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m root_optax.coefficients",
        description=__doc__.split("\n")[0],
        epilog="To re-record the momentum spectra: "
        "python -m root_optax.demo.record_spectra (needs flax).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="fit and print coefficients for one shape")
    fit.add_argument("m", type=int)
    fit.add_argument("n", type=int)
    fit.add_argument("--steps", type=int, default=5, help="Newton-Schulz steps")
    fit.add_argument(
        "--per-iteration", action="store_true", help="one triple per iteration"
    )
    fit.set_defaults(run=_cmd_fit)
    table = commands.add_parser("table", help="regenerate the shipped table")
    table.add_argument(
        "--out", default=None, help="output file (default: the shipped table)"
    )
    table.add_argument(
        "--steps", type=int, nargs="+", default=list(_coefficient_table.SUPPORTED_STEPS)
    )
    table.set_defaults(run=_cmd_table)
    for command in (fit, table):
        command.add_argument(
            "--normalization",
            choices=_spectra.NORMALIZATIONS,
            default="frobenius",
            help="Newton-Schulz input scaling the coefficients are for",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` and run the chosen command."""
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("m", "n", "steps"):
        values = np.atleast_1d(getattr(args, name, 1))
        if np.any(values < 1):
            parser.error(f"{name} must be positive, got {getattr(args, name)}")
    args.run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
