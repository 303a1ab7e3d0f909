"""``netinit show`` and ``netinit explain`` on live native nftables tables (``--native-nftables``): read with
``nft list ruleset inet`` and translated back by ``nft_read``, they say what they say about the same rules applied
with iptables."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lab import netlab
from netinit.core.config import HostFacts, config_from_flags
from netinit.core.plan import plan
from netinit.debug.connection import Query
from netinit.debug.live import read_live
from netinit.rules import nft
from tests.support.cases import CASES

from .test_explain_kernel import (
    PEER4,
    POD4,
    VARIANTS,
    NetnsRunner,
    _observed,
    predict_and_connect,
    topology,
)

pytestmark = pytest.mark.requires_root

NATIVE = "live rules (native nftables)"


def cli(*args: str) -> tuple[int, dict[str, Any]]:
    res = netlab.run_netinit(*args, "--json")
    assert res.returncode in (0, 1), res.stderr
    return res.returncode, json.loads(res.stdout)


@pytest.mark.parametrize("name", sorted(CASES))
def test_native_tables_show_replans_the_applied_rules(name: str, netns: str) -> None:
    flags, env, facts = CASES[name]
    original = plan(config_from_flags(flags, env, facts))
    netlab.sh("nft", "-f", "-", ns=netns, input=nft.render_script(original))
    rc, doc = cli("show", "--network-namespace", netns)
    assert rc == 0
    assert (doc["rules"]["origin"], doc["rules"]["flavor"]) == (NATIVE, "native-nftables")
    assert doc["reproducible"] and doc["findings"] == [], doc
    f = doc["facts"]
    facts2 = HostFacts(f["has_global_ipv4"], f["has_global_ipv6"], tuple(f["dns_servers"]))
    again = plan(config_from_flags(doc["argv"], doc["env"], facts2))
    assert (again.v4, again.v6) == (original.v4, original.v6)


@pytest.mark.parametrize("mode", ["REDIRECT", "TPROXY"])
def test_apply_native_then_show_gives_flags_that_verify_clean(mode: str, netns: str) -> None:
    args = [*netlab.SIDECAR_ARGS, "-m", mode, "-x", "10.0.0.0/8", "-o", "8081"]
    applied = netlab.run_netinit("--network-namespace", netns, "--native-nftables", *args)
    assert applied.returncode == 0, applied.stderr
    rc, doc = cli("show", "--network-namespace", netns)
    assert rc == 0 and doc["rules"]["origin"] == NATIVE
    assert doc["reproducible"] and doc["findings"] == [], doc
    assert any("native nftables tables (inet istio-proxy-*)" in n for n in doc["notes"])
    shown = [str(a) for a in doc["argv"]]
    native = netlab.run_netinit("verify", "--network-namespace", netns, "--native-nftables", *shown)
    assert native.returncode == 0, native.stdout + native.stderr
    # verify without --native-nftables reads the same tables rule by rule, through nft_read
    rc, ver = cli("verify", "--network-namespace", netns, *shown)
    assert (rc, ver["ok"], ver["rules"]["origin"]) == (0, True, NATIVE), ver


def test_a_hand_written_rule_in_our_table_is_refused_with_its_line(netns: str) -> None:
    assert netlab.run_netinit("--network-namespace", netns, "--native-nftables", *netlab.SIDECAR_ARGS).returncode == 0
    netlab.sh("nft", "add", "rule", "inet", "istio-proxy-nat", "output", "ip", "protocol", "icmp", "accept", ns=netns)
    res = netlab.run_netinit("show", "--network-namespace", netns)
    assert res.returncode == 1
    assert "cannot read table inet istio-proxy-nat line" in res.stderr and "icmp" in res.stderr, res.stderr


QUERIES = (
    Query("outbound", f"{PEER4}:9090", uid=1000),
    Query("outbound", f"{PEER4}:9090", uid=1337),
    Query("outbound", "10.70.0.5:80", uid=1000),
    Query("outbound", "127.0.0.1:5000", uid=1000),
    Query("inbound", f"{POD4}:8080", src=PEER4),
    Query("inbound", f"{POD4}:15021", src=PEER4),
    Query("inbound", f"{POD4}:15008", src=PEER4),
)


def _explain_all(backend: list[str], args: list[str]) -> list[tuple[str, dict[str, Any]]]:
    with netlab.namespace("pod") as pod_ns, netlab.namespace("peer") as peer_ns:
        va, _vb = netlab.link(pod_ns, f"{POD4}/24", peer_ns, f"{PEER4}/24")
        netlab.sh("ip", "route", "add", "default", "via", PEER4, ns=pod_ns)
        assert netlab.run_netinit("--network-namespace", pod_ns, *backend, *args).returncode == 0
        out = []
        for q in QUERIES:
            argv = ["--direction", q.direction, "--dst", q.dst]
            argv += ["--src", q.src] if q.src else []
            argv += ["--uid", str(q.uid)] if q.uid is not None else []
            rc, doc = cli("explain", "--network-namespace", pod_ns, *argv)
            assert rc == 0
            verdict = json.loads(json.dumps(doc["verdict"]).replace(va, "VETH"))  # names differ per run
            out.append((doc["rules"]["origin"], verdict))
        return out


@pytest.mark.parametrize("mode", ["REDIRECT", "TPROXY"])
def test_explain_on_native_tables_gives_the_iptables_verdicts(mode: str) -> None:
    args = [*netlab.SIDECAR_ARGS, "-m", mode, "-x", "10.70.0.0/16"]
    ipt = _explain_all(["--force-iptables-binary", "nft"], args)
    native = _explain_all(["--native-nftables"], args)
    assert {o for o, _ in ipt} == {"live rules (iptables-nft)"} and {o for o, _ in native} == {NATIVE}
    assert [v for _, v in native] == [v for _, v in ipt]
    kinds = {v["kind"] for _, v in native}
    assert {"captured", "bypass"} <= kinds


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_explain_on_native_tables_agrees_with_the_kernel(variant: str) -> None:
    """test_explain_kernel's matrix, the rules applied with --native-nftables and read back with nft."""
    flags, env = VARIANTS[variant]
    with topology(flags, env, ["--native-nftables"]) as (pod_ns, peer_ns, *_):
        runner = NetnsRunner(pod_ns)
        live = read_live(runner)
        assert live.origin == NATIVE
        rows = predict_and_connect(pod_ns, peer_ns, live.texts, runner)
    mismatches = []
    for q, x, seen in rows:
        v = x.verdict
        kind, seen_port, orig = _observed(seen)
        dst = q.dst.rsplit(":", 1)[0].strip("[]")
        want_orig = [dst, int(q.dst.rsplit(":", 1)[1])]
        if not (v.kind == kind and v.port == seen_port and (kind == "dropped" or orig == want_orig)):
            mismatches.append(f"{q}: predicted {v.kind} {v.port} ({v.summary}), kernel: {seen}")
    assert not mismatches, "explain on native tables disagrees with the kernel:\n" + "\n".join(mismatches)
