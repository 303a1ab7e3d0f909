"""Flags, env vars and validation (pure)."""

from __future__ import annotations

import ipaddress

import pytest

from netinit.core.config import HostFacts, config_from_flags, resolve
from netinit.core.flags import parse_options
from netinit.errors import ConfigError


def test_defaults_match_istio_iptables() -> None:
    cfg = config_from_flags([])
    assert (cfg.proxy_port, cfg.inbound_capture_port, cfg.inbound_tunnel_port) == (15001, 15006, 15008)
    assert cfg.proxy_uids == ("1337",) and cfg.proxy_gids == ("1337",)
    assert cfg.mode == "REDIRECT" and cfg.tproxy_mark == 1337 and cfg.tproxy_route_table == 133
    assert cfg.inbound_ports == () and cfg.outbound_cidrs == ()
    assert cfg.ipv4_loopback_cidr == "127.0.0.1/32"


def test_flag_wins_over_env_and_env_is_read() -> None:
    env = {
        "ENVOY_PORT": "16001",
        "INBOUND_CAPTURE_PORT": "16006",
        "PROXY_UID": "5",
        "ISTIO_INBOUND_PORTS": "*",
        "ISTIO_SERVICE_CIDR": "10.0.0.0/8",
        "ISTIO_INBOUND_INTERCEPTION_MODE": "TPROXY",
    }
    cfg = config_from_flags(["-p", "17001"], env)
    assert cfg.proxy_port == 17001 and cfg.inbound_capture_port == 16006
    assert cfg.proxy_uids == ("5",) and cfg.proxy_gids == ("5",)
    assert cfg.inbound_ports == "*" and cfg.mode == "TPROXY"
    assert cfg.outbound_cidrs == (ipaddress.ip_network("10.0.0.0/8"),)


