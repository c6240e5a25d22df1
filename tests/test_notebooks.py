"""The notebooks in notebooks/ run, and their committed outputs are complete.

Each notebook is executed in a fresh Jupyter kernel with
``ROOT_OPTAX_NOTEBOOK_SMOKE=1`` (tiny settings) on a temporary copy, so the
committed notebook, whose outputs come from the full settings, is never
modified. A second test reads the committed files: every code cell ran, in
order, without errors, so outputs cannot silently go stale or be stripped.

To re-execute the committed notebooks with the full settings (a few minutes
on CPU) and write their outputs in place::

    python tests/test_notebooks.py            # all of them
    python tests/test_notebooks.py precision  # one
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = ("quickstart", "precision", "flax_training")
SMOKE_ENV = "ROOT_OPTAX_NOTEBOOK_SMOKE"
CELL_TIMEOUT_S = 300
MAX_NOTEBOOK_BYTES = 400_000


def _kernel_env(*, smoke: bool) -> dict[str, str]:
    """The kernel's environment: this checkout first on the path, and none of
    the test process's JAX settings (the kernel is a plain user session)."""
    env = dict(os.environ)
    for name in (
        "XLA_FLAGS",
        "JAX_NUMPY_RANK_PROMOTION",
        "JAX_ENABLE_X64",
        "MPLBACKEND",
    ):
        env.pop(name, None)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
    if smoke:
        env[SMOKE_ENV] = "1"
    else:
        env.pop(SMOKE_ENV, None)
    return env


def execute(notebook, workdir: pathlib.Path, *, smoke: bool):
    """Run every cell of ``notebook`` (an ``nbformat`` node) in place, in a
    new python3 kernel started in ``workdir``; raises on the first cell error."""
    from nbclient import NotebookClient

    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute(env=_kernel_env(smoke=smoke), cwd=str(workdir))
    return notebook


def _path(name: str) -> pathlib.Path:
    return NOTEBOOK_DIR / f"{name}.ipynb"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_smoke_setting(name, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    original = _path(name).read_bytes()
    notebook = nbformat.reads(original.decode(), as_version=4)
    execute(notebook, tmp_path, smoke=True)  # raises CellExecutionError on failure
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.output_type == "error"
    ]
    assert not errors, errors
    assert _path(name).read_bytes() == original  # the committed file is untouched


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_fresh_outputs(name):
    nbformat = pytest.importorskip("nbformat")
    path = _path(name)
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES, "keep committed notebooks small"
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    counts = [cell.execution_count for cell in code]
    # One top-to-bottom run of every cell: 1, 2, 3, ... with none skipped.
    assert counts == list(range(1, len(code) + 1)), counts
    for cell in code:
        assert cell.source.strip(), "empty code cell"
        for output in cell.outputs:
            assert output.output_type != "error", output
            if output.output_type == "stream":
                assert output.name != "stderr" or "Traceback" not in output.text
    # The committed outputs come from the full setting, not the smoke one.
    text = "".join(
        output.get("text", "")
        for cell in code
        for output in cell.outputs
        if output.output_type == "stream"
    )
    assert "settings: full" in text and "settings: smoke" not in text


def main(argv: list[str]) -> None:
    """Execute the named notebooks (default: all) with full settings, in place."""
    import nbformat

    names = argv or list(NOTEBOOKS)
    for name in names:
        path = _path(name)
        notebook = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        execute(notebook, NOTEBOOK_DIR, smoke=False)
        nbformat.write(notebook, path)
        seconds = time.perf_counter() - start
        size = path.stat().st_size / 1024
        print(f"{path.relative_to(ROOT)}: executed in {seconds:.0f} s, {size:.0f} KiB")


if __name__ == "__main__":
    main(sys.argv[1:])
