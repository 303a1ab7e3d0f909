"""The standalone bootstrap in a real Envoy, in a real namespace, as the proxy uid 1337.

First alone (readiness and metrics ports answer), then behind netinit's sidecar rules, where real connections
from the app uid and from a peer namespace must be carried by Envoy's passthrough clusters.

Topology of the traffic test: ``pod`` (10.67.0.2) <-veth-> ``peer`` (10.67.0.1).
"""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from injector.core.envoy_bootstrap import bootstrap
from lab import netlab
from lab.shell import in_netns

pytestmark = pytest.mark.requires_root

POD, PEER = "10.67.0.2", "10.67.0.1"
ADMIN = "http://127.0.0.1:15000"


def curl(ns: str, url: str) -> tuple[int, str]:
    """(HTTP status, stripped body) of a GET from inside ``ns``; status 0 when nothing answered in time."""
    res = netlab.sh("curl", "-s", "-m", "2", "-w", "\n%{http_code}", url, ns=ns, check=False)
    body, _, code = res.stdout.rpartition("\n")
    return int(code or 0), body.strip()


def stats(ns: str) -> dict[str, str]:
    code, body = curl(ns, f"{ADMIN}/stats")
    assert code == 200
    return dict(line.split(": ", 1) for line in body.splitlines() if ": " in line)


def envoy(ns: str, log: Path, wrap: tuple[str, ...] = ()) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """Envoy with the default bootstrap inside ``ns`` as uid/gid 1337, ready within 5 s; killed after."""
    return netlab.envoy(ns, bootstrap(), log, wrap=wrap, timeout=5)


def test_envoy_answers_readiness_and_metrics_as_the_proxy_uid(netns: str, tmp_path: Path) -> None:
    with envoy(netns, tmp_path / "envoy.log") as proc:
        status = dict(line.split(":", 1) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines())
        assert status["Name"].strip() == "envoy"
        assert status["Uid"].split()[:2] == ["1337", "1337"] and status["Gid"].split()[:2] == ["1337", "1337"]
        assert curl(netns, "http://127.0.0.1:15021/healthz/ready") == (200, "LIVE")
        code, body = curl(netns, "http://127.0.0.1:15090/stats/prometheus")
        assert code == 200
        assert "# TYPE envoy_server_live gauge" in body and "envoy_server_live{} 1" in body
        # Only those two paths are exposed off-loopback, not the admin API.
        assert curl(netns, "http://127.0.0.1:15090/quitquitquit")[0] == 404
        assert curl(netns, "http://127.0.0.1:15021/ready")[0] == 404


def test_dialling_a_capture_port_directly_is_black_holed_not_looped(netns: str, tmp_path: Path) -> None:
    with envoy(netns, tmp_path / "envoy.log"):
        for port in (15001, 15006):
            assert netlab.connect(netns, "127.0.0.1", port, uid=1000) == ""  # closed at once, no echo from anywhere
        s = stats(netns)
        assert s["cluster.BlackHoleCluster.upstream_cx_none_healthy"] == "2"
        assert s["cluster.PassthroughCluster.upstream_cx_total"] == "0"
        assert s["cluster.InboundPassthroughCluster.upstream_cx_total"] == "0"
        assert curl(netns, "http://127.0.0.1:15021/healthz/ready") == (200, "LIVE")


def test_captured_traffic_is_carried_by_envoy(netns: str, tmp_path: Path) -> None:
    pod = netns
    with netlab.namespace("peer") as peer:
        netlab.link(pod, f"{POD}/24", peer, f"{PEER}/24")
        res = netlab.run_netinit(*netlab.SIDECAR_ARGS, "--network-namespace", pod)
        assert res.returncode == 0, res.stderr
        app = netlab.plain_server(pod, "0.0.0.0", 8080, uid=1000)
        remote = netlab.plain_server(peer, "0.0.0.0", 9090, uid=1000)
        try:
            with envoy(pod, tmp_path / "envoy.log"):
                before = stats(pod)
                # Outbound from the app uid: captured to 15001, forwarded to the original destination from the pod IP.
                assert netlab.connect(pod, PEER, 9090, uid=1000).startswith(f"direct:{POD}:")
                # Inbound from the peer: captured to 15006, delivered to the app from 127.0.0.6 (not re-captured).
                assert netlab.connect(peer, POD, 8080).startswith("direct:127.0.0.6:")
                # The kubelet's probe port is excluded from capture and still answers from outside.
                assert curl(peer, f"http://{POD}:15021/healthz/ready") == (200, "LIVE")
                after = stats(pod)
        finally:
            app.stop()
            remote.stop()
    for name in ("PassthroughCluster", "InboundPassthroughCluster"):
        key = f"cluster.{name}.upstream_cx_total"
        assert (int(before[key]), int(after[key])) == (0, 1), name
    assert int(after["cluster.InboundPassthroughCluster.upstream_cx_connect_fail"]) == 0
    assert int(after["listener.0.0.0.0_15006.downstream_cx_total"]) == 1


HOLDER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(4096)
print("ready", flush=True)
held = []
while True:
    c, _ = s.accept(); c.sendall(b"ok\n"); held.append(c)
"""

OPENER = r"""
import json, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held, ok = [], 0
for _ in range(n):
    try:
        c = socket.create_connection((host, port), timeout=5)
        held.append(c)
        ok += c.recv(3) == b"ok\n"
    except OSError:
        pass
print(json.dumps({"ok": ok, "opened": len(held)}), flush=True)
sys.stdin.readline()  # hold every connection until the test has read Envoy's stats
"""


def test_more_than_envoys_default_1024_connections_pass_through_at_once(netns: str, tmp_path: Path) -> None:
    """Envoy's default circuit breaker allows 1024 connections per cluster; an app holding more (a connection
    pool, a fan-out) would have the rest closed by the sidecar. Istio sets its passthrough clusters' thresholds
    to the maximum, and so does this bootstrap."""
    pod, n = netns, 1100
    with netlab.namespace("peer") as peer:
        netlab.link(pod, f"{POD}/24", peer, f"{PEER}/24")
        assert netlab.run_netinit(*netlab.SIDECAR_ARGS, "--network-namespace", pod).returncode == 0
        remote = netlab.Proc(peer, [sys.executable, "-c", HOLDER, "0.0.0.0", "9090"], uid=1000)
        try:
            with envoy(pod, tmp_path / "envoy.log"):
                opener = subprocess.Popen(
                    [*in_netns(pod, 1000), sys.executable, "-c", OPENER, PEER, "9090", str(n)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                assert opener.stdout is not None and opener.stdin is not None
                result = json.loads(opener.stdout.readline() or "{}")
                held = stats(pod)
                opener.stdin.close()
                opener.wait(timeout=30)
        finally:
            remote.stop()
    assert result == {"ok": n, "opened": n}, result
    assert held["cluster.PassthroughCluster.upstream_cx_overflow"] == "0"
    assert int(held["cluster.PassthroughCluster.upstream_cx_active"]) == n


def test_envoy_raises_its_open_files_soft_limit_to_the_hard_limit(netns: str, tmp_path: Path) -> None:
    """docs/how-it-works.md relies on it: a runtime's soft limit of 1024 (containerd 2) does not cap the sidecar."""
    with envoy(netns, tmp_path / "envoy.log", wrap=("prlimit", "--nofile=1024:8192")) as proc:
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
    line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
    assert line.split()[3:5] == ["8192", "8192"], line
