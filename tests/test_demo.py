"""The training demo runs end to end on tiny settings and writes its results."""

import json
import math

import pytest

pytest.importorskip("flax")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from root_optax.demo import main

TINY = [
    "--steps=8",
    "--d-model=32",
    "--layers=1",
    "--heads=2",
    "--seq-len=32",
    "--batch-size=8",
    "--eval-every=4",
    "--eval-batches=2",
]


def test_demo_trains_all_optimizers_and_writes_results(tmp_path):
    results = main([*TINY, f"--out={tmp_path}"])

    for name in ("results.json", "results.md", "loss_curves.png"):
        assert (tmp_path / name).stat().st_size > 0
    written = json.loads((tmp_path / "results.json").read_text())
    assert [row["optimizer"] for row in written["table"]] == ["ROOT", "Muon", "AdamW"]
    assert written["table"] == results["table"]
    assert "| ROOT |" in (tmp_path / "results.md").read_text()

    for name, run in written["curves"].items():
        assert len(run["train_loss"]) == 8, name
        assert run["eval_steps"] == [0, 4, 8], name
        losses = run["train_loss"] + run["eval_loss"]
        assert all(math.isfinite(x) for x in losses), name
        assert run["train_loss"][-1] < run["train_loss"][0], name
        assert run["eval_loss"][-1] < run["eval_loss"][0], name
    for row in written["table"]:
        assert row["tokens_per_s"] > 0
        assert math.isfinite(row["valid_bpb"]) and row["valid_bpb"] < 8.5
    assert written["table"][-1]["step_time_vs_adamw"] == 1.0


def test_demo_rejects_unknown_optimizer(tmp_path):
    with pytest.raises(SystemExit):
        main(["--optimizers=root,sgd", f"--out={tmp_path}"])
