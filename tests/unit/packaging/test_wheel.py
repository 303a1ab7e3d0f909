"""The wheel carries the product and nothing else: no lab, no tests, no benchmarks; templates and defaults in."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_wheel_contains_only_the_product(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("sidecar_injector-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"netinit", "netinit_cni", "injector", next(t for t in tops if t.endswith(".dist-info"))}, tops
    assert not [n for n in names if "/lab/" in n or n.startswith(("lab/", "tests/", "bench/"))]
    for data in ("injector/core/templates/envoy.yaml.j2", "injector/core/templates/sidecar.yaml.j2",
                 "injector/core/defaults/values.yaml", "injector/core/defaults/config.yaml"):  # fmt: skip
        assert data in names, data
    # Every package of the tree is in the wheel (a new subpackage without __init__.py would silently vanish).
    for pkg in ("netinit", "netinit_cni", "injector"):
        for init in (ROOT / pkg).rglob("__init__.py"):
            assert init.relative_to(ROOT).as_posix() in names
        for module in (ROOT / pkg).rglob("*.py"):
            assert module.relative_to(ROOT).as_posix() in names, module
