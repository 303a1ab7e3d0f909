"""The runtime tree: the shipped images, built by scripts/images.sh (as `make images` does) and run with a real
container engine. Every test here is ``requires_podman``: where no engine can run they skip with the reason,
unless SIDECAR_REQUIRE_RUNTIME_TESTS=1 (CI), in which case that is a failure."""

from __future__ import annotations

import os

import pytest

from lab.runtime import podman

STRICT = os.environ.get("SIDECAR_REQUIRE_RUNTIME_TESTS") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    why = podman.missing()
    if why is None:
        return
    if STRICT and any("requires_podman" in item.keywords for item in items):
        pytest.exit(f"runtime tests cannot run here: {why} (SIDECAR_REQUIRE_RUNTIME_TESTS=1)", returncode=1)
    for item in items:
        if "requires_podman" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(scope="session")
def built() -> podman.Built:
    """The three images, built (or found in the engine's cache: seconds) by the same script as `make images`."""
    return podman.build_images()
