"""``--run-validation`` per captured family, and a diagnosis that says what actually happened.

Topology: ``pod`` <-veth-> ``peer``; the pod's default route(s) point at the peer. The peer forwards (set here
explicitly, not inherited from the host) but has nowhere to send the probe, so it answers ICMP unreachable: with
rules missing the probe must be reported as having left the pod uncaptured, not as "no route".
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab import netlab

pytestmark = pytest.mark.requires_root

ARGS = list(netlab.SIDECAR_ARGS)


def _pod(v4: bool, v6: bool, forwarding: bool) -> Iterator[tuple[str, str]]:
    with netlab.namespace("vp") as pod, netlab.namespace("vq") as peer:
        da, _db = netlab.link(pod, "10.81.0.2/24", peer, "10.81.0.1/24", v6=("fd81::2/64", "fd81::1/64"))
        if not v4:
            netlab.sh("ip", "-4", "addr", "flush", "dev", da, ns=pod)
        if v4:
            netlab.sh("ip", "route", "add", "default", "via", "10.81.0.1", ns=pod)
        if v6:
            netlab.sh("ip", "-6", "route", "add", "default", "via", "fd81::1", ns=pod)
        else:
            netlab.sh("ip", "-6", "addr", "flush", "dev", da, ns=pod)
        for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
            netlab.sh("sysctl", "-qw", f"{key}={int(forwarding)}", ns=peer)
        yield pod, peer


@pytest.fixture
def v6_only() -> Iterator[tuple[str, str]]:
    yield from _pod(v4=False, v6=True, forwarding=True)


@pytest.fixture
def dual_stack() -> Iterator[tuple[str, str]]:
    yield from _pod(v4=True, v6=True, forwarding=True)


@pytest.fixture
def forwarding_peer() -> Iterator[tuple[str, str]]:
    yield from _pod(v4=True, v6=False, forwarding=True)


def run(ns: str, flavor: str, *args: str) -> tuple[int, str]:
    res = netlab.run_netinit("--network-namespace", ns, "--force-iptables-binary", flavor, *args)
    return res.returncode, res.stderr


def test_ipv6_only_pod_is_validated_over_ipv6(v6_only: tuple[str, str], flavor: str) -> None:
    pod, _ = v6_only
    rc, err = run(pod, flavor, *ARGS, "--run-validation")
    assert rc == 0, err
    assert "IPv6 outbound" in err and "IPv6 loopback" in err and "validation passed" in err
    assert "IPv4 not probed" in err and "no route to the probe destination" not in err


def test_dual_stack_validates_both_families(dual_stack: tuple[str, str], flavor: str) -> None:
    pod, _ = dual_stack
    rc, err = run(pod, flavor, *ARGS, "--dual-stack", "--run-validation")
    assert rc == 0, err
    for part in ("IPv4 outbound", "IPv4 loopback", "IPv6 outbound", "IPv6 loopback"):
        assert part in err
    # IPv6 capture removed (an IPv4-only apply over a clean namespace): the IPv6 probe fails, exit 126.
    assert run(pod, flavor, "--cleanup-only")[0] == 0
    assert run(pod, flavor, *ARGS)[0] == 0
    rc, err = run(pod, flavor, *ARGS, "--dual-stack", "--skip-rule-apply", "--run-validation")
    assert rc == 126, err
    assert "[2001:db8::1]:80 did not reach the outbound port 15001" in err or "::6 is not an address of lo" in err


def test_forwarding_peer_unreachable_is_not_called_no_route(forwarding_peer: tuple[str, str], flavor: str) -> None:
    pod, _ = forwarding_peer
    rc, err = run(pod, flavor, *ARGS, "--skip-rule-apply", "--run-validation", "--probe-timeout", "3s")
    assert rc == 126, err
    assert "did not reach the outbound port 15001" in err
    assert "answered unreachable" in err and "no route" not in err


def test_no_route_is_reported_as_a_local_route_failure(netns: str, flavor: str) -> None:
    rc, err = run(netns, flavor, *ARGS, "--run-validation")
    assert rc == 126, err
    assert "no route to the probe destination 192.0.2.1 in this namespace" in err


def test_probe_port_drives_the_loopback_probe(forwarding_peer: tuple[str, str], flavor: str) -> None:
    pod, _ = forwarding_peer
    rc, err = run(pod, flavor, *ARGS, "--run-validation", "--iptables-probe-port", "15999")
    assert rc == 0 and "IPv4 loopback" in err, err
    # The tunnel port is never captured: Istio's probe on it could not work; said, not failed.
    rc, err = run(pod, flavor, *ARGS, "--run-validation", "--iptables-probe-port", "15008")
    assert rc == 0 and "is the tunnel port" in err, err


def test_a_captured_proxy_uid_fails_validation_on_a_network_that_drops_silently(
    forwarding_peer: tuple[str, str], flavor: str
) -> None:
    """Rules that exempt another uid (4242) capture the proxy uid 1337's own traffic: a loop in a real pod. The
    bypass probe must see it; and where the network silently drops the uncaptured probe (blackhole), the passing
    case must still pass, without waiting for that connection to fail."""
    pod, peer = forwarding_peer
    netlab.sh("ip", "route", "add", "blackhole", "192.0.2.0/24", ns=peer)
    wrong = [*ARGS[: ARGS.index("-u")], "-u", "4242", "-g", "4242", *ARGS[ARGS.index("-u") + 2 :]]
    rc, err = run(pod, flavor, *wrong)
    assert rc == 0, err
    rc, err = run(pod, flavor, *ARGS, "--skip-rule-apply", "--run-validation")
    assert rc == 126 and "traffic of the proxy uid 1337 was captured" in err, err
    rc, err = run(pod, flavor, *ARGS, "--reconcile", "--run-validation")
    assert rc == 0 and "validation passed" in err, err
