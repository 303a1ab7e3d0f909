"""The native-nftables renderer and applier logic, without root: goldens for every planner case (UPDATE_GOLDEN=1
rewrites them, a golden without a case fails), the statement mapping, the family merge, refusals, and the
apply/re-run/drift/cleanup decisions against a fake ``nft``. tests/netns/test_nft_apply.py runs the same goldens
through the real nft."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netinit.__main__ import main
from netinit.apply import nftables
from netinit.apply.runner import Completed
from netinit.core.config import HostFacts, config_from_flags, resolve
from netinit.core.flags import parse_options
from netinit.core.plan import Match, Rule, RuleSet, owner, plan, tcp, udp
from netinit.errors import ApplyError, BackendError, ConfigError, DriftError
from netinit.rules import nft
from tests.support.cases import CASES, ISTIO

GOLDEN = Path(__file__).parent / "golden" / "nft"
ROOT = Path(__file__).resolve().parents[3]


def render(name: str) -> str:
    flags, env, facts = CASES[name]
    return nft.render_script(plan(config_from_flags(flags, env, facts)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    path = GOLDEN / f"{name}.nft"
    got = render(name)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(got)
    assert path.exists(), f"missing golden {path}; run with UPDATE_GOLDEN=1 and review it"
    assert got == path.read_text()


def test_no_stale_goldens() -> None:
    stale = {p.stem for p in GOLDEN.glob("*.nft")} - set(CASES)
    assert not stale, f"golden files without a case: {sorted(stale)}"


def tables(flags: list[str], env: dict[str, str] | None = None, facts: HostFacts | None = None) -> dict[str, str]:
    return nft.render_tables(plan(config_from_flags(flags, env or {}, facts or HostFacts())))


def rule_lines(text: str) -> list[str]:
    """The rules of a rendered table (no table/chain/type/brace lines)."""
    skip = ("table ", "chain ", "type ", "}")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(skip)]


# --- what the tables look like ---------------------------------------------------------------------------------


def test_istio_names_hooks_and_priorities() -> None:
    t = tables([*ISTIO, "-m", "TPROXY", "-c", "eth9", "--redirect-dns", "--capture-all-dns", "--drop-invalid"])
    assert list(t) == ["istio-proxy-nat", "istio-proxy-mangle", "istio-proxy-raw"]
    headers = {
        name: [line.strip() for line in text.splitlines() if line.strip().startswith("type ")]
        for name, text in t.items()
    }
    assert headers == {
        "istio-proxy-nat": [
            "type nat hook prerouting priority dstnat; policy accept;",  # -100
            "type nat hook output priority -100; policy accept;",
        ],
        "istio-proxy-mangle": [
            "type filter hook prerouting priority mangle; policy accept;",  # -150
            "type route hook output priority mangle; policy accept;",
        ],
        "istio-proxy-raw": [
            "type filter hook prerouting priority raw; policy accept;",  # -300
            "type filter hook output priority raw; policy accept;",
        ],
    }
    assert "chain istio-output-dns {" in t["istio-proxy-nat"] and "chain istio-drop {" in t["istio-proxy-mangle"]


def test_every_rule_counts_and_ipv4_only_plans_never_touch_ipv6() -> None:
    for name in CASES:
        flags, env, facts = CASES[name]
        rs = plan(config_from_flags(flags, env, facts))
        for text in nft.render_tables(rs).values():
            for line in rule_lines(text):
                assert " counter " in f" {line} ", (name, line)
                if not rs.enable_ipv6:
                    assert line.startswith(("meta nfproto ipv4 ", "ip saddr ", "ip daddr ")), (name, line)


def test_istio_default_sidecar_nat_table() -> None:
    assert rule_lines(tables(ISTIO)["istio-proxy-nat"]) == [
        "meta nfproto ipv4 meta l4proto tcp counter jump istio-inbound",
        "meta nfproto ipv4 counter jump istio-output",
        "meta nfproto ipv4 tcp dport 15008 counter return",
        "meta nfproto ipv4 tcp dport 15090 counter return",
        "meta nfproto ipv4 tcp dport 15021 counter return",
        "meta nfproto ipv4 tcp dport 15020 counter return",
        "meta nfproto ipv4 meta l4proto tcp counter jump istio-in-redirect",
        "meta nfproto ipv4 meta l4proto tcp counter redirect to :15001",
        "meta nfproto ipv4 meta l4proto tcp counter redirect to :15006",
        'ip saddr 127.0.0.6 oifname "lo" counter return',
        'ip daddr != 127.0.0.1 oifname "lo" tcp dport != 15008 meta skuid 1337 counter jump istio-in-redirect',
        'meta nfproto ipv4 oifname "lo" meta skuid != 1337 counter return',
        "meta nfproto ipv4 meta skuid 1337 counter return",
        'ip daddr != 127.0.0.1 oifname "lo" tcp dport != 15008 meta skgid 1337 counter jump istio-in-redirect',
        'meta nfproto ipv4 oifname "lo" meta skgid != 1337 counter return',
        "meta nfproto ipv4 meta skgid 1337 counter return",
        "ip daddr 127.0.0.1 counter return",
        "meta nfproto ipv4 counter jump istio-redirect",
    ]


def test_dual_stack_shares_identical_rules_and_keeps_family_specific_ones_apart() -> None:
    v6 = HostFacts(has_global_ipv6=True)
    out = rule_lines(
        tables([*ISTIO, "--dual-stack", "-x", "10.0.0.0/8,fd00::/8", "-o", "25"], facts=v6)["istio-proxy-nat"]
    )
    assert "tcp dport 25 counter return" in out and "udp dport 25 counter return" in out  # once, for both
    assert "ip daddr 10.0.0.0/8 counter return" in out and "ip6 daddr fd00::/8 counter return" in out
    assert 'ip saddr 127.0.0.6 oifname "lo" counter return' in out
    assert 'ip6 saddr ::6 oifname "lo" counter return' in out
    assert "counter jump istio-redirect" in out  # -i '*' in both families: one rule without a family
    assert not any("nfproto" in line for line in out)


def test_statement_mapping() -> None:
    both = frozenset((4, 6))
    v4, v6 = frozenset((4,)), frozenset((6,))

    def one(r: Rule, fams: frozenset[int] = both) -> list[str]:
        return nft.statements(r, fams)  # type: ignore[arg-type]

    m = Match
    assert one(
        Rule("nat", "ISTIO_OUTPUT", "RETURN", proto="tcp", matches=(m("multiport", (("dports", "!53,15008"),)),))
    ) == ["tcp dport != { 53, 15008 } counter return"]
    assert one(Rule("nat", "ISTIO_INBOUND", "RETURN", proto="tcp", matches=(tcp(dport="8000:8010"),))) == [
        "tcp dport 8000-8010 counter return"
    ]
    assert one(Rule("nat", "ISTIO_OUTPUT", "RETURN", matches=(owner("gid", "!1500"), owner("gid", "!202")))) == [
        "meta skgid != 1500 meta skgid != 202 counter return"
    ]
    tproxy = Rule(
        "mangle",
        "ISTIO_TPROXY",
        "TPROXY",
        (("on-port", "15006"), ("on-ip", "::"), ("tproxy-mark", "0x539/0xffffffff")),
        dst="!::1/128",
        proto="tcp",
    )
    assert one(tproxy, v6) == [
        "ip6 daddr != ::1 meta l4proto tcp counter tproxy ip6 to :15006 meta mark set 0x00000539 accept",
        "ip6 daddr != ::1 meta l4proto tcp counter drop",  # iptables' TPROXY drops what no socket takes
    ]
    ct = Rule(
        "raw", "ISTIO_INBOUND", "CT", (("zone", "1"),), src="127.0.0.53/32", proto="udp", matches=(udp(sport="53"),)
    )
    assert one(ct, v4) == ["ip saddr 127.0.0.53 udp sport 53 counter ct zone set 1"]
    assert one(Rule("mangle", "PREROUTING", "ISTIO_DROP", matches=(m("conntrack", (("ctstate", "INVALID"),)),))) == [
        "ct state invalid counter jump istio-drop"
    ]
    est = m("conntrack", (("ctstate", "RELATED,ESTABLISHED"),))
    assert one(Rule("mangle", "ISTIO_INBOUND", "ISTIO_DIVERT", proto="tcp", matches=(est,))) == [
        "meta l4proto tcp ct state established,related counter jump istio-divert"
    ]
    save = Rule(
        "mangle",
        "PREROUTING",
        "CONNMARK",
        (("save-mark", None), ("nfmask", "0xffffffff"), ("ctmask", "0xffffffff")),
        proto="tcp",
        matches=(m("mark", (("mark", "0x539"),)),),
    )
    assert one(save) == ["meta l4proto tcp meta mark 0x00000539 counter ct mark set meta mark"]
    restore = save._replace(target_opts=(("restore-mark", None),), matches=(m("connmark", (("mark", "0x539"),)),))
    assert one(restore) == ["meta l4proto tcp ct mark 0x00000539 counter meta mark set ct mark"]
    mark = Rule("mangle", "OUTPUT", "MARK", (("set-xmark", "0x53a/0xffffffff"),), out_iface="lo", proto="tcp")
    assert one(mark, v4) == ['meta nfproto ipv4 oifname "lo" meta l4proto tcp counter meta mark set 0x0000053a']
    assert one(Rule("nat", "PREROUTING", "RETURN", in_iface="!veth+")) == ['iifname != "veth*" counter return']
    assert one(Rule("nat", "OUTPUT", "RETURN", proto="!udp")) == ["meta l4proto != udp counter return"]
    extras = (m("addrtype", (("dst-type", "LOCAL"),)), m("comment", (("comment", "why"),)))
    assert one(Rule("nat", "OUTPUT", "RETURN", matches=extras)) == ['fib daddr type local counter return comment "why"']


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        (Rule("nat", "ISTIO_OUTPUT", "RETURN", matches=(Match("socket", (("transparent", ""),)),)), "-m socket"),
        (Rule("nat", "ISTIO_OUTPUT", "MARK", (("set-xmark", "0x1/0xff"),)), "masked mark"),
        (Rule("nat", "ISTIO_OUTPUT", "LOG", (("log-prefix", "x"),)), "target LOG"),
        (Rule("nat", "ISTIO_OUTPUT", "REDIRECT", (("to-ports", "15001"),)), "REDIRECT without -p"),
        (Rule("nat", "ISTIO_OUTPUT", "RETURN", proto="icmp"), "protocol 'icmp'"),
        (Rule("nat", "ISTIO_OUTPUT", "RETURN", matches=(Match("conntrack", (("ctstate", "DNAT"),)),)), "DNAT"),
        (Rule("nat", "ISTIO_OUTPUT", "RETURN", matches=(owner("uid", "istio-proxy"),)), "not numeric"),
        (Rule("nat", "ISTIO_OUTPUT", "RETURN", out_iface='a"b'), "interface name"),
        (Rule("nat", "ISTIO_OUTPUT", "RETURN", proto="!tcp", matches=(tcp(dport="1"),)), "without -p tcp"),
    ],
)
def test_untranslatable_rules_are_refused_with_the_rule_named(rule: Rule, why: str) -> None:
    with pytest.raises(nft.Untranslatable, match="cannot translate nat ISTIO_OUTPUT rule") as e:
        nft.statements(rule, frozenset((4,)))
    assert why in str(e.value) and e.value.exit_code == 2


def test_tables_and_chains_without_a_home_are_refused() -> None:
    filt = RuleSet((Rule("filter", "INPUT", "ACCEPT"),), (), False)
    with pytest.raises(nft.Untranslatable, match="filter table"):
        nft.render_tables(filt)
    post = RuleSet((Rule("nat", "POSTROUTING", "RETURN"),), (), False)
    with pytest.raises(nft.Untranslatable, match="POSTROUTING"):
        nft.render_tables(post)


def test_transaction_replaces_planned_tables_whole_and_deletes_stale_ones() -> None:
    t = tables(ISTIO)
    assert nft.transaction(t) == t["istio-proxy-nat"]  # a first apply only declares: no delete cost
    script = nft.transaction(t, existing=["istio-proxy-raw", "istio-proxy-nat"])
    assert script.startswith(
        "add table inet istio-proxy-raw\ndelete table inet istio-proxy-raw\n"
        "add table inet istio-proxy-nat\ndelete table inet istio-proxy-nat\ntable inet istio-proxy-nat {\n"
    )
    assert script.count("delete table inet istio-proxy-nat") == 1
    assert nft.render_script(plan(config_from_flags(ISTIO))) == nft.transaction(t)


# --- the family merge ------------------------------------------------------------------------------------------

NEUTRAL = [Rule("nat", "C", "RETURN", matches=(tcp(dport=str(p)),), proto="tcp") for p in range(1, 6)]
ADDRESSED = {4: [Rule("nat", "C", "RETURN", dst=f"10.0.0.{i}") for i in range(3)]}
ADDRESSED[6] = [Rule("nat", "C", "RETURN", dst=f"fd00::{i}") for i in range(3)]


@given(
    st.lists(st.sampled_from(NEUTRAL + ADDRESSED[4]), max_size=8),
    st.lists(st.sampled_from(NEUTRAL + ADDRESSED[6]), max_size=8),
)
def test_merge_gives_each_family_exactly_its_rules_in_order(a: list[Rule], b: list[Rule]) -> None:
    merged = nft.merge_families(a, b)
    assert [r for r, f in merged if 4 in f] == a
    assert [r for r, f in merged if 6 in f] == b
    shared = sum(1 for _, f in merged if len(f) == 2)
    assert len(merged) == len(a) + len(b) - shared
    assert all(r.dst is None for r, f in merged if len(f) == 2)  # addressed rules are never shared


def test_merge_shares_the_longest_common_run() -> None:
    x, y, z = NEUTRAL[:3]
    merged = nft.merge_families([x, y, z], [y, z, x])
    assert sum(1 for _, f in merged if len(f) == 2) == 2


# --- reading the listing back ----------------------------------------------------------------------------------

LISTING = """table inet firewalld {
\tchain x {
\t}
}
table inet istio-proxy-nat {
\tchain output {
\t\ttype nat hook output priority -100; policy accept;
\t\tmeta nfproto ipv4 counter packets 12 bytes 720 jump istio-output
\t}
}
"""


def test_split_and_normalize_ignore_counters_layout_and_symbolic_priorities() -> None:
    got = nft.split_tables(LISTING)
    assert set(got) == {"firewalld", "istio-proxy-nat"}
    assert nft.normalize(got["istio-proxy-nat"]) == [
        "chain output {",
        "type nat hook output priority -100; policy accept;",
        "meta nfproto ipv4 counter jump istio-output",
        "}",
        "}",
    ]
    assert nft.normalize("\tchain p {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n") == [
        "chain p {",
        "type nat hook prerouting priority -100; policy accept;",
    ]


# --- apply / re-run / drift / cleanup decisions, against a fake nft ------------------------------------------------


class FakeNft:
    """``nft list ruleset inet`` and ``nft -f -`` against an in-memory set of tables, applied the way nft does
    (whole tables; ``fail_on`` makes a script fail, applying nothing). ``spell`` rewrites listed text, as
    another nft version might print the same rules."""

    def __init__(self, tables: dict[str, str] | None = None, spell: tuple[str, str] | None = None) -> None:
        self.tables = dict(tables or {})
        self.scripts: list[str] = []
        self.fail_on: str | None = None
        self.spell = spell

    def run(self, argv: Sequence[str], stdin: str | None = None) -> Completed:
        if list(argv[1:]) == ["list", "ruleset", "inet"]:
            text = "".join(self.tables.values())
            return Completed(0, text.replace(*self.spell) if self.spell else text, "")
        assert list(argv[1:]) == ["-f", "-"] and stdin is not None
        self.scripts.append(stdin)
        if self.fail_on and self.fail_on in stdin:
            return Completed(1, "", "Error: injected")
        new = dict(self.tables)
        lines = stdin.splitlines(keepends=True)
        i = 0
        while i < len(lines):
            words = lines[i].split()
            if words[:3] == ["delete", "table", "inet"]:
                new.pop(words[3], None)
            elif words[:2] == ["table", "inet"]:
                j = lines.index("}\n", i)
                new[words[2]] = "".join(lines[i : j + 1])
                i = j
            i += 1
        self.tables = new
        return Completed(0, "", "")


def apply(fake: FakeNft, flags: list[str], **kw: bool) -> str:
    want = tables(flags)
    applier = nftables.NftApplier(fake, "nft")
    logs: list[str] = []
    out = nftables.apply_tables(
        want, applier, reconcile=kw.get("reconcile", False), force=kw.get("force", False), log=logs.append
    )
    return out + "".join(f" [{m}]" for m in logs)


def test_first_apply_then_rerun_is_a_noop() -> None:
    fake = FakeNft({"firewalld": "table inet firewalld {\n}\n"})
    assert apply(fake, ISTIO) == "capture rules applied"
    assert set(fake.tables) == {"firewalld", "istio-proxy-nat"}
    assert apply(fake, ISTIO) == "capture rules already in place; nothing to do"
    assert len(fake.scripts) == 1  # the re-run wrote nothing
    assert apply(fake, ISTIO, force=True) == "capture rules applied"
    assert len(fake.scripts) == 2


def test_drift_is_refused_then_replaced_with_reconcile_and_stale_tables_go() -> None:
    fake = FakeNft()
    apply(fake, [*ISTIO, "--redirect-dns", "--capture-all-dns", "--drop-invalid"])
    before = dict(fake.tables)
    assert set(before) == set(nft.TABLE_NAMES)
    with pytest.raises(
        DriftError, match="table inet istio-proxy-nat, table inet istio-proxy-mangle, table inet istio-proxy-raw"
    ):
        apply(fake, ISTIO)
    assert fake.tables == before
    assert apply(fake, ISTIO, reconcile=True) == "capture rules applied (replaced drifted rules)"
    assert set(fake.tables) == {"istio-proxy-nat"}
    assert fake.tables["istio-proxy-nat"] == tables(ISTIO)["istio-proxy-nat"]


def test_another_nft_spelling_is_not_drift() -> None:
    """nft versions print some expressions differently; the fallback asks this nft to print our text."""
    fake = FakeNft()
    apply(fake, ISTIO)
    fake.spell = ("ip daddr 127.0.0.1 ", "ip daddr 127.0.0.1/32 ")  # as if this nft kept the /32
    out = apply(fake, ISTIO)
    assert out.startswith("capture rules already in place; nothing to do [nft prints istio-proxy-nat differently")
    assert not any(n.startswith(nftables.CHECK_PREFIX) for n in fake.tables)  # the check tables are gone
    check = fake.scripts[1]
    assert "table inet netinit-check-istio-proxy-nat {" in check and " hook " not in check  # sees no packet
    fake.spell = None
    nat = fake.tables["istio-proxy-nat"]
    fake.tables["istio-proxy-nat"] = nat.replace("ip daddr 127.0.0.1 ", "ip daddr 127.0.0.2 ")  # a real edit
    with pytest.raises(DriftError):
        apply(fake, ISTIO)


def test_failed_script_changes_nothing_and_says_so() -> None:
    fake = FakeNft()
    fake.fail_on = "redirect"
    with pytest.raises(ApplyError, match="nothing was applied"):
        apply(fake, ISTIO)
    assert fake.tables == {}


def test_cleanup_deletes_only_our_tables() -> None:
    fake = FakeNft(
        {
            "firewalld": "table inet firewalld {\n}\n",
            "netinit-check-istio-proxy-nat": "table inet netinit-check-istio-proxy-nat {\n}\n",
        }
    )
    apply(fake, [*ISTIO, "--drop-invalid"])
    assert nftables.cleanup(nftables.NftApplier(fake, "nft")) == "capture rules removed"
    assert set(fake.tables) == {"firewalld"}
    assert nftables.cleanup(nftables.NftApplier(fake, "nft")) == "nothing of ours to clean up"


def test_addresses_are_written_as_nft_prints_them() -> None:
    why = nft._Why(Rule("nat", "C", "RETURN"))
    assert nft._address("10.1.2.3/8", why) == (4, "10.0.0.0/8")
    assert nft._address("127.0.0.1/32", why) == (4, "127.0.0.1")
    assert nft._address("fd00::1/8", why) == (6, "fd00::/8")
    assert nft._address("::127.0.0.53/128", why) == (6, "::127.0.0.53")
    for bad in ("10.0.0.0/33", "10.0.0", "fd00::/129", "x/8"):
        with pytest.raises(nft.Untranslatable, match=r"cannot translate nat C rule '-j RETURN': .* not an address"):
            nft._address(bad, why)


def test_missing_nft_is_a_clear_backend_error() -> None:
    with pytest.raises(BackendError, match="apt-get install nftables"):
        nftables.nft_binary(which=lambda _n: None, fallbacks=())
    assert nftables.nft_binary(which=lambda n: f"/bin/{n}") == "/bin/nft"


# --- the CLI ---------------------------------------------------------------------------------------------------


def test_flag_and_env_select_native_nftables() -> None:
    assert resolve(parse_options(["--native-nftables"], {}), HostFacts())[1].native_nftables
    assert resolve(parse_options([], {"NATIVE_NFTABLES": "true"}), HostFacts())[1].native_nftables
    assert not resolve(parse_options([], {}), HostFacts())[1].native_nftables
    with pytest.raises(ConfigError, match="--applier iptc"):
        resolve(parse_options(["--native-nftables", "--applier", "iptc"], {}), HostFacts())
    warnings: list[str] = []
    resolve(parse_options(["--native-nftables", "--force-iptables-binary", "nft"], {}), HostFacts(), warnings.append)
    assert warnings == ["--force-iptables-binary has no effect with --native-nftables"]


def test_dry_run_prints_exactly_the_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-n", "--native-nftables", *ISTIO], {}) == 0
    out = capsys.readouterr().out
    assert out == "# IPv4: nft -f - <<EOF\n" + nft.render_script(plan(config_from_flags(ISTIO))) + "# EOF\n"


def test_dry_run_refuses_untranslatable_with_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(_rs: RuleSet) -> dict[str, str]:
        raise nft.Untranslatable("netinit: --native-nftables cannot translate x")

    monkeypatch.setattr(nft, "render_tables", refuse)
    assert main(["-n", "--native-nftables", *ISTIO], {}) == 2
    assert "cannot translate x" in capsys.readouterr().err


def test_default_path_does_not_import_the_nftables_modules() -> None:
    """netinit's start-up time is pod start-up time: the iptables path pays nothing for this backend."""
    code = (
        "import sys\n"
        "from netinit.__main__ import main\n"
        f"assert main(['-n', *{ISTIO!r}], {{}}) == 0\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('netinit.rules.nft'))\n"
        "assert not loaded, loaded\n"
        f"assert main(['-n', '--native-nftables', *{ISTIO!r}], {{}}) == 0\n"
        "assert 'netinit.rules.nft' in sys.modules\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr
