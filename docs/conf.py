"""Sphinx configuration for the root_optax documentation.

Build from the repository root (warnings are errors, as in CI):

    python -m pip install -e ".[docs]"
    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import root_optax

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))

# -- Project ------------------------------------------------------------------

project = "root_optax"
author = "the root_optax authors"
copyright = "the root_optax authors, Apache-2.0"
release = root_optax.__version__
version = release

# -- Notebooks ----------------------------------------------------------------
# The notebooks live in the repository's notebooks/ folder, committed with their
# outputs. Sphinx only reads documents inside docs/, so each build mirrors them
# into docs/notebooks/ (git-ignored by docs/.gitignore). A copy is refreshed only
# when its content changed, so incremental builds stay incremental; copies of
# notebooks that were deleted are removed.


def _mirror_notebooks(source: Path, target: Path) -> None:
    target.mkdir(exist_ok=True)
    wanted = {path.name: path for path in sorted(source.glob("*.ipynb"))}
    for stale in target.glob("*.ipynb"):
        if stale.name not in wanted:
            stale.unlink()
    for name, path in wanted.items():
        copy = target / name
        if not copy.exists() or copy.read_bytes() != path.read_bytes():
            shutil.copy2(path, copy)


_mirror_notebooks(REPO / "notebooks", DOCS / "notebooks")

# -- Extensions ---------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",  # Markdown pages and notebooks (includes myst_parser)
    "api_coverage",  # docs/_ext: fail if a public name is not documented
    "reexported_docs",  # docs/_ext: docstrings of re-exported constants
]

exclude_patterns = ["_build", "_ext", "**/.ipynb_checkpoints"]
root_doc = "index"

# Every name in these modules' __all__ must be in the API reference.
api_coverage_modules = ("root_optax", "root_optax.coefficients")
reexported_docs_packages = ("root_optax", "root_optax.coefficients")

# -- autodoc / napoleon --------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_preserve_defaults = True
# Signatures show names and defaults only: the annotations use aliases such as
# jax.typing.ArrayLike and optax.ScalarOrSchedule that would print as long
# unions. Each argument's accepted values are in its docstring's Args section.
autodoc_typehints = "none"
autosummary_generate = False  # the API pages list their objects explicitly

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # NamedTuple "Attributes:" as fields, not duplicate objects
napoleon_use_rtype = False

# -- Cross-references ------------------------------------------------------------
# Nitpicky: every reference must resolve. The build is offline (no intersphinx),
# so references into other projects cannot resolve; they render as code.

nitpicky = True
nitpick_ignore_regex = [
    # Other projects' objects (optax.GradientTransformation, jax.sharding.Mesh,
    # numpy.ndarray, ...): no inventory to resolve them against offline.
    (r"py:.*", r"(optax|jax|jaxlib|numpy|np|jnp)(\..*)?"),
]

# -- MyST and notebooks ----------------------------------------------------------

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # render the committed outputs; never execute
nb_merge_streams = True

# -- HTML ---------------------------------------------------------------------

html_theme = "furo"
html_title = f"root_optax {release}"
html_static_path: list[str] = []
# No copies of the page sources in the site (their comments, such as TODOs,
# stay in the repository).
html_copy_source = False


# -- Source links ----------------------------------------------------------------
# viewcode links each documented object to its source. root_optax re-exports
# optax.contrib.MuonDimensionNumbers; link only to code defined in root_optax,
# so the site does not carry other projects' source pages.


def _own_source_only(app, modname: str, fullname: str) -> str:
    import importlib

    obj = importlib.import_module(modname)
    for part in fullname.split("."):
        obj = getattr(obj, part, None)
    defined_in = getattr(obj, "__module__", None) or modname
    # A module that does not define the name gets no source link.
    return defined_in if defined_in.split(".")[0] == "root_optax" else modname


def setup(app):
    app.connect("viewcode-follow-imported", _own_source_only)
