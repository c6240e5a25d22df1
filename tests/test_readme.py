"""The README's quickstart runs as written and trains."""

import pathlib
import re

import jax
import jax.numpy as jnp

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_quickstart_runs_and_reduces_loss(capsys):
    quickstart = python_blocks()[0]
    assert "root_optax.root(" in quickstart
    code = [line for line in quickstart.splitlines() if line.strip()]
    assert len(code) <= 15
    namespace = {}
    # User code broadcasts freely; strict rank promotion is for our kernels.
    with jax.numpy_rank_promotion("allow"):
        exec(compile(quickstart, str(README), "exec"), namespace)  # noqa: S102
        first = float(jnp.mean(namespace["y"] ** 2))  # loss at w2 = 0
    printed = capsys.readouterr().out
    final = float(re.search(r"final loss ([0-9.]+)", printed).group(1))
    assert final < 0.1 * first


def test_test_command_is_what_ci_runs():
    commands = re.findall(r"```bash\n(.*?)\n```", README.read_text(), re.DOTALL)
    command = commands[0]
    assert "python -m root_optax.demo" in commands[1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert command.strip() in ci
