"""The training demo: runs end to end on tiny settings, has a documented public
surface, says which extra is missing without flax; the spectra recorder."""

import json
import math
import subprocess
import sys

import pytest

pytest.importorskip("flax")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from root_optax import demo
from root_optax.coefficients import _spectra
from root_optax.demo import main, record_spectra

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


def test_public_surface_is_documented():
    for name in demo.__all__:
        obj = getattr(demo, name)
        if callable(obj):
            assert obj.__doc__, name
    assert "make_optimizer" in demo.__doc__ and "Config" in demo.__doc__


def test_windows_match_the_batch_helpers():
    corpus = demo.load_corpus()
    cfg = demo.Config(steps=3, batch_size=2, seq_len=8, seed=4, eval_batches=2)
    starts = demo.train_batches(corpus.train, steps=3, batch_size=2, seq_len=8, seed=4)
    np_windows = demo.train_windows(corpus, cfg)
    assert np_windows.shape == (3, 2, 9)
    assert (np_windows == demo.gather(corpus.train, starts, 8)).all()
    assert demo.eval_windows(corpus, cfg).shape == (2, 2, 9)


@pytest.mark.parametrize(
    "code",
    ["import root_optax.demo", "import runpy; runpy.run_module('root_optax.demo')"],
)
def test_missing_flax_names_the_extra(code):
    result = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.modules['flax'] = None; {code}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "ImportError: root_optax.demo needs flax" in result.stderr
    assert 'pip install "root-optax[examples]"' in result.stderr


def test_recorder_writes_the_fitters_file_in_its_shipped_format():
    assert record_spectra.DEFAULT_OUT.resolve() == _spectra.RECORDED_FILE.resolve()
    shipped = _spectra.RECORDED_FILE.read_text()
    data = json.loads(shipped)
    assert record_spectra.dumps(data) == shipped  # one record per line
    # "{", one line per header field, one per record, the brackets, "}".
    assert len(shipped.splitlines()) == len(data) + 3 + len(data["records"])
    assert "python -m root_optax.demo.record_spectra" in data["description"]


def test_recorder_runs_on_a_tiny_model(tmp_path):
    path = tmp_path / "spectra.json"
    data = record_spectra.record(path, d_model=16, steps=10, progress=False)
    assert json.loads(path.read_text()) == data
    assert path.read_text() == record_spectra.dumps(data)
    # Two layers x (qkv, out, mlp_in, mlp_out), at step 10, for both seeds.
    assert len(data["records"]) == 2 * 8
    for r in data["records"]:
        assert r["step"] == 10 and r["shape"][0] <= r["shape"][1]
        values = r["singular_values"]
        assert len(values) == r["shape"][0]
        assert math.isclose(sum(v * v for v in values), 1.0, rel_tol=1e-4)
