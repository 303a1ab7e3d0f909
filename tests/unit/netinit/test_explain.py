"""``netinit explain``, pure: the rule parser, the three-valued matcher, the walk and the verdict words, over the
plan's own read-back text (``planned_save``). The kernel-agreement test (tests/netns/test_explain_kernel.py)
checks the same walk against real traffic."""

from __future__ import annotations

import ipaddress
import json

import pytest

from lab import netlab
from netinit.core.config import HostFacts, config_from_flags
from netinit.core.plan import Family, plan
from netinit.debug.matcher import match_rule
from netinit.debug.model import NOT_LO, Connection, Packet, load_tables
from netinit.debug.verdict import Explanation
from netinit.debug.walker import explain
from netinit.rules.save import parse_rule, planned_save
from tests.support.cases import CASES

A = ipaddress.ip_address
ISTIO = [*netlab.SIDECAR_ARGS, "-x", "10.0.0.0/8", "-o", "25"]
POD = "10.66.0.2"


def walk(flags: list[str], conn: Connection, env: dict[str, str] | None = None, extra: str = "") -> Explanation:
    rs = plan(config_from_flags(flags, env or {}, HostFacts(has_global_ipv6=conn.dst.version == 6)))
    fam: Family = 6 if conn.dst.version == 6 else 4
    text = planned_save(rs.family(fam))
    if extra:
        text = extra + text
    return explain(load_tables(text, fam), conn)


def out(dst: str, port: int, uid: int | None = 1000, iface: str = NOT_LO, **kw: object) -> Connection:
    gid = kw.pop("gid", uid)
    return Connection("outbound", A(dst), port, uid=uid, gid=gid, out_iface=iface, **kw)  # type: ignore[arg-type]


def inb(port: int, dst: str = POD, iface: str = NOT_LO, **kw: object) -> Connection:
    return Connection("inbound", A(dst), port, in_iface=iface, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(CASES))
def test_parse_rule_inverts_spec_for_every_planned_rule(name: str) -> None:
    flags, env, facts = CASES[name]
    rs = plan(config_from_flags(flags, env, facts))
    for fam in rs.families():
        for r in rs.family(fam):
            parsed, goto, problem = parse_rule(r.table, r.chain, r.spec())
            assert problem is None and not goto
            assert parsed == r._replace(insert_at=None)


def test_parse_rule_reads_foreign_rules_and_reports_what_it_cannot() -> None:
    r, goto, problem = parse_rule(
        "nat", "OUTPUT", '-m comment --comment "kube: a b" -m addrtype --dst-type LOCAL -g KUBE'
    )
    assert problem is None and goto and r is not None
    assert r.target == "KUBE"
    assert [m.module for m in r.matches] == ["comment", "addrtype"]
    assert r.matches[0].opts == (("comment", "kube: a b"),)
    assert parse_rule("nat", "OUTPUT", "-f -j RETURN")[2] == "unsupported option '-f'"
    assert parse_rule("nat", "OUTPUT", '-m comment --comment "open')[2] is not None


VERDICTS = [
    (out("1.2.3.4", 80), "captured → outbound listener 15001 (original destination kept)"),
    (out("1.2.3.4", 80, uid=0), "captured → outbound listener 15001 (original destination kept)"),
    (out("1.2.3.4", 80, uid=1337), "bypass: proxy UID 1337"),
    (out("1.2.3.4", 80, uid=1000, gid=1337), "bypass: proxy GID 1337"),
    (out("10.1.2.3", 80), "bypass: excluded CIDR 10.0.0.0/8 (from -x / excludeOutboundIPRanges)"),
    (out("1.2.3.4", 25), "bypass: excluded outbound port 25 (from -o / excludeOutboundPorts)"),
    (out("1.2.3.4", 25, proto="udp"), "bypass: excluded outbound port 25 (from -o / excludeOutboundPorts)"),
    (out("1.2.3.4", 5353, proto="udp"), "bypass: not TCP (udp: only TCP is redirected)"),
    (out("127.0.0.1", 8080, iface="lo", src=A("127.0.0.1")), "bypass: the app talking to this pod over lo"),
    (out("127.0.0.1", 8080, uid=1337, iface="lo", src=A("127.0.0.1")), "bypass: proxy UID 1337"),
    (out(POD, 8080, iface="lo", src=A(POD)), "bypass: the app talking to this pod over lo"),
    (out(POD, 8080, uid=1337, iface="lo", src=A(POD)), "captured → inbound 15006 (the proxy calling an address"),
    (out(POD, 15008, uid=1337, iface="lo", src=A(POD)), "bypass: proxy UID 1337"),
    (out(POD, 8080, uid=1337, iface="lo", src=A("127.0.0.6")), "bypass: from 127.0.0.6, the proxy's inbound"),
    (inb(8080), "captured → inbound 15006"),
    (inb(15021), "bypass: excluded inbound port 15021 (from -d / excludeInboundPorts)"),
    (inb(15008), "bypass: inbound tunnel port 15008 (-e: never captured)"),
    (inb(53, proto="udp"), "bypass: not TCP (udp: only TCP is captured inbound)"),
]


