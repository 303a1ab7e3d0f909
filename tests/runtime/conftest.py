"""The runtime tree: the shipped images, built by scripts/images.sh (as `make images` does) and run with a real
container engine. Every test here is ``requires_podman``: where no engine can run they skip with the reason,
unless SIDECAR_REQUIRE_RUNTIME_TESTS=1 (CI), in which case that is a failure."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from lab.runtime import podman

if TYPE_CHECKING:
    from lab.runtime.webhook import WebhookContainer

GATEWAY = "10.88.0.1"  # podman's default bridge, as the pods see the host

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


# --- the runtime lab (test_pods.py) ---------------------------------------------------------------------------

ENABLED = {"istio-injection": "enabled"}


@pytest.fixture(scope="session")
def echo_image(built: podman.Built) -> str:
    """The lab's app image (lab.runtime.apps): built once on the same base as the shipped images."""
    from lab.runtime import apps

    return apps.echo_image(built.base)


@pytest.fixture(scope="session")
def webhook(built: podman.Built) -> Iterator[WebhookContainer]:
    """The webhook as it ships, in its own container (one for the session), reached over verifying TLS."""
    from lab.runtime.webhook import WebhookContainer

    with WebhookContainer(built.images) as hook:
        yield hook


@pytest.fixture(scope="session")
def outside() -> Iterator[tuple[str, int, int]]:
    """Two echo servers outside every pod, on podman's bridge gateway (the host): (address, port, port). The
    bridge exists while the session's webhook container runs."""
    from lab.runtime import echo_app

    servers = [echo_app.serve_in_thread("outside", GATEWAY, 0) for _ in range(2)]
    try:
        yield GATEWAY, int(servers[0].server_address[1]), int(servers[1].server_address[1])
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()
