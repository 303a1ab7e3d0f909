"""``netinit --run-validation --skip-rule-apply`` as Istio's ``istio-validation`` runs it in CNI mode: uid/gid 1337,
no capabilities at all (setpriv), in a namespace whose rules the node programmed. It must pass when the capture is
there, exit 126 when it is not, touch nothing, and need no lock, no iptables binary and no privilege."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import netlab
from netinit_cni.program import BACKENDS

pytestmark = pytest.mark.requires_root
ARGS = list(netlab.SIDECAR_ARGS)
ROOT = Path(__file__).resolve().parents[2]
NO_PRIVILEGE = ["setpriv", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]
BACKEND = {name: args for name, args in BACKENDS.items() if name != "auto"}  # the agent's own table


@pytest.fixture
def pod() -> Iterator[str]:
    with netlab.namespace("vu") as pod, netlab.namespace("vw") as peer:
        netlab.link(pod, "10.88.7.2/24", peer, "10.88.7.1/24", v6=("fd88:7::2/64", "fd88:7::1/64"))
        netlab.sh("ip", "route", "add", "default", "via", "10.88.7.1", ns=pod)
        netlab.sh("ip", "-6", "route", "add", "default", "via", "fd88:7::1", ns=pod)
        yield pod


def _validate(ns: str, *extra: str, uid: int = 1337) -> subprocess.CompletedProcess[str]:
    cmd = [*NO_PRIVILEGE, f"--reuid={uid}", f"--regid={uid}", *netlab.netinit_cmd(), *ARGS, *extra,
           "--run-validation", "--skip-rule-apply"]  # fmt: skip
    return netlab.sh(*cmd, ns=ns, check=False)


def _state(ns: str) -> str:
    saves = [netlab.normalize_save(netlab.sh(c, ns=ns).stdout) for c in ("iptables-legacy-save", "iptables-nft-save")]
    return "".join(saves) + netlab.sh("nft", "-s", "list", "ruleset", ns=ns).stdout


@pytest.mark.parametrize("backend", sorted(BACKEND))
def test_validation_as_1337_without_capabilities_passes_on_programmed_rules(pod: str, backend: str) -> None:
    applied = netlab.run_netinit("--network-namespace", pod, *ARGS, *BACKEND[backend])
    assert applied.returncode == 0, applied.stderr
    before = _state(pod)
    res = _validate(pod, *(["--native-nftables"] if backend == "native-nft" else []))
    assert res.returncode == 0, res.stderr
    assert (
        "validation probed: IPv4 loopback" in res.stderr and "outbound probe (as an app uid) is not run" in res.stderr
    )
    assert _state(pod) == before  # touched nothing


def test_validation_without_rules_exits_126_and_names_what_failed(pod: str) -> None:
    res = _validate(pod)
    assert res.returncode == 126
    assert "127.0.0.6:15002 did not reach the inbound port 15006" in res.stderr


def test_validation_probes_each_captured_family(pod: str) -> None:
    assert netlab.run_netinit("--network-namespace", pod, *ARGS, "--dual-stack").returncode == 0
    res = _validate(pod, "--dual-stack")
    assert res.returncode == 0, res.stderr
    assert "IPv4 loopback, IPv6 loopback" in res.stderr


def test_only_a_proxy_uid_can_validate_unprivileged(pod: str) -> None:
    assert netlab.run_netinit("--network-namespace", pod, *ARGS).returncode == 0
    res = _validate(pod, uid=1000)
    assert res.returncode == 126 and "run it as a proxy uid (1337)" in res.stderr


def test_the_node_agents_capabilities_are_enough_to_program_and_validate(pod: str) -> None:
    """The DaemonSet's container runs netinit as root with only the capabilities the overlay grants (no CAP_KILL,
    no DAC_OVERRIDE, ...): the apply and the full root validation (app uid, proxy uid) must work with just those."""
    import yaml

    ds = yaml.safe_load((ROOT / "manifests" / "overlays" / "cni" / "daemonset.yaml").read_text())
    caps = ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
    bounding = "-all," + ",".join(f"+{c.lower()}" for c in caps)
    cmd = ["setpriv", f"--bounding-set={bounding}", *netlab.netinit_cmd(), "--network-namespace", pod, *ARGS,
           "--run-validation"]  # fmt: skip
    res = netlab.sh(*cmd, check=False)
    assert res.returncode == 0, res.stderr
    assert "validation probed: IPv4 outbound, IPv4 loopback" in res.stderr
