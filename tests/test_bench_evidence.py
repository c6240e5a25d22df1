"""benchmarks/bench_evidence.py: the Muon-in-ROOT's-recipe variant is what it
claims, the seed-spread rule, and a --quick run end to end."""

import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("flax")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import _evidence_report as report
import _training
import bench_evidence
from _optimizers import muon_with_root_recipe

import root_optax
from root_optax import demo


def test_muon_in_roots_recipe_is_root_without_its_mechanisms():
    cfg = dataclasses.replace(demo.Config(), d_model=16, layers=1, heads=2, steps=8)
    params = _training.Trainer(cfg).init_params(0)
    muon = muon_with_root_recipe(cfg)
    root = root_optax.root(
        demo.schedule(cfg.lr_root, cfg.steps, cfg.warmup_fraction),
        weight_decay=cfg.weight_decay,
        weight_dimension_numbers=root_optax.matrix_dimension_numbers(demo.ADAMW_PARAMS),
        clip_quantile=None,
        ns_coeffs="muon",
        ns_steps=5,
    )
    sa, sb = muon.init(params), root.init(params)
    rng = np.random.default_rng(0)
    compared = 0
    for _ in range(5):
        g = jax.tree.map(
            lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), params
        )
        ua, sa = muon.update(g, sa, params)
        ub, sb = root.update(g, sb, params)
        for x, y in zip(jax.tree.leaves(ua), jax.tree.leaves(ub)):
            norm = float(jnp.linalg.norm(y))
            if norm:
                compared += 1
                assert float(jnp.linalg.norm(x - y)) <= 1e-5 * norm
    assert compared > 0
    # With the clip the two differ: the comparison can fail.
    clipped = root_optax.root(0.1, clip_quantile=0.5, ns_coeffs="muon", ns_steps=5)
    w = {"w": params["blocks"][0]["mlp_in"]["kernel"]}
    gw = {"w": jnp.asarray(rng.standard_t(1.5, w["w"].shape), jnp.float32)}
    u_clip, _ = clipped.update(gw, clipped.init(w), w)
    plain = root_optax.root(0.1, clip_quantile=None, ns_coeffs="muon", ns_steps=5)
    u_plain, _ = plain.update(gw, plain.init(w), w)
    assert float(jnp.linalg.norm(u_clip["w"] - u_plain["w"])) > 1e-3


def test_seed_spread_rule():
    clear = report.verdict([1.0, 1.1, 1.05], [1.5, 1.6, 1.55])
    assert clear["significant"] and clear["winner"] == "a"
    assert clear["mean"] == pytest.approx(-0.5)
    mixed = report.verdict([1.0, 1.6, 1.05], [1.5, 1.1, 1.55])  # signs differ
    assert not mixed["significant"]
    small = report.verdict([1.0, 1.4, 1.2], [1.05, 1.45, 1.25])  # 0.05 < std 0.2
    assert not small["significant"]
    assert not report.verdict([1.0], [2.0])["significant"]  # one seed: no claim
    assert report.verdict([float("nan"), 1.0], [1.0, 1.0])["mean"] is None


def test_quick_run_reports_every_stage(capsys):
    assert bench_evidence.main(["--quick"]) == 0
    out = capsys.readouterr().out
    for text in (
        "clean, tuned",
        "learning-rate sweep",
        "gradient noise at the best clean rate",
        "which differences exceed the seed spread",
        "Muon (ROOT's recipe)",
        "step time / Muon",
        "--quick: no files written.",
    ):
        assert text in out
