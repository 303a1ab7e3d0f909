"""Planner table tests: the flag combinations istio-iptables' own capture tests cover (our expectations,
pinned as golden files: UPDATE_GOLDEN=1 rewrites them, a golden without a case fails), plus hand-written
assertions of the properties that matter."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netinit.apply.engine import render_restore
from netinit.core.config import HostFacts, config_from_flags
from netinit.core.plan import plan
from netinit.rules.save import desired_state
from tests.support.cases import CASES, DNS, GROUPS, ISTIO, V6

GOLDEN = Path(__file__).parent / "golden" / "netinit"


def render(name: str) -> str:
    flags, env, facts = CASES[name]
    rs = plan(config_from_flags(flags, env, facts))
    return "".join(f"# IPv{f}\n{render_restore(rs.family(f))}" for f in rs.families())


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    path = GOLDEN / f"{name}.rules"
    got = render(name)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(got)
    assert path.exists(), f"missing golden {path}; run with UPDATE_GOLDEN=1 and review it"
    assert got == path.read_text()


def test_no_stale_goldens() -> None:
    stale = {p.stem for p in GOLDEN.glob("*.rules")} - set(CASES)
    assert not stale, f"golden files without a case: {sorted(stale)}"


def _chains(
    flags: list[str], env: dict[str, str] | None = None, facts: HostFacts | None = None, fam: int = 4
) -> dict[str, dict[str, list[str]]]:
    rs = plan(config_from_flags(flags, env or {}, facts or HostFacts()))
    return {t: st.chains for t, st in desired_state(rs.family(4 if fam == 4 else 6)).items()}


def test_istio_default_sidecar_rules_in_order() -> None:
    nat = _chains(ISTIO)["nat"]
    assert nat["PREROUTING"] == ["-p tcp -j ISTIO_INBOUND"]
    assert nat["OUTPUT"] == ["-j ISTIO_OUTPUT"]
    assert nat["ISTIO_INBOUND"] == [
        "-p tcp -m tcp --dport 15008 -j RETURN",
        "-p tcp -m tcp --dport 15090 -j RETURN",
        "-p tcp -m tcp --dport 15021 -j RETURN",
        "-p tcp -m tcp --dport 15020 -j RETURN",
        "-p tcp -j ISTIO_IN_REDIRECT",
    ]
    assert nat["ISTIO_IN_REDIRECT"] == ["-p tcp -j REDIRECT --to-ports 15006"]
    assert nat["ISTIO_REDIRECT"] == ["-p tcp -j REDIRECT --to-ports 15001"]
    assert nat["ISTIO_OUTPUT"] == [
        "-s 127.0.0.6/32 -o lo -j RETURN",
        "! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
        "-o lo -m owner ! --uid-owner 1337 -j RETURN",
        "-m owner --uid-owner 1337 -j RETURN",
        "! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT",
        "-o lo -m owner ! --gid-owner 1337 -j RETURN",
        "-m owner --gid-owner 1337 -j RETURN",
        "-d 127.0.0.1/32 -j RETURN",
        "-j ISTIO_REDIRECT",
    ]
    assert set(_chains(ISTIO)) == {"nat"}


def test_excludes_precede_includes() -> None:
    out = _chains([*ISTIO, "-x", "10.0.0.0/8,fd00::/8", "-q", "9000", "-o", "25"])["nat"]["ISTIO_OUTPUT"]
    assert out[0:2] == ["-p tcp -m tcp --dport 25 -j RETURN", "-p udp -m udp --dport 25 -j RETURN"]
    assert out.index("-d 10.0.0.0/8 -j RETURN") < out.index("-p tcp -m tcp --dport 9000 -j ISTIO_REDIRECT")
    assert out[-1] == "-j ISTIO_REDIRECT"
    assert not any("fd00" in r for r in out)  # IPv6 CIDRs only go to the IPv6 family


def test_ipv6_family_uses_v6_addresses_and_only_when_enabled() -> None:
    assert plan(config_from_flags(ISTIO)).v6 == ()
    out6 = _chains([*ISTIO, "-x", "10.0.0.0/8,fd00::/8"], facts=V6, fam=6)["nat"]["ISTIO_OUTPUT"]
    assert out6[0] == "-s ::6/128 -o lo -j RETURN"
    assert "-d ::1/128 -j RETURN" in out6 and "-d fd00::/8 -j RETURN" in out6
    assert not any("10.0.0.0" in r for r in out6)


def test_kube_virt_inserts_land_first_in_reverse_order() -> None:
    pre = _chains(["-k", "eth1,eth2", "-i", "*", "-b", "*"])["nat"]["PREROUTING"]
    assert pre == [
        "-i eth2 -j ISTIO_REDIRECT",
        "-i eth1 -j ISTIO_REDIRECT",
        "-i eth2 -j RETURN",
        "-i eth1 -j RETURN",
        "-p tcp -j ISTIO_INBOUND",
    ]


def test_tproxy_inbound_chain_order() -> None:
    ch = _chains(["-b", "*", "-m", "TPROXY", "-i", "*"])["mangle"]
    assert ch["ISTIO_INBOUND"] == [
        "-p tcp -m mark --mark 0x539 -j RETURN",
        "-s 127.0.0.6/32 -i lo -p tcp -j RETURN",
        "-i lo -p tcp -m mark ! --mark 0x53a -j RETURN",
        "-p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT",
        "-p tcp -j ISTIO_TPROXY",
    ]
    assert ch["ISTIO_DIVERT"] == ["-j MARK --set-xmark 0x539/0xffffffff", "-j ACCEPT"]
    assert ch["ISTIO_TPROXY"] == [
        "! -d 127.0.0.1/32 -p tcp -j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x539/0xffffffff"
    ]


def test_dns_capture_rules() -> None:
    ch = _chains(["--redirect-dns", "-b", "*", "-i", "*"], facts=DNS)
    out = ch["nat"]["ISTIO_OUTPUT"]
    assert (
        "! -d 127.0.0.1/32 -o lo -p tcp -m multiport ! --dports 53,15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT"
    ) in out
    assert "-o lo -p tcp -m tcp ! --dport 53 -m owner ! --uid-owner 1337 -j RETURN" in out
    assert out.index("-j ISTIO_OUTPUT_DNS") > out.index("-m owner --gid-owner 1337 -j RETURN")
    assert ch["nat"]["ISTIO_OUTPUT_DNS"] == [
        "-d 127.0.0.53/32 -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053",
        "-d 127.0.0.53/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
    ]
    assert ch["raw"]["OUTPUT"] == ["-j ISTIO_OUTPUT_DNS"]
    assert ch["raw"]["PREROUTING"] == ["-j ISTIO_INBOUND"]
    assert ch["raw"]["ISTIO_INBOUND"] == ["-s 127.0.0.53/32 -p udp -m udp --sport 53 -j CT --zone 1"]


def test_loopback_include_drops_the_lo_return() -> None:
    out = _chains(["-i", "127.1.2.3/32"])["nat"]["ISTIO_OUTPUT"]
    assert not any(r.startswith("-o lo -m owner !") for r in out)
    assert out[-1] == "-d 127.1.2.3/32 -j ISTIO_REDIRECT"


def test_owner_groups() -> None:
    inc = _chains([], {"ISTIO_OUTBOUND_OWNER_GROUPS": "java,202"}, GROUPS)["nat"]["ISTIO_OUTPUT"]
    assert "-m owner ! --gid-owner 1500 -m owner ! --gid-owner 202 -j RETURN" in inc
    exc = _chains([], {"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "888,ftp"}, GROUPS)["nat"]["ISTIO_OUTPUT"]
    assert exc[-3:-1] == ["-m owner --gid-owner 888 -j RETURN", "-m owner --gid-owner 21 -j RETURN"]


def test_dry_run_payload_is_what_apply_feeds_restore() -> None:
    text = render_restore(plan(config_from_flags(ISTIO)).v4)
    assert text.startswith("*nat\n:ISTIO_INBOUND - [0:0]\n")
    assert text.endswith("COMMIT\n")
    assert "-N " not in text  # create-or-flush declarations, never -N
