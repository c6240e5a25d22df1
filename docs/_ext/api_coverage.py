"""Sphinx extension: every public name must appear in the API reference.

For each module named in the ``api_coverage_modules`` config value, every name
in its ``__all__`` must be documented as ``<module>.<name>`` by some directive
(``autofunction``, ``autoclass``, ``autodata``, ...). A missing name is a
warning, so a ``-W`` build fails and says which name to add and where.
"""

from __future__ import annotations

import importlib

from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging

logger = logging.getLogger(__name__)


def check_coverage(app: Sphinx, env: BuildEnvironment) -> None:
    documented = set(env.get_domain("py").objects)
    for module_name in app.config.api_coverage_modules:
        module = importlib.import_module(module_name)
        missing = [
            name
            for name in module.__all__
            if f"{module_name}.{name}" not in documented
        ]
        for name in missing:
            logger.warning(
                "%s.%s is in %s.__all__ but not in the API reference; document it "
                "on the matching page under docs/api/.",
                module_name,
                name,
                module_name,
                type="api_coverage",
                subtype="missing",
            )
        if not missing:
            logger.info(
                "api_coverage: all %d names of %s.__all__ are documented",
                len(module.__all__),
                module_name,
            )


def setup(app: Sphinx) -> dict:
    app.add_config_value("api_coverage_modules", (), "env", types=(tuple, list))
    # Runs after all documents are read (incremental builds included: the
    # environment keeps the objects of unchanged documents).
    app.connect("env-check-consistency", check_coverage)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
