"""``--native-nftables`` captures and bypasses exactly what the iptables backend does, with real connections.

The connection matrix of ``test_explain_kernel`` (whose iptables results are checked there against ``explain``):
REDIRECT and TPROXY, IPv4 and IPv6 (``--dual-stack``), excluded CIDRs, ports and interfaces, DNS capture, owner
groups, the proxy's UIDs, lo traffic and the 127.0.0.6 passthrough. Each variant is set up twice in fresh
namespaces - once programmed by iptables-nft, once by native nftables - and every connection must end the same
way: captured by the same listener with the same original destination, bypassing to the same server, or failing.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from lab import netlab

from .test_explain_kernel import (
    _CLIENT,
    _LISTENER,
    IDS,
    PEER4,
    PEER6,
    POD4,
    POD6,
    VARIANTS,
    _start,
    inbound_matrix,
    outbound_matrix,
    topology,
)

pytestmark = pytest.mark.requires_root

BACKENDS = {"iptables-nft": ["--force-iptables-binary", "nft"], "native-nft": ["--native-nftables"]}


def _run(ns: str, conns: list[tuple[str, int, str | None]], uid: int, gid: int) -> list[dict[str, Any]]:
    res = netlab.sh(sys.executable, "-c", _CLIENT, json.dumps(conns), str(uid), str(gid), ns=ns)
    out: list[dict[str, Any]] = json.loads(res.stdout)
    return out


def outcomes(variant: str, backend: str) -> dict[str, str]:
    """Connection -> how it ended, e.g. ``uid=1000 -> 10.66.0.1:9090`` -> ``{"port": 15001, "orig": [...]}``."""
    flags, env = VARIANTS[variant]
    out: dict[str, str] = {}
    with topology(flags, env, BACKENDS[backend]) as (pod_ns, peer_ns, *_):
        for uid, gid in IDS:
            for (dst, port, src), seen in zip(
                outbound_matrix(), _run(pod_ns, outbound_matrix(), uid, gid), strict=True
            ):
                out[f"outbound uid={uid} gid={gid} {src or ''}-> {dst}:{port}"] = json.dumps(seen, sort_keys=True)
        for (dst, port, _src), seen in zip(inbound_matrix(), _run(peer_ns, inbound_matrix(), 0, 0), strict=True):
            out[f"inbound -> {dst}:{port}"] = json.dumps(seen, sort_keys=True)
    return out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_native_nftables_captures_and_bypasses_like_iptables(variant: str) -> None:
    ipt = outcomes(variant, "iptables-nft")
    native = outcomes(variant, "native-nft")
    assert ipt.keys() == native.keys()
    differ = [f"{k}: iptables {ipt[k]}, native nft {native[k]}" for k in ipt if ipt[k] != native[k]]
    assert not differ, "native nftables behaves differently:\n" + "\n".join(differ)
    # Not a degenerate comparison: both directions captured, in both families, and things bypassed.
    seen = "\n".join(native.values())
    for needle in ('"port": 15001', '"port": 15006', '"direct"', f'"{POD6}"', f'"{PEER6}"'):
        assert needle in seen, needle


# Envoy's original_src filter in TPROXY mode: the proxy connects to the app *from the client's address*
# (IP_TRANSPARENT, SO_MARK 1337). mangle PREROUTING saves that mark on the connection; the app's replies, addressed
# to the remote client, get it back in mangle OUTPUT and must be re-routed by it (fwmark 1337 -> table 133 -> lo)
# to the proxy. iptables' mangle OUTPUT re-routes on a mark change; nftables does so only in a `type route` chain.
_ORIGINAL_SRC = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, int(sys.argv[3]))
s.settimeout(2)
s.bind((sys.argv[1], 0))
try:
    s.connect((sys.argv[2], 8080))
    print(s.recv(200).decode().strip())
except OSError as e:
    print("error:", e)
"""


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_tproxy_original_source_replies_are_rerouted_to_the_proxy(backend: str) -> None:
    with netlab.namespace("pod") as pod_ns, netlab.namespace("peer") as peer_ns:
        netlab.link(pod_ns, f"{POD4}/24", peer_ns, f"{PEER4}/24")
        args = [*netlab.SIDECAR_ARGS, "-m", "TPROXY"]
        res = netlab.run_netinit("--network-namespace", pod_ns, *BACKENDS[backend], *args)
        assert res.returncode == 0, res.stderr
        app = netlab.plain_server(pod_ns, "0.0.0.0", 8080)
        try:
            marked = netlab.sh(sys.executable, "-c", _ORIGINAL_SRC, PEER4, POD4, "1337", ns=pod_ns).stdout.strip()
            unmarked = netlab.sh(sys.executable, "-c", _ORIGINAL_SRC, PEER4, POD4, "0", ns=pod_ns).stdout.strip()
        finally:
            app.stop()
    assert marked.startswith(f"direct:{PEER4}:"), marked  # the app saw the client's address, the proxy its reply
    assert unmarked.startswith("error:"), unmarked  # the control: without the mark the reply leaves for the peer


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_tproxy_without_a_listening_proxy_drops_instead_of_bypassing(backend: str) -> None:
    """iptables' TPROXY drops what no socket takes; nft's ``tproxy`` alone would let it fall through to the app
    (fail open), so the translation adds a ``drop`` after it."""
    with netlab.namespace("pod") as pod_ns, netlab.namespace("peer") as peer_ns:
        netlab.link(pod_ns, f"{POD4}/24", peer_ns, f"{PEER4}/24")
        res = netlab.run_netinit(
            "--network-namespace", pod_ns, *BACKENDS[backend], *netlab.SIDECAR_ARGS, "-m", "TPROXY"
        )
        assert res.returncode == 0, res.stderr
        app = netlab.plain_server(pod_ns, "0.0.0.0", 8080)
        try:
            assert netlab.connect(peer_ns, POD4, 8080, timeout=1.0) == ""  # no proxy on 15006: dropped, not the app
            proxy = _start(pod_ns, _LISTENER, [15006])
            try:
                got = json.loads(netlab.connect(peer_ns, POD4, 8080))  # the control: with a proxy it is captured
            finally:
                proxy.stop()
        finally:
            app.stop()
    assert got == {"port": 15006, "orig": [POD4, 8080]}
