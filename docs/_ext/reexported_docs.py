"""Sphinx extension: re-exported constants keep the docstring of their definition.

``autodata`` reads a constant's docstring (the string literal after the
assignment) from the module named in the directive. ``root_optax`` re-exports
constants defined in private modules (``root_optax.MUON_COEFFICIENTS`` is
assigned in ``root_optax/_coefficients.py``), so the public name would be
documented without its docstring. For every module-level name of a package in
``reexported_docs_packages`` that has no docstring where it is documented, this
takes the docstring from the loaded submodule that assigns the same object to
the same name.
"""

from __future__ import annotations

import sys

from sphinx.application import Sphinx
from sphinx.errors import PycodeError
from sphinx.pycode import ModuleAnalyzer


def _attribute_docs(module_name: str) -> dict[str, list[str]]:
    try:
        analyzer = ModuleAnalyzer.for_module(module_name)
        return {
            name: list(lines)
            for (scope, name), lines in analyzer.find_attr_docs().items()
            if scope == ""
        }
    except PycodeError:
        return {}


def _definition_docs(module_name: str, name: str, obj: object) -> list[str] | None:
    """The docstring of ``name`` in the submodule that assigns ``obj`` to it."""
    package = module_name.split(".")[0]
    for other in sorted(sys.modules):
        if other == module_name or not other.startswith(package + "."):
            continue
        module = sys.modules[other]
        if getattr(module, name, None) is not obj:
            continue
        lines = _attribute_docs(other).get(name)
        if lines:
            return lines
    return None


def fill_docstring(app, what, name, obj, options, lines) -> None:
    if what != "data":
        return
    module_name, _, attr = name.rpartition(".")
    if module_name not in app.config.reexported_docs_packages:
        return
    if attr in _attribute_docs(module_name):
        return  # documented where it is exported
    found = _definition_docs(module_name, attr, obj)
    if found is not None:
        lines[:] = found


def setup(app: Sphinx) -> dict:
    app.add_config_value("reexported_docs_packages", (), "env", types=(tuple, list))
    # Before napoleon (priority 500), so the found docstring is converted too.
    app.connect("autodoc-process-docstring", fill_docstring, priority=400)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
