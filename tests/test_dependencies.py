"""Every package the code imports is declared where it is imported: the package (components/,
pipelines/, ray_jobs/) by the runtime dependencies, so that a plain `pip install .` runs every
command; bench/ by the runtime ones plus the `bench` and `peer` extras; tests/ by those plus `dev`."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement

from pipelines.checkout import REPO

OURS = {"components", "pipelines", "ray_jobs", "bench", "tests"}
# Modules of extras CI never installs (so no installed distribution names them), and their package.
NEVER_INSTALLED = {"llama_cpp": "llama-cpp-python"}  # the `peer` extra: the engine P11 measures against


def declared(*extras: str) -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return {_normal(Requirement(r).name) for r in requirements}


def _normal(name: str) -> str:
    return name.lower().replace("_", "-")


def imported_modules(folders: list[str]) -> dict[str, str]:
    """Top-level module → a file that imports it (any import statement, also inside functions)."""
    found: dict[str, str] = {}
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def undeclared(folders: list[str], allowed: set[str]) -> list[str]:
    distributions = metadata.packages_distributions()
    missing = []
    for module, where in imported_modules(folders).items():
        if module in OURS or module in sys.stdlib_module_names or module == "__future__":
            continue
        owners = {_normal(d) for d in distributions.get(module, [])} or {NEVER_INSTALLED.get(module, "")} - {""}
        if not owners & allowed:
            missing.append(f"{module} (imported by {where}; from {sorted(owners) or 'no installed distribution'})")
    return missing


@pytest.mark.parametrize(("folders", "extras"), [
    (["components", "pipelines", "ray_jobs"], ()),
    (["bench"], ("bench", "peer")),  # peer: the engine P11 measures against, never installed by CI
    (["tests"], ("bench", "dev")),
])
def test_every_import_is_a_declared_dependency(folders, extras):
    assert undeclared(folders, declared(*extras)) == []