@pytest.mark.parametrize(("conn", "summary"), VERDICTS, ids=[s for _, s in VERDICTS])
def test_verdict_in_words(conn: Connection, summary: str) -> None:
    v = walk(ISTIO, conn).verdict
    assert v.summary.startswith(summary), v
    assert v.kind == summary.split(" ")[0].rstrip(":")


def test_captured_verdict_names_port_listener_and_deciding_rule() -> None:
    v = walk(ISTIO, out("1.2.3.4", 80)).verdict
    assert (v.kind, v.port, v.listener) == ("captured", 15001, "outbound")
    assert v.rule == "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"
    b = walk(ISTIO, out("10.1.2.3", 80)).verdict
    assert (b.kind, b.port, b.rule) == ("bypass", 80, "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j RETURN")
    assert b.delivered == "goes to 10.1.2.3:80 unchanged via a non-lo interface"


def test_dns_capture() -> None:
    flags = [*ISTIO, "--redirect-dns", "--capture-all-dns"]
    for proto in ("tcp", "udp"):
        v = walk(flags, out("10.96.0.10", 53, proto=proto)).verdict
        assert (v.summary, v.listener) == ("DNS → 15053", "dns")
    assert walk(flags, out("10.96.0.10", 53, uid=1337, proto="udp")).verdict.summary == "bypass: proxy UID 1337"


def test_inbound_capture_off_and_kube_virt_and_excluded_interfaces() -> None:
    off = walk(["-i", "*"], inb(8080)).verdict
    assert off.summary.startswith("bypass: inbound capture is off")
    virt = walk(["-k", "eth1", "-i", "*", "-b", "*"], inb(8080, iface="eth1")).verdict
    assert virt.summary == "captured → outbound listener 15001 (original destination kept)"
    excl = walk([*ISTIO, "-c", "eth9"], out("1.2.3.4", 80, iface="eth9")).verdict
    assert excl.summary == "bypass: excluded interface eth9 (from -c / excludeInterfaces)"
    excl_in = walk([*ISTIO, "-c", "eth9"], inb(8080, iface="eth9")).verdict
    assert excl_in.summary == "bypass: excluded interface eth9 (from -c / excludeInterfaces)"


