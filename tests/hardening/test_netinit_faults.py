"""netinit under faults and foreign company, in real namespaces: missing binaries, a CNI's own rules around
ours through every mode, and the plan -> apply -> iptables-save -> plan fixed point over generated flags."""

from __future__ import annotations

import os
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab import netlab
from netinit.apply import netns
from netinit.core.config import HostFacts, config_from_flags
from netinit.core.plan import plan
from netinit.rules.save import desired_state, parse_save

pytestmark = pytest.mark.requires_root

ARGS = list(netlab.SIDECAR_ARGS)
FOREIGN = """*nat
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-SNAT - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A POSTROUTING -s 10.244.0.0/16 -j CNI-SNAT
-A CNI-SNAT -d 10.244.0.0/16 -j RETURN
-A CNI-SNAT -j MASQUERADE
COMMIT
"""


def netinit(ns: str, flavor: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return netlab.run_netinit("--network-namespace", ns, "--force-iptables-binary", flavor, *args, env=env)


BUILTIN = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}


def non_empty(save_text: str) -> dict[str, dict[str, list[str]]]:
    """Tables and chains, minus empty built-in chains (and so tables holding nothing else)."""
    return {
        table: {chain: rules for chain, rules in st_.chains.items() if rules or chain not in BUILTIN}
        for table, st_ in parse_save(netlab.normalize_save(save_text)).items()
        if any(st_.chains.values())
    }


def foreign_lines(text: str) -> list[str]:
    return [ln for ln in netlab.normalize_save(text).splitlines() if "CNI" in ln]


def test_missing_iptables_is_a_clear_diagnosis_and_touches_nothing(netns: str, flavor: str) -> None:
    before = netlab.iptables_save(netns, flavor)
    env = {**os.environ, "PATH": "/nonexistent"}
    res = netlab.run_netinit("--network-namespace", netns, *ARGS, env=env)
    assert res.returncode == 1
    assert "iptables-legacy-save" in res.stderr and "iptables-nft-save" in res.stderr and "not found" in res.stderr
    assert netlab.iptables_save(netns, flavor) == before


def test_foreign_rules_survive_apply_reapply_reconcile_and_cleanup(netns: str, flavor: str) -> None:
    netlab.sh(f"iptables-{flavor}-restore", "--noflush", ns=netns, input=FOREIGN)
    cni = foreign_lines(netlab.iptables_save(netns, flavor))
    assert len(cni) == 7
    steps = [
        (ARGS, "apply"),
        (ARGS, "re-apply"),
        ([*ARGS, "-o", "3306", "--reconcile"], "reconcile to new flags"),
        ([*ARGS, "-o", "3306", "--cleanup-only"], "cleanup"),
    ]
    for args, what in steps:
        res = netinit(netns, flavor, *args)
        assert res.returncode == 0, f"{what}: {res.stderr}"
        assert foreign_lines(netlab.iptables_save(netns, flavor)) == cni, what
    assert "ISTIO" not in netlab.iptables_save(netns, flavor)


PORTS = st.lists(st.integers(1, 65535).map(str), min_size=1, max_size=3, unique=True).map(",".join)
CIDRS = st.lists(
    st.tuples(st.integers(1, 223), st.integers(0, 255), st.sampled_from([8, 16, 24, 32])).map(
        lambda t: f"{t[0]}.{t[1]}.0.0/{t[2]}"
    ),
    min_size=1,
    max_size=3,
    unique=True,
).map(",".join)


IFACES = st.lists(st.sampled_from(["eth1", "net1", "veth7", "kv0"]), min_size=1, max_size=2, unique=True).map(",".join)
GROUPS = st.integers(1, 70).map(lambda n: ",".join(str(3000 + i) for i in range(n)))  # the limit is 49


