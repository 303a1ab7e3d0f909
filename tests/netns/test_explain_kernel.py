"""``netinit explain`` must agree with the kernel: for a matrix of real connections through real rules, the verdict
predicted from the live rules is what actually happened.

Topology (both families): namespace ``pod`` <-va/vb-> ``peer`` (10.66.0.2/.1, fd66::2/::1) and a second link
<-vc/vd-> (10.88.0.2/.1, fd88::2/::1) that the flags exclude with ``-c``. The peer also owns 10.70.0.1 / fd70::1
(an excluded CIDR) and 10.77.0.1 / fd77::1 (outside the included CIDRs). In ``pod`` a listener (bound as root
with IP_TRANSPARENT, then running as uid 1337 like Envoy) answers on 15001/15006/15053 with the original
destination; plain servers answer "direct" with the address they were reached at.

Every connection of a batch runs in one client process per uid/gid (0, 1000, 1337, and 1000 with gid 2000),
so a whole matrix costs a handful of process starts. Rules are read once per namespace with the same edge code
the CLI uses (``netinit.debug.live.read_live``, ``build_connection`` -> ``ip route get`` in the namespace).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import pytest

from lab import netlab
from netinit.apply.runner import Completed
from netinit.core.plan import Family
from netinit.debug.connection import Query, build_connection
from netinit.debug.live import read_live
from netinit.debug.model import load_tables
from netinit.debug.verdict import Explanation
from netinit.debug.walker import explain

pytestmark = pytest.mark.requires_root

POD4, PEER4, POD_C4, PEER_C4 = "10.66.0.2", "10.66.0.1", "10.88.0.2", "10.88.0.1"
POD6, PEER6, POD_C6, PEER_C6 = "fd66::2", "fd66::1", "fd88::2", "fd88::1"
PEER_LO = ("10.70.0.1/32", "10.77.0.1/32", "fd70::1/128", "fd77::1/128")
POD_PORTS = (5000, 5001, 7070, 8080, 9999, 15008)
PEER_PORTS = (53, 8081, 9000, 9090)
LISTENER_PORTS = (15001, 15006, 15053)
IDS = ((0, 0), (1000, 1000), (1337, 1337), (1000, 2000))

# Variants: what each capture configuration exercises. VC is replaced by the excluded link's device name.
VARIANTS: dict[str, tuple[list[str], dict[str, str]]] = {
    "redirect-cidrs-dns": (
        [
            "-m",
            "REDIRECT",
            "-i",
            "10.66.0.0/16,10.70.0.0/16,10.88.0.0/16,fd66::/16,fd70::/16,fd88::/16",
            "-x",
            "10.70.0.0/16,fd70::/16",
            "-b",
            "*",
            "-d",
            "7070",
            "-q",
            "9000",
            "-o",
            "8081",
            "-c",
            "VC",
            "--redirect-dns",
            "--capture-all-dns",
        ],
        {},
    ),
    "redirect-ports-groups": (
        ["-m", "REDIRECT", "-i", "*", "-b", "8080,5000", "-o", "8081", "-c", "VC"],
        {"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "2000"},
    ),
    "tproxy-wildcard-inbound": (
        ["-m", "TPROXY", "-i", "10.66.0.0/16,fd66::/16", "-x", "10.70.0.0/16", "-b", "*", "-d", "7070", "-q", "9000"],
        {},
    ),
    "tproxy-port-list": (
        ["-m", "TPROXY", "-i", "*", "-x", "10.70.0.0/16,fd70::/16", "-b", "8080,5000-5001", "-o", "8081", "-c", "VC"],
        {},
    ),
}

_LISTENER = r"""
import json, os, select, socket, struct, sys
socks = {}
for port in [int(p) for p in sys.argv[1].split(",")]:
    for fam, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(socket.IPPROTO_IPV6, 75, 1)  # IPV6_TRANSPARENT: TPROXY delivers only to such sockets
        else:
            s.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
        s.bind((host, port)); s.listen(128); socks[s] = (port, fam)