def test_owner_groups() -> None:
    env = {"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "2000"}
    v = walk(["-i", "*"], out("1.2.3.4", 80, gid=2000), env).verdict
    assert v.summary == "bypass: excluded owner group 2000 (ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE)"
    inc = walk(["-i", "*"], out("1.2.3.4", 80, gid=3000), {"ISTIO_OUTBOUND_OWNER_GROUPS": "2000"}).verdict
    assert inc.summary == "bypass: owner group not in ISTIO_OUTBOUND_OWNER_GROUPS (2000)"


def test_tproxy_inbound_and_the_proxys_marked_loopback_traffic() -> None:
    flags = [*netlab.SIDECAR_ARGS, "-m", "TPROXY"]
    v = walk(flags, inb(8080)).verdict
    assert v.summary.startswith("captured → inbound 15006 (TPROXY: original destination kept")
    assert v.rule is not None and "-j TPROXY --on-port 15006" in v.rule
    # The proxy's own call to the pod IP: mangle OUTPUT marks it 0x53a, nat sends it to 15006; on lo the mark
    # keeps mangle ISTIO_INBOUND from returning it, and TPROXY skips it because nat rewrote it to 127.0.0.1.
    x = walk(flags, out(POD, 8080, uid=1337, iface="lo", src=A(POD)))
    assert x.verdict.summary.startswith("captured → inbound 15006 (the proxy calling")
    assert any("0x0 -> 0x53a" in s.action for s in x.steps)
    assert any(s.result == "note" and "loops back over lo" in s.why for s in x.steps)
    assert ("mangle", "ISTIO_INBOUND") in {(s.table, s.chain) for s in x.steps}
    assert ("nat", "PREROUTING") not in {(s.table, s.chain) for s in x.steps if s.result != "note"}
    # ... and on the tunnel port nat leaves it alone, so the marked packet meets TPROXY on lo.
    t = walk(flags, out(POD, 15008, uid=1337, iface="lo", src=A(POD))).verdict
    assert t.summary.startswith("captured → inbound 15006 (TPROXY")
    app = walk(flags, out(POD, 8080, iface="lo", src=A(POD))).verdict
    assert app.summary.startswith("bypass: the app talking to this pod over lo")


def test_ipv6() -> None:
    v = walk([*ISTIO, "--dual-stack"], out("fd00::1", 443)).verdict
    assert v.summary.startswith("captured → outbound listener 15001")
    lo = walk([*ISTIO, "--dual-stack"], out("fd66::2", 80, uid=1337, iface="lo", src=A("::6"))).verdict
    assert lo.summary.startswith("bypass: from ::6, the proxy's inbound passthrough")


def test_cannot_decide_is_said_not_guessed() -> None:
    no_uid = walk(ISTIO, out("1.2.3.4", 80, uid=None)).verdict
    assert no_uid.kind == "unknown"
    assert "--uid-owner 1337: the socket's uid is not known (pass --uid)" in no_uid.summary
    iface = walk([*ISTIO, "-c", "eth9"], out("1.2.3.4", 80)).verdict
    assert iface.kind == "unknown" and "the output interface is not lo, but which one is not known" in iface.summary


def test_unknown_match_and_target_stop_the_walk_unless_certainly_false() -> None:
    foreign = "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -m addrtype --dst-type LOCAL -j RETURN\nCOMMIT\n"
    v = walk(ISTIO, out("1.2.3.4", 80), extra=foreign).verdict
    assert v.kind == "unknown"
    assert v.summary == ("cannot decide at nat OUTPUT #1: unknown match '-m addrtype --dst-type LOCAL' - cannot decide")
    udp_only = "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p udp -m addrtype --dst-type LOCAL -j RETURN\nCOMMIT\n"
    assert walk(ISTIO, out("1.2.3.4", 80), extra=udp_only).verdict.kind == "captured"
    odd = "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp -m tcp --dport http -j RETURN\nCOMMIT\n"
    assert "cannot read a value in this rule" in walk(ISTIO, out("1.2.3.4", 80), extra=odd).verdict.summary
    dnat = "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp -j DNAT --to-destination 1.1.1.1\nCOMMIT\n"
    assert walk(ISTIO, out("1.2.3.4", 80), extra=dnat).verdict.summary.endswith("unknown target 'DNAT' - cannot decide")


def test_a_foreign_accept_before_our_jump_is_named() -> None:
    accept = "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -o eth9 -j ACCEPT\nCOMMIT\n"
    v = walk(ISTIO, out("1.2.3.4", 80, iface="eth9"), extra=accept).verdict
    assert v.summary == "bypass: accepted by nat OUTPUT #1 before capture (not a netinit rule)"
    assert v.rule == "-A OUTPUT -o eth9 -j ACCEPT"
    assert walk(ISTIO, out("1.2.3.4", 80, iface="eth0"), extra=accept).verdict.kind == "captured"


def test_drops_and_policies() -> None:
    policy = "*filter\n:OUTPUT DROP [0:0]\nCOMMIT\n"
    v = walk(ISTIO, out("10.1.2.3", 80), extra=policy).verdict
    assert (v.kind, v.summary) == ("dropped", "dropped by the policy of filter OUTPUT (DROP)")
    # filter INPUT runs after nat PREROUTING: it sees the redirected port, not the one the client asked for.
    reject = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 8080 -j REJECT\nCOMMIT\n"
    assert walk(ISTIO, inb(8080), extra=reject).verdict.summary == "captured → inbound 15006"
    reject = reject.replace("8080", "15006")
    assert walk(ISTIO, inb(8080), extra=reject).verdict.summary == "dropped by filter INPUT #1"
    # --drop-invalid drops INVALID packets; the first packet of a connection is NEW.
    assert walk([*ISTIO, "--drop-invalid"], inb(8080)).verdict.summary == "captured → inbound 15006"


def test_matcher_is_three_valued() -> None:
    rule, _, _ = parse_rule("nat", "ISTIO_OUTPUT", "-o lo -m owner ! --uid-owner 1337 -j RETURN")
    assert rule is not None
    base = Packet("tcp", A("10.0.0.1"), A("1.2.3.4"), None, 80, "", NOT_LO, 1000, 1000, True)
    assert match_rule(rule, base)[0] is False  # certainly not lo
    assert match_rule(rule, base._replace(out_iface="lo"))[0] is True
    assert match_rule(rule, base._replace(out_iface="lo", uid=None))[0] is None
    assert match_rule(rule, base._replace(out_iface=None, uid=1337))[0] is False  # the owner part decides
    sport, _, _ = parse_rule("raw", "X", "-p udp -m udp --sport 15053 -j CT --zone 2")
    assert sport is not None
    udp = base._replace(proto="udp")
    assert match_rule(sport, udp)[0] is False  # an ephemeral port is never 15053
    assert match_rule(sport, udp._replace(sport=15053))[0] is True


def test_json_and_render() -> None:
    x = walk(ISTIO, out("1.2.3.4", 80))
    doc = json.loads(json.dumps(x.to_json()))
    assert doc["verdict"]["kind"] == "captured" and doc["connection"]["dst"] == "1.2.3.4"
    assert doc["path"][0] == {"hook": "OUTPUT", "table": "nat", "chain": "OUTPUT", "result": "enter"}
    text = x.render()
    assert "  #1 match  -A OUTPUT -j ISTIO_OUTPUT    -> jump ISTIO_OUTPUT" in text
    assert "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j RETURN" not in text  # non-matching rules only with verbose
    assert "(-d 10.0.0.0/8: destination is 1.2.3.4)" in x.render(verbose=True)
    assert text.splitlines()[-2] == "verdict: captured → outbound listener 15001 (original destination kept)"