@st.composite
def flag_sets(draw: st.DrawFn) -> tuple[list[str], dict[str, str]]:
    """Flags and the env-only variables, as a user might combine them: most apply, some are refused (more
    owner groups than one rule can hold)."""
    uids = draw(st.sampled_from(["1337", "1337,1338"]))
    args = ["-p", "15001", "-z", "15006", "-u", uids, "-m", draw(st.sampled_from(["REDIRECT", "TPROXY"]))]
    args += ["-i", draw(st.just("*") | CIDRS), "-b", draw(st.just("*") | PORTS)]
    for flag, values in (("-x", CIDRS), ("-d", PORTS), ("-q", PORTS), ("-o", PORTS), ("-c", IFACES), ("-k", IFACES)):
        if draw(st.booleans()):
            args += [flag, draw(values)]
    for flag in ("--redirect-dns", "--drop-invalid", "--capture-all-dns"):
        if draw(st.booleans()):
            args.append(flag)
    env: dict[str, str] = {}
    groups = draw(st.sampled_from(["none", "include", "exclude"]))
    if groups == "include":
        env["ISTIO_OUTBOUND_OWNER_GROUPS"] = draw(GROUPS)
    elif groups == "exclude":
        env["ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"] = draw(GROUPS)
    if draw(st.booleans()):
        env["ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"] = draw(
            st.sampled_from(["127.0.0.1/32", "127.0.0.0/8", "127.1.2.0/24"])
        )
    return args, env


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag_sets())
def test_plan_apply_save_is_a_fixed_point_and_cleanup_restores(
    flavor: str, case: tuple[list[str], dict[str, str]]
) -> None:
    """Every combination either applies exactly as planned (then re-applies as a no-op and cleans up to what
    was there) or is refused with exit 2 and the namespace untouched: never a failure half-way (exit 1)."""
    args, env = case
    with netlab.namespace("hx") as ns:
        netlab.sh(f"iptables-{flavor}-restore", "--noflush", ns=ns, input=FOREIGN)
        before = netlab.normalize_save(netlab.iptables_save(ns, flavor))
        res = netinit(ns, flavor, *args, env=env)
        if res.returncode == 2:
            assert "invalid value" in res.stderr, res.stderr
            assert netlab.normalize_save(netlab.iptables_save(ns, flavor)) == before
            return
        assert res.returncode == 0, res.stderr
        live = parse_save(netlab.normalize_save(netlab.iptables_save(ns, flavor)))
        # What netinit saw in that namespace: no global address, the host's resolv.conf (no /etc/netns/NS).
        facts = HostFacts(has_global_ipv4=False, dns_servers=netns.nameservers(netns.resolv_conf_for(ns)))
        for table, st_ in desired_state(plan(config_from_flags(args, env, facts=facts)).v4).items():
            for chain, specs in st_.chains.items():
                have = live[table].chains.get(chain, [])
                if chain.startswith("ISTIO_"):
                    assert have == specs, (table, chain)
                else:
                    assert [s for s in have if s in specs] == specs, (table, chain)
        again = netinit(ns, flavor, *args, env=env)
        assert again.returncode == 0 and "already in place" in again.stderr
        gone = netinit(ns, flavor, *args, "--cleanup-only", env=env)
        assert gone.returncode == 0, gone.stderr
        # Exactly as before, except that a table netinit touched may now exist with empty built-in chains.
        assert non_empty(netlab.iptables_save(ns, flavor)) == non_empty(before)


def test_concurrent_runs_against_one_namespace_all_finish_correctly(netns: str, flavor: str) -> None:
    """A restarted init container racing its predecessor: every run exits 0 and the rules are there once."""
    procs = [
        subprocess.Popen(
            [*netlab.netinit_cmd(), "--network-namespace", netns, "--force-iptables-binary", flavor, *ARGS],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    results = [(p.wait(timeout=60), p.stderr.read() if p.stderr else "") for p in procs]
    assert [rc for rc, _ in results] == [0] * 8, [err for rc, err in results if rc]
    assert sum("capture rules applied" in err for _, err in results) == 1
    assert sum("already in place" in err for _, err in results) == 7
    live = parse_save(netlab.normalize_save(netlab.iptables_save(netns, flavor)))
    expected = desired_state(plan(config_from_flags(ARGS, facts=HostFacts(has_global_ipv4=False))).v4)
    for table, st_ in expected.items():
        for chain, specs in st_.chains.items():
            assert [s for s in live[table].chains.get(chain, []) if s in specs] == specs, (table, chain)
            assert len(live[table].chains.get(chain, [])) == len(specs), f"duplicated rules in {table}/{chain}"
