"""``netinit show`` and ``netinit verify`` on live namespaces (legacy and nft), through the real CLI: entering the
namespace, detecting the flavour, reading iptables-save back."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lab import netlab
from netinit.apply.engine import render_restore
from netinit.core.config import HostFacts, config_from_flags
from netinit.core.plan import plan
from tests.support.cases import CASES
from tests.unit.netinit.test_show_verify import kube_inject

pytestmark = pytest.mark.requires_root

FLAGS = [*netlab.SIDECAR_ARGS, "-x", "10.0.0.0/8", "-o", "8081"]


def cli(*args: str) -> tuple[int, dict[str, Any]]:
    res = netlab.run_netinit(*args, "--json")
    assert res.returncode in (0, 1), res.stderr
    return res.returncode, json.loads(res.stdout)


@pytest.mark.parametrize("name", sorted(CASES))
def test_apply_show_replan_gives_the_applied_rules(name: str, flavor: str, netns: str) -> None:
    flags, env, facts = CASES[name]
    original = plan(config_from_flags(flags, env, facts))
    for fam in original.families():
        restore = f"{'ip6' if fam == 6 else 'ip'}tables-{flavor}-restore"
        netlab.sh(restore, "--noflush", ns=netns, input=render_restore(original.family(fam)))
    rc, doc = cli("show", "--network-namespace", netns)
    assert rc == 0
    assert doc["rules"]["flavor"] == flavor  # detected: the flavour that holds netinit's chains
    assert doc["reproducible"] and doc["findings"] == []
    f = doc["facts"]
    facts2 = HostFacts(f["has_global_ipv4"], f["has_global_ipv6"], tuple(f["dns_servers"]))
    again = plan(config_from_flags(doc["argv"], doc["env"], facts2))
    assert (again.v4, again.v6) == (original.v4, original.v6)


def ipt(flavor: str, ns: str, *args: str) -> None:
    netlab.sh(f"iptables-{flavor}", "-t", "nat", *args, ns=ns)


MUTATIONS = {
    "deleted": (("-D", "ISTIO_OUTPUT", "-d", "127.0.0.1/32", "-j", "RETURN"),),
    "extra": (("-A", "ISTIO_OUTPUT", "-d", "10.9.0.0/16", "-j", "RETURN"),),
    "reordered": (
        ("-D", "ISTIO_OUTPUT", "-m", "owner", "--uid-owner", "1337", "-j", "RETURN"),
        ("-I", "ISTIO_OUTPUT", "1", "-m", "owner", "--uid-owner", "1337", "-j", "RETURN"),
    ),
    "changed": (("-R", "ISTIO_OUTPUT", "1", "-p", "tcp", "-m", "tcp", "--dport", "8082", "-j", "RETURN"),),
    "duplicate-jump": (("-A", "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND"),),
}
EXPECTED = {
    "deleted": ("missing", "missing rule (planned #10): -A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN"),
    "extra": ("extra", "extra rule #13: -A ISTIO_OUTPUT -d 10.9.0.0/16 -j RETURN"),
    "reordered": ("reordered", "reordered: rule #1 is planned as #6: -A ISTIO_OUTPUT -m owner --uid-owner 1337"),
    "changed": ("changed", "rule #1 changed (8081 -> 8082)"),
    "duplicate-jump": ("extra", "IPv4 nat PREROUTING: extra rule #2: -A PREROUTING -p tcp -j ISTIO_INBOUND"),
}


def test_verify_detects_each_drift_and_passes_when_clean(flavor: str, netns: str) -> None:
    base = ["--network-namespace", netns]
    assert netlab.run_netinit(*base, "--force-iptables-binary", flavor, *FLAGS).returncode == 0
    rc, doc = cli("verify", *base, *FLAGS)
    assert (rc, doc["ok"], doc["drift"], doc["checked"]) == (0, True, [], ["IPv4 nat"])
    for name, commands in MUTATIONS.items():
        for c in commands:
            ipt(flavor, netns, *c)
        rc, doc = cli("verify", *base, *FLAGS)
        kind, text = EXPECTED[name]
        assert rc == 1, name
        assert [d["kind"] for d in doc["drift"]] == [kind], (name, doc["drift"])
        assert text in doc["drift"][0]["description"], name
        fixed = netlab.run_netinit(*base, "--force-iptables-binary", flavor, "--reconcile", *FLAGS)
        assert fixed.returncode == 0, fixed.stderr
        assert cli("verify", *base, *FLAGS)[0] == 0, f"{name}: --reconcile did not restore the plan"
    # Other flags than the applied ones are drift too.
    rc, doc = cli("verify", *base, *FLAGS, "-q", "9000")
    assert rc == 1 and doc["drift"][0]["planned"] == "-A ISTIO_OUTPUT -p tcp -m tcp --dport 9000 -j ISTIO_REDIRECT"


def test_verify_checks_tproxy_routing_and_show_reads_its_table(flavor: str, netns: str) -> None:
    args = [*netlab.SIDECAR_ARGS, "-m", "TPROXY", "-r", "140"]
    base = ["--network-namespace", netns]
    assert netlab.run_netinit(*base, "--force-iptables-binary", flavor, *args).returncode == 0
    assert cli("verify", *base, *args)[0] == 0
    rc, doc = cli("show", *base)
    assert doc["argv"][:10] == ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-r", "140"]
    assert doc["reproducible"]
    netlab.sh("ip", "rule", "del", "fwmark", "1337", "lookup", "140", ns=netns)
    rc, doc = cli("verify", *base, *args)
    assert rc == 1
    assert [d["description"] for d in doc["drift"]] == [
        "IPv4 routing ip rule: missing rule (planned #1): fwmark 0x539 lookup 140"
    ]


def test_verify_from_pod_against_a_live_namespace(tmp_path: Path, flavor: str, netns: str) -> None:
    pod = (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app}\nspec:\n  template:\n    metadata:\n"
        "      annotations: {traffic.sidecar.istio.io/excludeOutboundIPRanges: 10.0.0.0/8}\n"
        "    spec:\n      containers: [{name: app, image: app}]\n"
    )
    plain = tmp_path / "deploy.yaml"
    plain.write_text(pod)
    manifest = tmp_path / "injected.yaml"
    manifest.write_text(kube_inject(plain))
    args = [*netlab.SIDECAR_ARGS, "-x", "10.0.0.0/8"]
    assert netlab.run_netinit("--network-namespace", netns, "--force-iptables-binary", flavor, *args).returncode == 0
    rc, doc = cli("verify", "--network-namespace", netns, "--from-pod", str(manifest))
    assert rc == 0 and doc["ok"] and "-x 10.0.0.0/8" in doc["flags"]
    plain.write_text(pod.replace("10.0.0.0/8", "10.0.0.0/16"))
    manifest.write_text(kube_inject(plain))
    rc, doc = cli("verify", "--network-namespace", netns, "--from-pod", str(manifest))
    assert rc == 1 and doc["drift"][0]["kind"] == "changed"


def test_explain_show_verify_need_the_namespace_to_exist() -> None:
    res = subprocess.run(
        [*netlab.netinit_cmd(), "show", "--network-namespace", "no-such-ns-xyz"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2
    assert "cannot open network namespace '/var/run/netns/no-such-ns-xyz'" in res.stderr
