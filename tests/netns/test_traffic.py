"""Real connections through the programmed rules: what is captured, where it lands, what is left alone.

Topology: namespace ``pod`` (10.66.0.2, fd66::2) <-veth-> namespace ``peer`` (10.66.0.1, fd66::1).
A listener runs in ``pod`` as UID 1337 on 15001/15006 and reports each connection's SO_ORIGINAL_DST.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab import netlab

pytestmark = pytest.mark.requires_root

POD, PEER = "10.66.0.2", "10.66.0.1"
ARGS = [
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    "1337",
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-b",
    "*",
    "-d",
    "15090,15021,7070",
    "-x",
    "10.66.0.128/25",
    "-o",
    "8081",
]


@pytest.fixture
def pod(flavor: str) -> Iterator[tuple[str, str, str]]:
    with netlab.namespace("pod") as pod_ns, netlab.namespace("peer") as peer_ns:
        netlab.link(pod_ns, f"{POD}/24", peer_ns, f"{PEER}/24")
        netlab.sh("ip", "addr", "add", "10.66.0.200/32", "dev", "lo", ns=peer_ns)  # inside the excluded /25
        netlab.sh("ip", "route", "add", "10.66.0.200/32", "via", PEER, ns=pod_ns)
        res = netlab.run_netinit("--network-namespace", pod_ns, "--force-iptables-binary", flavor, *ARGS)
        assert res.returncode == 0, res.stderr
        yield pod_ns, peer_ns, flavor


@pytest.fixture
def listener(pod: tuple[str, str, str]) -> Iterator[netlab.Proc]:
    proc = netlab.capture_listener(pod[0], [15001, 15006])
    try:
        yield proc
    finally:
        proc.stop()


def test_inbound_is_redirected_to_15006_with_original_destination(
    pod: tuple[str, str, str], listener: netlab.Proc
) -> None:
    _pod_ns, peer_ns, _ = pod
    assert netlab.connect(peer_ns, POD, 8080) == "captured-by-15006"
    (ev,) = netlab.events(listener)
    assert ev["port"] == 15006
    assert ev["orig_dst"] == [POD, 8080]


def test_outbound_from_app_uid_is_redirected_to_15001(pod: tuple[str, str, str], listener: netlab.Proc) -> None:
    pod_ns, _peer_ns, _ = pod
    assert netlab.connect(pod_ns, PEER, 9090, uid=1000) == "captured-by-15001"
    (ev,) = netlab.events(listener)
    assert ev["orig_dst"] == [PEER, 9090]


def test_proxy_uid_is_not_captured(pod: tuple[str, str, str], listener: netlab.Proc) -> None:
    pod_ns, peer_ns, _ = pod
    server = netlab.plain_server(peer_ns, "0.0.0.0", 9090)
    try:
        assert netlab.connect(pod_ns, PEER, 9090, uid=1337).startswith("direct:")
        assert netlab.connect(pod_ns, PEER, 9090, uid=1000) == "captured-by-15001"
    finally:
        server.stop()
    assert [e["orig_dst"] for e in netlab.events(listener)] == [[PEER, 9090]]


def test_excluded_ports_and_cidrs_are_not_captured(pod: tuple[str, str, str], listener: netlab.Proc) -> None:
    pod_ns, peer_ns, _ = pod
    inbound_excluded = netlab.plain_server(pod_ns, "0.0.0.0", 7070)
    out_port = netlab.plain_server(peer_ns, "0.0.0.0", 8081)
    out_cidr = netlab.plain_server(peer_ns, "10.66.0.200", 9090)
    try:
        assert netlab.connect(peer_ns, POD, 7070).startswith("direct:")  # -d 7070
        assert netlab.connect(pod_ns, PEER, 8081).startswith("direct:")  # -o 8081
        assert netlab.connect(pod_ns, "10.66.0.200", 9090).startswith("direct:")  # -x 10.66.0.128/25
    finally:
        for p in (inbound_excluded, out_port, out_cidr):
            p.stop()
    assert netlab.events(listener) == []


def test_app_to_itself_over_pod_ip_is_not_captured(pod: tuple[str, str, str], listener: netlab.Proc) -> None:
    pod_ns, _, _ = pod
    server = netlab.plain_server(pod_ns, "0.0.0.0", 5000)
    try:
        assert netlab.connect(pod_ns, POD, 5000, uid=1000).startswith("direct:")
    finally:
        server.stop()
    assert netlab.events(listener) == []


def test_rerun_keeps_capture_working(pod: tuple[str, str, str], listener: netlab.Proc) -> None:
    pod_ns, peer_ns, flavor = pod
    res = netlab.run_netinit("--network-namespace", pod_ns, "--force-iptables-binary", flavor, *ARGS)
    assert res.returncode == 0 and "already in place" in res.stderr
    assert netlab.connect(peer_ns, POD, 8080) == "captured-by-15006"


def test_run_validation_passes_on_applied_rules_and_fails_without(flavor: str) -> None:
    with netlab.namespace("pod") as pod_ns, netlab.namespace("peer") as peer_ns:
        netlab.link(pod_ns, f"{POD}/24", peer_ns, f"{PEER}/24")
        netlab.sh("ip", "route", "add", "default", "via", PEER, ns=pod_ns)  # as every pod has
        base = ["--network-namespace", pod_ns, "--force-iptables-binary", flavor]
        missing = netlab.run_netinit(*base, *ARGS, "--skip-rule-apply", "--run-validation")
        assert missing.returncode == 126, missing.stderr
        assert "did not reach the outbound port" in missing.stderr
        ok = netlab.run_netinit(*base, *ARGS, "--run-validation")
        assert ok.returncode == 0, ok.stderr
        assert "validation passed" in ok.stderr
