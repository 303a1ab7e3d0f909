"""``nft_read``: our native nftables rendering read back into the iptables rules it was rendered from, without
root. The property: for every planner case, reading ``render_tables`` gives each family exactly the plan's rules;
anything the renderer does not write is refused with the line named. Plus ``live.read_live`` choosing the
native tables (fake runner). tests/netns/test_nft_read_live.py reads real ``nft list`` output."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from netinit.apply import nftables
from netinit.apply.runner import Completed
from netinit.core.config import HostFacts, config_from_flags
from netinit.core.plan import FAMILIES, Match, Rule, RuleSet, plan
from netinit.debug import live
from netinit.debug.show import reconstruct
from netinit.rules import nft, nft_read
from netinit.rules.save import parse_save, planned_save
from tests.support.cases import CASES, ISTIO


def planned(name: str) -> RuleSet:
    flags, env, facts = CASES[name]
    return plan(config_from_flags(flags, env, facts))


@pytest.mark.parametrize("name", sorted(CASES))
def test_reading_the_rendering_gives_each_family_the_plans_rules(name: str) -> None:
    rs = planned(name)
    texts = nft_read.save_texts(nft.render_tables(rs))
    assert set(texts) == set(FAMILIES)
    for fam in FAMILIES:
        if fam in rs.families():
            assert parse_save(texts[fam]) == parse_save(planned_save(rs.family(fam)))
            assert texts[fam].count("\n-A ") == planned_save(rs.family(fam)).count("\n-A ")
        else:
            assert texts[fam] == ""  # an IPv4-only plan's inet tables hold nothing for IPv6


@pytest.mark.parametrize("name", sorted(CASES))
def test_show_reads_the_rendering_back_into_the_flags(name: str) -> None:
    rs = planned(name)
    rec = reconstruct(nft_read.save_texts(nft.render_tables(rs)))
    if not any(rs.family(f) for f in rs.families()):
        return
    assert rec.found and rec.reproducible and rec.findings == ()
    again = plan(config_from_flags(list(rec.argv), dict(rec.env), rec.facts))
    assert (again.v4, again.v6) == (rs.v4, rs.v6)


def _with_counters(text: str) -> str:
    return text.replace("counter ", "counter packets 12 bytes 3456 ")


def test_counter_values_are_ignored() -> None:
    tables = nft.render_tables(planned("tproxy"))
    assert nft_read.save_texts({n: _with_counters(t) for n, t in tables.items()}) == nft_read.save_texts(tables)


def test_statements_map_back_to_the_rules() -> None:
    m = Match
    rules = [
        Rule("nat", "ISTIO_OUTPUT", "RETURN", proto="tcp", matches=(m("multiport", (("dports", "!53,15008"),)),)),
        Rule("nat", "ISTIO_INBOUND", "RETURN", proto="tcp", matches=(m("tcp", (("dport", "8000:8010"),)),)),
        Rule("nat", "PREROUTING", "RETURN", in_iface="!veth+"),
        Rule("nat", "OUTPUT", "RETURN", proto="!udp"),
        Rule(
            "nat",
            "OUTPUT",
            "RETURN",
            matches=(m("addrtype", (("dst-type", "LOCAL"),)), m("comment", (("comment", "why"),))),
        ),
        Rule("raw", "OUTPUT", "CT", (("notrack", None),), proto="udp", matches=(m("udp", (("sport", "53"),)),)),
        Rule("mangle", "PREROUTING", "ISTIO_DROP", matches=(m("conntrack", (("ctstate", "INVALID"),)),)),
    ]
    for r in rules:
        (line,) = nft.statements(r, frozenset(FAMILIES))
        s, used = nft_read.statement(r.table, r.chain, [line])
        assert used == 1 and s.fams == frozenset(FAMILIES) and s.rules[4] == r == s.rules[6], line


def table(name: str, chain: str, *rules: str, header: str | None = None) -> dict[str, str]:
    body = "".join(f"\t\t{r}\n" for r in rules)
    head = f"\t\t{header}\n" if header else ""
    return {name: f"table inet {name} {{\n\tchain {chain} {{\n{head}{body}\t}}\n}}\n"}


NAT_OUT = "type nat hook output priority -100; policy accept;"


@pytest.mark.parametrize(
    ("tables", "why"),
    [
        (table("istio-proxy-nat", "output", "meta l4proto icmp counter accept", header=NAT_OUT), "protocol 'icmp'"),
        (table("istio-proxy-nat", "output", "tcp dport 80 accept", header=NAT_OUT), "line 4"),
        (table("istio-proxy-nat", "output", "counter log prefix x", header=NAT_OUT), "'log prefix x'"),
        (table("istio-proxy-nat", "output", "counter jump foo", header=NAT_OUT), "jump to foo"),
        (table("istio-proxy-nat", "output", "ip daddr 1.2.3.4 counter accept", header=None), "base chain output"),
        (table("istio-proxy-nat", "foo", "counter accept"), "chain foo is not one netinit writes"),
        (table("istio-proxy-nat", "istio-output", "counter accept", header=NAT_OUT), "not a base chain"),
        (table("istio-proxy-nat", "istio-output", "meta nfproto ipv4 ip daddr 1.2.3.4 counter return"), "nfproto"),
        (table("istio-proxy-nat", "istio-output", "udp dport 53 meta l4proto udp counter return"), "'meta l4proto'"),
        (table("istio-proxy-nat", "istio-output", "tcp dport { 1, 2 } udp sport 3 counter return"), "a udp match"),
        (table("istio-proxy-mangle", "istio-tproxy", "ip daddr != 127.0.0.1 counter tproxy ip to :1 accept"), "would"),
        (table("istio-proxy-mangle", "istio-tproxy", "meta l4proto tcp counter tproxy to :1 accept"), "per family"),
        (table("istio-proxy-filter", "istio-output", "counter accept"), "not one of netinit's"),
    ],
)
def test_anything_the_renderer_does_not_write_is_refused_with_the_line(tables: dict[str, str], why: str) -> None:
    with pytest.raises(nft_read.NotOurRendering) as e:
        nft_read.save_texts(tables)
    assert why in str(e.value) and e.value.exit_code == 1


def test_a_tproxy_without_its_drop_is_refused() -> None:
    text = nft.render_tables(planned("tproxy"))["istio-proxy-mangle"]
    lines = [line for line in text.splitlines() if not line.strip().endswith("counter drop")]
    with pytest.raises(nft_read.NotOurRendering, match=r"tproxy ip to :15006 .*netinit would write it as"):
        nft_read.save_texts({"istio-proxy-mangle": "\n".join(lines) + "\n"})


# --- read_live ------------------------------------------------------------------------------------------------


class FakeRunner:
    def __init__(self, save: dict[str, str], nft_listing: str) -> None:
        self.save = save
        self.listing = nft_listing
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str], stdin: str | None = None) -> Completed:
        self.calls.append(list(argv))
        if argv[0] == "nft":
            out = self.listing if argv[1:3] == ["list", "ruleset"] else "table inet istio-proxy-nat\n"
            return Completed(0, out, "")
        return Completed(0, self.save.get(argv[0], ""), "")


@pytest.fixture
def binaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "find_executable", lambda name: f"/usr/sbin/{name}")
    monkeypatch.setattr(nftables, "nft_binary", lambda: "nft")


def test_read_live_reads_native_tables_when_iptables_holds_nothing_of_ours(binaries: None) -> None:
    rs = plan(config_from_flags(ISTIO, {}, HostFacts()))
    listing = "".join(nft.render_tables(rs).values())
    foreign = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -j ACCEPT\nCOMMIT\n"
    rules = live.read_live(FakeRunner({"iptables-nft-save": foreign}, listing))
    assert (rules.source, rules.origin, rules.flavor) == ("live", "live rules (native nftables)", "native-nftables")
    assert parse_save(rules.texts[4]) == parse_save(planned_save(rs.v4))
    assert any("native nftables tables (inet istio-proxy-*)" in n for n in rules.notes)
    assert any("iptables-nft also holds rules" in n for n in rules.notes)


def test_read_live_keeps_iptables_when_it_holds_ours_or_is_forced(binaries: None) -> None:
    rs = plan(config_from_flags(ISTIO, {}, HostFacts()))
    listing = "".join(nft.render_tables(rs).values())
    ours = planned_save(rs.v4)
    rules = live.read_live(FakeRunner({"iptables-legacy-save": ours}, listing))
    assert (rules.flavor, rules.texts[4]) == ("legacy", ours)
    assert any("which these results do not read" in n for n in rules.notes)
    forced = live.read_live(FakeRunner({}, listing), "nft")
    assert forced.flavor == "nft" and any("which these results do not read" in n for n in forced.notes)


def test_read_live_without_native_tables_is_the_iptables_path(binaries: None) -> None:
    runner = FakeRunner({}, "table inet other {\n}\n")
    rules = live.read_live(runner)
    assert (rules.flavor, rules.notes) == ("nft", ())