os.setgroups([]); os.setgid(1337); os.setuid(1337)  # then run as the proxy, like Envoy
print("ready", flush=True)
while True:
    for s in select.select(list(socks), [], [])[0]:
        c, _ = s.accept()
        port, fam = socks[s]
        try:
            if fam == socket.AF_INET:
                p, ip = struct.unpack_from("!2xH4s", c.getsockopt(socket.SOL_IP, 80, 16))
                orig = [socket.inet_ntop(fam, ip), p]
            else:
                p, ip = struct.unpack_from("!2xH4x16s", c.getsockopt(socket.IPPROTO_IPV6, 80, 28))
                orig = [socket.inet_ntop(fam, ip), p]
        except OSError:
            orig = list(c.getsockname()[:2])  # not NATed (TPROXY): the local address is the original one
        c.sendall((json.dumps({"port": port, "orig": orig}) + "\n").encode()); c.close()
"""

_SERVER = r"""
import json, os, select, socket, sys
socks = []
for port in [int(p) for p in sys.argv[1].split(",")]:
    for fam, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port)); s.listen(128); socks.append(s)
os.setgroups([]); os.setgid(1000); os.setuid(1000)
print("ready", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        c, _ = s.accept()
        c.sendall((json.dumps({"direct": list(c.getsockname()[:2])}) + "\n").encode()); c.close()
"""

_CLIENT = r"""
import json, os, socket, sys
conns = json.loads(sys.argv[1]); uid, gid = int(sys.argv[2]), int(sys.argv[3])
os.setgroups([]); os.setgid(gid); os.setuid(uid)
out = []
for dst, port, src in conns:
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(1.5)
    try:
        if src:
            s.bind((src, 0))
        s.connect((dst, port))
        out.append(json.loads(s.makefile().readline() or '{"error": "closed"}'))
    except OSError as e:
        out.append({"error": str(e)})
    finally:
        s.close()
print(json.dumps(out))
"""


class NetnsRunner:
    """The CLI's Runner seam, run inside a namespace (``ip netns exec``), memoised: routes do not change here."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.memo: dict[tuple[str, ...], Completed] = {}

    def run(self, argv: Sequence[str], stdin: str | None = None) -> Completed:
        key = tuple(argv)
        if key not in self.memo:
            p = subprocess.run(
                ["ip", "netns", "exec", self.ns, *argv], input=stdin, capture_output=True, text=True, check=False
            )
            self.memo[key] = Completed(p.returncode, p.stdout, p.stderr)
        return self.memo[key]


class Pod(NamedTuple):
    pod: str
    peer: str
    vc: str  # the excluded interface in pod
    args: list[str]
    env: dict[str, str]


def _start(ns: str, script: str, ports: Sequence[int]) -> netlab.Proc:
    return netlab.Proc(ns, [sys.executable, "-c", script, ",".join(map(str, ports))])


@contextmanager
def topology(flags: list[str], env: dict[str, str], backend: list[str]) -> Iterator[Pod]:
    """Pod and peer namespaces (two links, dual stack, addresses on the peer's lo), programmed with ``flags``
    through ``backend`` (an iptables flavour, or native nftables), listeners and servers running."""
    with netlab.namespace("pod") as pod_ns, netlab.namespace("peer") as peer_ns:
        for ns in (pod_ns, peer_ns):
            netlab.sh("sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0", ns=ns)
        netlab.link(pod_ns, f"{POD4}/24", peer_ns, f"{PEER4}/24", v6=(f"{POD6}/64", f"{PEER6}/64"))
        vc, _vd = netlab.link(pod_ns, f"{POD_C4}/24", peer_ns, f"{PEER_C4}/24", v6=(f"{POD_C6}/64", f"{PEER_C6}/64"))
        for addr in PEER_LO:
            netlab.sh("ip", "addr", "add", addr, "dev", "lo", ns=peer_ns)
        netlab.sh("ip", "route", "add", "default", "via", PEER4, ns=pod_ns)
        netlab.sh("ip", "-6", "route", "add", "default", "via", PEER6, ns=pod_ns)
        args = [vc if a == "VC" else a for a in flags]
        res = netlab.run_netinit("--network-namespace", pod_ns, *backend, "--dual-stack", *args, env=env)
        assert res.returncode == 0, res.stderr
        procs = [
            _start(pod_ns, _LISTENER, LISTENER_PORTS),
            _start(pod_ns, _SERVER, POD_PORTS),
            _start(peer_ns, _SERVER, PEER_PORTS),
        ]
        try:
            yield Pod(pod_ns, peer_ns, vc, args, env)
        finally:
            for p in procs:
                p.stop()


@pytest.fixture(params=sorted(VARIANTS))
def pod(request: pytest.FixtureRequest, flavor: str) -> Iterator[Pod]:
    flags, env = VARIANTS[str(request.param)]
    with topology(flags, env, ["--force-iptables-binary", flavor]) as p:
        yield p


def outbound_matrix() -> list[tuple[str, int, str | None]]:
    """(destination, port, bound source): inside/outside the include and exclude CIDRs, excluded/included/DNS
    ports, over the veth, over the excluded link, and over lo (localhost, 127.0.0.2, the pod's own address, the
    tunnel port, and from the proxy's passthrough address)."""
    out: list[tuple[str, int, str | None]] = []
    for peer, excl, outside, peer_c, own, loop, passthrough in (
        (PEER4, "10.70.0.1", "10.77.0.1", PEER_C4, POD4, "127.0.0.1", "127.0.0.6"),
        (PEER6, "fd70::1", "fd77::1", PEER_C6, POD6, "::1", "::6"),
    ):
        out += [(peer, 9090, None), (peer, 8081, None), (peer, 53, None), (excl, 9090, None)]
        out += [(outside, 9090, None), (outside, 9000, None), (peer_c, 9090, None)]
        out += [(loop, 5000, None), (own, 5000, None), (own, 15008, None), (own, 5000, passthrough)]
    out.append(("127.0.0.2", 5000, None))
    return out


def inbound_matrix() -> list[tuple[str, int, str | None]]:
    """The pod's addresses on captured, listed, excluded, tunnel and unlisted ports; and over the excluded link."""
    dsts = [(d, p) for d in (POD4, POD6) for p in (8080, 5000, 5001, 7070, 15008, 9999)]
    dsts += [(POD_C4, 8080), (POD_C6, 8080)]
    return [(d, p, None) for d, p in dsts]


def _client(ns: str, conns: list[tuple[str, int, str | None]], uid: int, gid: int) -> subprocess.Popen[str]:
    argv = ["ip", "netns", "exec", ns, sys.executable, "-c", _CLIENT, json.dumps(conns), str(uid), str(gid)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _observed(result: dict[str, Any]) -> tuple[str, int | None, Any]:
    """What happened, in explain's terms: (kind, port, original destination seen by the listener)."""
    if "port" in result:
        return "captured", int(result["port"]), result["orig"]
    if "direct" in result:
        return "bypass", int(result["direct"][1]), result["direct"]
    return "dropped", None, result.get("error")


def run_matrix(p: Pod, flavor: str) -> list[tuple[Query, Explanation, dict[str, Any]]]:
    """Predict every connection from the live rules, make them all for real, return (query, prediction, seen)."""
    runner = NetnsRunner(p.pod)
    live = read_live(runner, flavor)
    assert live.flavor == flavor
    return predict_and_connect(p.pod, p.peer, live.texts, runner)


def predict_and_connect(
    pod_ns: str, peer_ns: str, texts: Mapping[Family, str], runner: NetnsRunner
) -> list[tuple[Query, Explanation, dict[str, Any]]]:
    """The matrix against rules already read (``texts`` per family): (query, prediction, what happened)."""
    tables = {fam: load_tables(texts[fam], fam) for fam in (4, 6)}
    out_conns = outbound_matrix()
    in_conns = inbound_matrix()
    clients = [(uid, gid, _client(pod_ns, out_conns, uid, gid)) for uid, gid in IDS]
    inbound = _client(peer_ns, in_conns, 0, 0)
    rows: list[tuple[Query, Explanation, dict[str, Any]]] = []
    for uid, gid, proc in clients:
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        for (dst, port, src), seen in zip(out_conns, json.loads(stdout), strict=True):
            q = Query("outbound", f"[{dst}]:{port}" if ":" in dst else f"{dst}:{port}", src, uid=uid, gid=gid)
            rows.append((q, _predict(tables, q, runner), seen))
    stdout, stderr = inbound.communicate(timeout=60)
    assert inbound.returncode == 0, stderr
    for (dst, port, _src), seen in zip(in_conns, json.loads(stdout), strict=True):
        src = PEER_C4 if dst == POD_C4 else PEER_C6 if dst == POD_C6 else PEER4 if "." in dst else PEER6
        q = Query("inbound", f"[{dst}]:{port}" if ":" in dst else f"{dst}:{port}", src)
        rows.append((q, _predict(tables, q, runner), seen))
    return rows


def _predict(tables: dict[int, Any], q: Query, runner: NetnsRunner) -> Explanation:
    conn, _notes, unroutable = build_connection(q, live=True, runner=runner)
    assert conn is not None, unroutable
    return explain(tables[conn.dst.version], conn)


def test_explain_agrees_with_the_kernel(pod: Pod, flavor: str) -> None:
    rows = run_matrix(pod, flavor)
    mismatches = []
    kinds: set[tuple[str, int | None]] = set()
    for q, x, seen in rows:
        v = x.verdict
        kind, port, orig = _observed(seen)
        kinds.add((kind, port if kind == "captured" else None))
        dst = q.dst.rsplit(":", 1)[0].strip("[]")
        want_orig = [dst, int(q.dst.rsplit(":", 1)[1])]
        agree = v.kind == kind and v.port == port and (kind == "dropped" or orig == want_orig)
        if not agree:
            mismatches.append(f"{q}: predicted {v.kind} {v.port} ({v.summary}), kernel: {seen}")
    assert not mismatches, "explain disagrees with the kernel:\n" + "\n".join(mismatches)
    # The matrix really exercises capture both ways and bypass (not a degenerate all-bypass run).
    assert {("captured", 15001), ("captured", 15006), ("bypass", None)} <= kinds
    if "--capture-all-dns" in pod.args:
        assert ("captured", 15053) in kinds
    assert len(rows) == len(IDS) * len(outbound_matrix()) + len(inbound_matrix())


def test_cli_on_live_namespace_matches_the_in_process_prediction(flavor: str) -> None:
    """The subprocess CLI (setns, backend detection, route lookup) says what the in-process walk says."""
    with netlab.namespace("pod") as pod_ns, netlab.namespace("peer") as peer_ns:
        netlab.link(pod_ns, f"{POD4}/24", peer_ns, f"{PEER4}/24")
        netlab.sh("ip", "route", "add", "default", "via", PEER4, ns=pod_ns)
        args = [*netlab.SIDECAR_ARGS, "-x", "10.70.0.0/16"]
        assert (
            netlab.run_netinit("--network-namespace", pod_ns, "--force-iptables-binary", flavor, *args).returncode == 0
        )
        runner = NetnsRunner(pod_ns)
        live = read_live(runner, None)
        assert live.flavor == flavor  # detection: the flavour that holds netinit's rules
        tables = load_tables(live.texts[4], 4)
        for q, summary in (
            (Query("outbound", f"{PEER4}:9090", uid=1000), "captured → outbound listener 15001"),
            (Query("outbound", f"{PEER4}:9090", uid=1337), "bypass: proxy UID 1337"),
            (Query("outbound", "10.70.0.5:80", uid=1000), "bypass: excluded CIDR 10.70.0.0/16"),
            (Query("inbound", f"{POD4}:8080", src=PEER4), "captured → inbound 15006"),
            (Query("inbound", f"{POD4}:15021", src=PEER4), "bypass: excluded inbound port 15021"),
        ):
            cli = ["--direction", q.direction, "--dst", q.dst, "--json"]
            cli += ["--src", q.src] if q.src else []
            cli += ["--uid", str(q.uid)] if q.uid is not None else []
            res = netlab.run_netinit("explain", "--network-namespace", pod_ns, *cli)
            assert res.returncode == 0, res.stderr
            doc = json.loads(res.stdout)
            predicted = _predict({4: tables}, q, runner)
            assert doc["verdict"] == predicted.verdict.to_json()
            assert doc["verdict"]["summary"].startswith(summary)
            assert doc["rules"]["flavor"] == flavor
        no_route = netlab.run_netinit(
            "explain", "--network-namespace", pod_ns, "--direction", "outbound", "--dst", "[fd00::1]:80", "--uid", "0"
        )
        assert no_route.returncode == 0 and "verdict: no route to fd00::1" in no_route.stdout
