"""benchmarks/bench_robustness.py and its helpers (_noise, _training,
_robustness_report): the noise does what it claims; a tiny run works."""

import dataclasses
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("flax")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import _noise
import _robustness_report as report
import _training
import bench_robustness as br

from root_optax import demo

NOISE = _noise.Noise()


def _grads(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {
        "b": jax.random.normal(k1, (8,)),  # not a matrix: never touched
        "w": jax.random.normal(k2, (64, 192)),
    }


IS_MATRIX = (False, True)  # leaf order of _grads(): "b", "w"


def test_outlier_schedule_has_exactly_the_fraction_of_steps():
    flags = _noise.outlier_schedule(250, 0.1, seed=0)
    assert flags.shape == (250,) and flags.sum() == 25
    assert np.array_equal(flags, _noise.outlier_schedule(250, 0.1, seed=0))
    assert not np.array_equal(flags, _noise.outlier_schedule(250, 0.1, seed=1))


def test_outliers_multiply_exactly_the_chosen_entries():
    grads = _grads()
    key = _noise.step_key(0, 7)
    out = _noise.corrupt_gradients(grads, IS_MATRIX, key, outlier_on=True, noise=NOISE)
    ratio = np.asarray(out["w"] / grads["w"])
    hit = ratio != 1.0
    assert hit.sum() == _noise.outlier_count(64 * 192, 1e-3) == 12
    np.testing.assert_allclose(ratio[hit], NOISE.outlier_factor, rtol=1e-6)
    np.testing.assert_array_equal(out["b"], grads["b"])

    # The positions depend on the key only: not on the gradient values.
    scaled = jax.tree.map(lambda g: 3 * g, grads)
    again = _noise.corrupt_gradients(
        scaled, IS_MATRIX, key, outlier_on=True, noise=NOISE
    )
    assert np.array_equal(np.asarray(again["w"] / scaled["w"]) != 1.0, hit)
    other = _noise.corrupt_gradients(
        grads, IS_MATRIX, _noise.step_key(0, 8), outlier_on=True, noise=NOISE
    )
    assert not np.array_equal(np.asarray(other["w"] / grads["w"]) != 1.0, hit)

    off = _noise.corrupt_gradients(grads, IS_MATRIX, key, outlier_on=False, noise=NOISE)
    jax.tree.map(np.testing.assert_array_equal, off, grads)


def test_heavy_tail_noise_is_student_t_scaled_by_the_gradient_rms():
    grads = _grads()
    draws = _noise.heavy_tail_draws(0, 3, 64 * 192, NOISE.t_df)
    assert draws.shape == (3, 64 * 192) and draws.dtype == np.float32
    out = _noise.corrupt_gradients(
        grads,
        IS_MATRIX,
        _noise.step_key(0, 0),
        t_scale=2.0,
        t_draws=draws[0],
        noise=NOISE,
    )
    rms = float(jnp.sqrt(jnp.mean(grads["w"] ** 2)))
    np.testing.assert_allclose(
        out["w"] - grads["w"],
        2.0 * rms * draws[0].reshape(64, 192),
        rtol=1e-5,
        atol=1e-5 * rms,  # float32 rounding of g + noise
    )
    np.testing.assert_array_equal(out["b"], grads["b"])
    off = _noise.corrupt_gradients(
        grads, IS_MATRIX, _noise.step_key(0, 0), t_draws=draws[0], noise=NOISE
    )
    jax.tree.map(np.testing.assert_array_equal, off, grads)

    # Heavy tails: with df = 1.5 the largest of 10^5 draws is ~10^3 medians.
    big = np.abs(_noise.heavy_tail_draws(1, 1, 100_000, 1.5))
    assert 0.8 < np.median(big) < 0.95
    assert big.max() > 100 * np.median(big)


def test_label_noise_replaces_exactly_the_fraction_of_targets():
    rng = np.random.default_rng(0)
    windows = rng.integers(0, 256, size=(5, 4, 51)).astype(np.int32)
    clean = windows[..., 1:]
    noisy, mask = _noise.corrupt_targets(clean, 0.2, seed=0)
    assert np.all(mask.sum(axis=(1, 2)) == round(0.2 * 4 * 50))
    changed = noisy != clean
    assert not np.any(changed & ~mask)  # only the chosen positions change
    assert changed.sum() > 0.9 * mask.sum()  # a random byte equals the true 1/256
    assert noisy.dtype == clean.dtype and noisy.min() >= 0 and noisy.max() < 256

    inputs, targets, flags, t_scale, draws = _noise.condition_data(
        "label_noise", windows, seed=0, noise=NOISE, noise_size=10
    )
    np.testing.assert_array_equal(inputs, windows[..., :-1])
    np.testing.assert_array_equal(targets, noisy)
    assert not flags.any() and t_scale == 0.0 and draws is None


def test_divergence_rule():
    assert _training.divergence([3.0, 2.0], [5.5, 2.0]) == (False, None, "")
    assert _training.divergence([3.0, math.nan, math.nan], [5.5, math.nan])[:2] == (
        True,
        2,
    )
    assert _training.divergence([3.0, 2.0], [5.5, 6.0])[0]


def test_tiny_benchmark_runs_every_condition(tmp_path, monkeypatch):
    setup = br.Setup(
        config=dataclasses.replace(
            br.MODEL,
            steps=4,
            d_model=16,
            layers=1,
            heads=2,
            seq_len=16,
            batch_size=4,
            eval_every=2,
            eval_batches=1,
        ),
        seeds=(0,),
        optimizers=("root", "adamw"),
        noise=_noise.Noise(outlier_step_fraction=0.5),
    )
    trainer, runs = br.run_all(setup, log=None)
    assert len(runs) == len(_noise.CONDITIONS) * 2
    for run in runs:
        assert run["eval_steps"] == [0, 2, 4]
        assert all(math.isfinite(x) for x in run["train_bpb"] + run["eval_bpb"])
        assert not run["diverged"]
        assert run["skipped_steps"] == (0 if run["optimizer"] == "root" else None)
        assert run["outlier_steps"] == (2 if run["condition"] == "outliers" else 0)
    by = {(r["condition"], r["optimizer"]): r for r in runs}
    # The first step's loss is computed before any update: same for all runs
    # of a seed except label noise, whose targets differ.
    first = by[("clean", "root")]["train_bpb"][0]
    assert by[("outliers", "adamw")]["train_bpb"][0] == pytest.approx(first)
    assert by[("label_noise", "root")]["train_bpb"][0] != pytest.approx(first)

    rows = report.summarize(runs, setup)
    assert len(rows) == len(_noise.CONDITIONS) * 2
    assert "| clean " in report.results_table(rows)
    assert "ROOT" in report.pivot_table(rows, setup)
    assert "outliers" in report.setup_text(setup, trainer)
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = report.plot(plt, setup, rows, runs)
    fig.savefig(tmp_path / "robustness.png")
    plt.close(fig)
    assert (tmp_path / "robustness.png").stat().st_size > 0


def test_setup_derives_from_the_demos_config():
    defaults = demo.Config()
    changed = {
        f.name
        for f in dataclasses.fields(demo.Config)
        if getattr(br.MODEL, f.name) != getattr(defaults, f.name)
    }
    assert changed == {"d_model", "eval_every", "progress"}
    setup, _ = br.parse_args(["--quick", "--steps", "7", "--optimizers", "root,muon"])
    assert (setup.config.steps, setup.config.d_model, setup.seeds) == (7, 32, (0, 1))
    assert setup.config.lr_root == demo.DEFAULT_LR["root"]
    assert setup.optimizers == ("root", "muon")
