"""Shared fixtures. Privileged tests are marked ``requires_root``; where root or the iptables binaries are
missing they skip *with the reason* - unless NETINIT_REQUIRE_NETNS_TESTS=1 (set by `make test` and CI), in
which case a skip is a failure: a green run must mean the real-namespace tests ran."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from lab import netlab

STRICT = os.environ.get("NETINIT_REQUIRE_NETNS_TESTS") == "1"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables)"
    for b in ("ip", "setpriv", "nft", "iptables-legacy-restore", "iptables-nft-restore", "ip6tables-legacy-save"):
        if shutil.which(b) is None:
            return f"{b} not installed (run scripts/bootstrap.sh)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    why = _missing()
    if why is None:
        return
    if STRICT and any("requires_root" in item.keywords for item in items):
        pytest.exit(f"real-namespace tests cannot run here: {why} (NETINIT_REQUIRE_NETNS_TESTS=1)", returncode=1)
    for item in items:
        if "requires_root" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture
def netns() -> Iterator[str]:
    with netlab.namespace("t") as name:
        yield name


@pytest.fixture(params=["legacy", "nft"])
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)
