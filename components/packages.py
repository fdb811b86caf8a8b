"""Data files that ship inside installed packages. The packages are found, never imported: their
`__init__` pulls dependencies this project does not install (spacy, llm)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_file(package: str, relative: str, install: str) -> Path:
    """`<site-packages>/<package>/<relative>`, or an error that says how to install it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the package {package!r} is not installed; {install}")
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"the package {package!r} has no {relative} (looked at {path}); reinstall it: {install}")
    return path
