"""Package layers run one way: core < coefficients (the fitter); core < demo < recording.

Every module under ``root_optax/`` is parsed (``ast``, nothing is imported) and
its imports, at any depth, are checked against its layer:

* core: ``root_optax/__init__.py`` and ``root_optax/_*.py``; imports only the
  core, and no optional extra (flax, tqdm, matplotlib) at module level;
* fitter: ``root_optax/coefficients/``; the core and itself;
* demo: ``root_optax/demo/`` except the recorder; the core's public API only;
* recording: ``root_optax/demo/record_spectra.py``; the public API of the
  layers below.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "root_optax"
EXTRAS = ("flax", "tqdm", "matplotlib")
ALLOWED = {
    "core": {"core"},
    "fitter": {"core", "fitter"},
    "demo": {"core", "demo"},
    "recording": {"core", "fitter", "demo", "recording"},
}
"""The layers each layer may import."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    if module == "root_optax" or module.startswith("root_optax._"):
        return "core"
    if module.split(".")[:2] == ["root_optax", "coefficients"]:
        return "fitter"
    if module == "root_optax.demo.record_spectra":
        return "recording"
    if module.split(".")[:2] == ["root_optax", "demo"]:
        return "demo"
    raise AssertionError(f"{module} is in no layer; add it to test_layering.layer")


def is_package(module: str) -> bool:
    return MODULES.get(module, Path()).name == "__init__.py"


def imports(module: str) -> list[tuple[str, str | None, int, bool]]:
    """``(module imported, name taken from it or None, line, at module level)``.

    ``from package import sub`` counts as importing ``package.sub`` when
    ``sub`` is a module; relative imports are resolved.
    """
    tree = ast.parse(MODULES[module].read_text())
    nested = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        here = id(node) not in nested
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno, here) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if is_package(module) else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}".rstrip(".")
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in MODULES:
                    found.append((sub, None, node.lineno, here))
                else:
                    found.append((base, alias.name, node.lineno, here))
    return found


def public_names(package: str) -> set[str]:
    """The ``__all__`` of ``package``, read from its source."""
    for node in ast.parse(MODULES[package].read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"{package} has no __all__")


def is_private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split(".")[1:])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_down_the_layers(module):
    mine = layer(module)
    for target, _, line, _ in imports(module):
        if target.split(".")[0] != "root_optax":
            continue
        assert layer(target) in ALLOWED[mine], (
            f"{module}:{line} ({mine}) imports {target} ({layer(target)}), a layer "
            f"above or beside it; {mine} may import {sorted(ALLOWED[mine])}."
        )


@pytest.mark.parametrize(
    "module", [m for m in sorted(MODULES) if layer(m) in ("demo", "recording")]
)
def test_demo_and_recorder_use_only_public_apis(module):
    """Across layers only public names: ``root_optax``'s and ``root_optax.demo``'s
    ``__all__``, never their private modules (the demo's own are fine inside it)."""
    mine = layer(module)
    for target, name, line, _ in imports(module):
        if target.split(".")[0] != "root_optax" or layer(target) == mine:
            continue
        where = f"{module}:{line} imports {target}" + (f".{name}" if name else "")
        assert not is_private(target), where
        if name is not None and is_package(target):
            assert name in public_names(target), f"{where}, not in its __all__"
    source = MODULES[module].read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            private = node.attr.startswith("_") and not node.attr.startswith("__")
            if node.value.id in ("root_optax", "demo"):
                assert not private, f"{module}:{node.lineno} uses .{node.attr}"


@pytest.mark.parametrize(
    "module", [m for m in sorted(MODULES) if layer(m) in ("core", "fitter")]
)
def test_core_and_fitter_import_no_extra_at_module_level(module):
    """Runtime dependencies are jax, optax and numpy; flax, tqdm and matplotlib
    are extras (the fitter's command line imports tqdm lazily)."""
    for target, _, line, top in imports(module):
        if top:
            assert target.split(".")[0] not in EXTRAS, f"{module}:{line} {target}"
    if layer(module) == "core":
        for target, _, line, _ in imports(module):
            assert target.split(".")[0] not in EXTRAS, f"{module}:{line} {target}"


def test_the_muon_triple_is_defined_once_in_the_core():
    muon = (3.4445, -4.775, 2.0315)
    homes = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Tuple):
                try:
                    value = ast.literal_eval(node)
                except ValueError:
                    continue
                if value == muon:
                    homes.append(module)
    assert homes == ["root_optax._coefficients"]


def test_benchmarks_use_the_demos_public_surface():
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                assert not name.startswith("root_optax.demo._"), f"{path.name}: {name}"


def test_importing_the_package_and_the_fitter_needs_no_extra():
    """With flax, tqdm and matplotlib unimportable, ``root_optax`` and
    ``root_optax.coefficients`` import and work, and load no ``root_optax.demo``."""
    code = (
        "import sys\n"
        + "".join(f"sys.modules[{m!r}] = None\n" for m in EXTRAS)
        + "import root_optax, root_optax.coefficients as c\n"
        "assert c.lookup((64, 256), 5).shape == (5, 3)\n"
        "root_optax.orthogonalize(__import__('jax').numpy.ones((4, 8)))\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('root_optax.demo'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