def test_long_names_and_bool_env_fallbacks() -> None:
    raw = parse_options(
        ["--istio-inbound-ports", "80,443", "--drop-invalid"],
        {"ISTIO_META_DNS_CAPTURE": "true", "ISTIO_DUAL_STACK": "1"},
    )
    assert raw.flags["redirect_dns"] and raw.flags["drop_invalid"] and raw.flags["dual_stack"]
    assert raw.values["inbound_ports"] == "80,443"
    assert parse_options([], {"INVALID_DROP": "True"}).flags["drop_invalid"]
    # As pflag's AdditionalEnv: the additional variable, when set, wins over the primary one.
    assert parse_options([], {"REDIRECT_DNS": "false", "ISTIO_META_DNS_CAPTURE": "true"}).flags["redirect_dns"]
    assert not parse_options([], {"DUAL_STACK": "true", "ISTIO_DUAL_STACK": "false"}).flags["dual_stack"]


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["-p", "0"], {}, "-p/--envoy-port: '0'"),
        (["-z", "65536"], {}, "-z/--inbound-capture-port: '65536'"),
        (["-z", "\u00b2"], {}, "-z/--inbound-capture-port"),  # isdigit() but not int(): must be exit 2, not a crash
        (["-b", "8\u00b2"], {}, "-b/--istio-inbound-ports"),
        (["--pid", "\u00b2"], {}, "--pid"),
        (["-b", "80,x"], {}, "-b/--istio-inbound-ports: 'x'"),
        (["-d", "90-80"], {}, "range start is after its end"),
        (["-i", "10.0.0.0/40"], {}, "-i/--istio-service-cidr: '10.0.0.0/40'"),
        (["-x", "*"], {}, "-x/--istio-service-exclude-cidr: '*'"),
        (["-c", "eth0,9bad"], {}, "-c/--istio-exclude-interfaces: '9bad'"),
        (["-k", "a" * 16], {}, "at most 15"),
        (["-m", "BOGUS"], {}, "expected REDIRECT or TPROXY"),
        (["-u", "no-such-user"], {}, "-u/--proxy-uid: 'no-such-user'"),
        (["-r", "254"], {}, "main"),
        (["--force-iptables-binary", "ebpf"], {}, "expected legacy or nft"),
        (["--pid", "abc"], {}, "--pid: 'abc'"),
        ([], {"DRY_RUN": "maybe"}, "env DRY_RUN: 'maybe'"),
        ([], {"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "10.0.0.0/8"}, "within 127.0.0.0/8"),
        ([], {"ISTIO_OUTBOUND_OWNER_GROUPS": "1,2", "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "3"}, "only applies"),
        ([], {"ISTIO_OUTBOUND_OWNER_GROUPS": "nosuchgroup"}, "'nosuchgroup'"),
        ([], {"ISTIO_OUTBOUND_OWNER_GROUPS": ",".join(map(str, range(1000, 1050)))}, "50 groups, at most 49"),
        (["--bogus-flag"], {}, "unknown flag: --bogus-flag"),
    ],
)
def test_bad_input_names_the_flag_and_value(argv: list[str], env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_flags(argv, env)
    assert needle in str(e.value)
    assert e.value.exit_code == 2


def test_ports_ranges_and_lists() -> None:
    cfg = config_from_flags(["-b", "*", "-d", "15090, 8000-8010,,9000:9001", "-o", "25"])
    assert cfg.inbound_ports_exclude == ("15090", "8000:8010", "9000:9001")
    assert cfg.outbound_ports_exclude == ("25",)


def test_local_exclude_without_wildcard_warns() -> None:
    warnings: list[str] = []
    resolve(parse_options(["-b", "80", "-d", "90"], {}), HostFacts(), warn=warnings.append)
    assert any("only applies with -b '*'" in w for w in warnings)


def test_ipv6_decision_follows_istio() -> None:
    assert not config_from_flags([], facts=HostFacts(True, True)).enable_ipv6  # v4 first -> v4 only
    assert config_from_flags([], facts=HostFacts(False, True)).enable_ipv6  # v6-only pod
    assert config_from_flags(["--dual-stack"], facts=HostFacts(True, True)).enable_ipv6
    assert not config_from_flags(["--dual-stack"], facts=HostFacts(True, False)).enable_ipv6


def test_dns_servers_split_by_family_and_disabled_without_any() -> None:
    cfg = config_from_flags(["--redirect-dns"], facts=HostFacts(dns_servers=("10.96.0.10", "fd00::a", "junk")))
    assert cfg.dns_servers_v4 == ("10.96.0.10",) and cfg.dns_servers_v6 == ("fd00::a",)
    assert not config_from_flags(["--redirect-dns"]).redirect_dns
    assert config_from_flags(["--redirect-dns", "--capture-all-dns"]).redirect_dns


def test_names_resolve_through_facts() -> None:
    cfg = config_from_flags(
        ["-u", "envoy", "-g", "proxy,7"], facts=HostFacts(user_ids={"envoy": 101}, group_ids={"proxy": 102})
    )
    assert cfg.proxy_uids == ("101",) and cfg.proxy_gids == ("102", "7")


def test_probe_destination_respects_exclusions() -> None:
    from netinit.apply.validate import probe_destination

    assert probe_destination(config_from_flags(["-i", "*"])) == ("192.0.2.1", 80)
    assert probe_destination(config_from_flags(["-i", "*", "-o", "1-8080"])) == ("192.0.2.1", 9080)
    assert probe_destination(config_from_flags(["-i", "*", "-x", "192.0.2.0/24"])) == ("198.51.100.1", 80)
    assert probe_destination(config_from_flags(["-i", "10.1.0.0/16"])) == ("10.1.0.1", 80)
    assert probe_destination(config_from_flags(["-i", "*", "-o", "1-65535"])) is None
    assert probe_destination(config_from_flags([])) is None


def test_owner_groups_up_to_the_limit_share_one_rule_and_excluded_ones_have_none() -> None:
    many = ",".join(map(str, range(1000, 1049)))
    assert len(config_from_flags([], {"ISTIO_OUTBOUND_OWNER_GROUPS": many}).owner_groups_include) == 49
    excluded = ",".join(map(str, range(1000, 1200)))  # a rule each: no limit (nor in Istio)
    assert len(config_from_flags([], {"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": excluded}).owner_groups_exclude) == 200


@pytest.mark.parametrize(
    ("argv", "env", "users", "uid"),
    [
        ([], {}, {"istio-proxy": 998}, "998"),  # Istio: ENVOY_USER defaults to istio-proxy
        ([], {"ENVOY_USER": "envoy"}, {"envoy": 101, "istio-proxy": 998}, "101"),
        ([], {}, {}, "1337"),  # no such account: 1337
        ([], {"ENVOY_USER": "envoy"}, {"istio-proxy": 998}, "1337"),
        (["-u", "1500"], {"ENVOY_USER": "envoy"}, {"envoy": 101}, "1500"),  # -u wins
        ([], {"PROXY_UID": "1600"}, {"istio-proxy": 998}, "1600"),
    ],
)
def test_without_a_proxy_uid_the_proxy_is_envoy_users_account_else_1337(
    argv: list[str], env: dict[str, str], users: dict[str, int], uid: str
) -> None:
    cfg = config_from_flags(argv, env, HostFacts(user_ids=users))
    assert cfg.proxy_uids == (uid,) and cfg.proxy_gids == (uid,)  # the gid follows the uid, as in Istio


def test_facts_look_up_envoy_users_account_only_without_a_proxy_uid() -> None:
    from netinit.apply.facts import user_group_ids

    assert user_group_ids({"ENVOY_USER": "root"}) == ({"root": 0}, {})
    assert user_group_ids({"ENVOY_USER": "root", "proxy_uid": "1337"}) == ({}, {})
