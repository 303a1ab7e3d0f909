"""The python-iptables applier leaves the same kernel state as iptables-restore (legacy backend)."""

from __future__ import annotations

import pytest

from lab import netlab
from tests.support.cases import FULL
from tests.support.cases import ISTIO as ISTIO_DEFAULT

pytestmark = pytest.mark.requires_root


@pytest.mark.parametrize("args", [ISTIO_DEFAULT, FULL, [*FULL, "-m", "TPROXY"]], ids=["istio", "full", "tproxy"])
def test_iptc_applier_matches_restore_applier(args: list[str]) -> None:
    with netlab.namespace("a") as a, netlab.namespace("b") as b:
        via_restore = netlab.run_netinit("--network-namespace", a, "--force-iptables-binary", "legacy", *args)
        via_iptc = netlab.run_netinit("--network-namespace", b, "--applier", "iptc", *args)
        assert via_restore.returncode == 0, via_restore.stderr
        assert via_iptc.returncode == 0, via_iptc.stderr
        assert "via iptc" in via_iptc.stderr
        # libiptc initialises every table it opens; compare the tables netinit programs.
        tables_a = _tables(netlab.normalize_save(netlab.iptables_save(a, "legacy")))
        tables_b = _tables(netlab.normalize_save(netlab.iptables_save(b, "legacy")))
        for t, body in tables_a.items():
            assert tables_b.get(t) == body, t
        again = netlab.run_netinit("--network-namespace", b, "--applier", "iptc", *args)
        assert again.returncode == 0 and "already in place" in again.stderr
        # Reconcile and cleanup through libiptc too.
        changed = netlab.run_netinit(
            "--network-namespace", b, "--applier", "iptc", *ISTIO_DEFAULT, "-q", "7000", "--reconcile"
        )
        assert changed.returncode == 0, changed.stderr
        assert "--dport 7000 -j ISTIO_REDIRECT" in netlab.iptables_save(b, "legacy")
        gone = netlab.run_netinit("--network-namespace", b, "--applier", "iptc", *args, "--cleanup-only")
        assert gone.returncode == 0, gone.stderr
        assert "ISTIO_" not in netlab.iptables_save(b, "legacy")


def _tables(text: str) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    cur = ""
    for line in text.splitlines():
        if line.startswith("*"):
            cur = line[1:]
            out[cur] = []
        elif cur:
            out[cur].append(line)
    return {t: "\n".join(lines) for t, lines in out.items() if any(x.startswith("-A") for x in lines)}


def test_tproxy_routes_are_programmed_idempotently(netns: str) -> None:
    args = [*ISTIO_DEFAULT, "-m", "TPROXY", "-t", "1337", "-r", "133"]
    for _ in range(2):
        res = netlab.run_netinit("--network-namespace", netns, *args, "--force-apply")
        assert res.returncode == 0, res.stderr
    rules = netlab.sh("ip", "rule", "show", ns=netns).stdout
    assert rules.count("fwmark 0x539 lookup 133") == 1
    routes = netlab.sh("ip", "route", "show", "table", "133", "type", "local", ns=netns).stdout
    assert "local default dev lo" in routes
