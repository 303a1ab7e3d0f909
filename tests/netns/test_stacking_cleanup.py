"""iptables capture and native nftables capture must not stack; cleanup says what it left behind.

- applying one kind on top of the other is refused (exit 1, nothing changed, the message names what is there and
  how to remove it) unless ``--reconcile``, which removes the other kind in the same transaction - rolled back with
  it when a later step fails;
- ``--cleanup-only`` without the flags of the original run lists the rules in built-in chains that look like
  netinit's but were not recognisable with the given flags, and says how to remove them.
"""

from __future__ import annotations

import sys

import pytest

from lab import netlab
from tests.netns.test_rollback_steps import _main, in_netns, snapshot

pytestmark = pytest.mark.requires_root

ARGS = list(netlab.SIDECAR_ARGS)


def run(ns: str, *args: str) -> tuple[int, str]:
    res = netlab.run_netinit("--network-namespace", ns, *args)
    return res.returncode, res.stderr


def test_iptables_on_top_of_native_nftables_is_refused_then_reconciled(netns: str, flavor: str) -> None:
    assert run(netns, "--native-nftables", *ARGS)[0] == 0
    before = snapshot(netns)
    rc, err = run(netns, "--force-iptables-binary", flavor, *ARGS)
    assert rc == 1, err
    assert "table inet istio-proxy-nat" in err and "--native-nftables --cleanup-only" in err and "--reconcile" in err
    assert snapshot(netns) == before
    rc, err = run(netns, "--force-iptables-binary", flavor, *ARGS, "--reconcile")
    assert rc == 0, err
    assert "istio-proxy" not in netlab.sh("nft", "list", "tables", ns=netns).stdout
    assert "ISTIO_OUTPUT" in netlab.iptables_save(netns, flavor)


def test_native_nftables_on_top_of_iptables_is_refused_then_reconciled(netns: str, flavor: str) -> None:
    assert run(netns, "--force-iptables-binary", flavor, *ARGS)[0] == 0
    before = snapshot(netns)
    rc, err = run(netns, "--native-nftables", *ARGS)
    assert rc == 1, err
    assert f"iptables-{flavor} IPv4" in err and f"--cleanup-only --force-iptables-binary {flavor}" in err
    assert snapshot(netns) == before
    rc, err = run(netns, "--native-nftables", *ARGS, "--reconcile")
    assert rc == 0, err
    assert "ISTIO_" not in netlab.iptables_save(netns, flavor)
    assert "istio-proxy-nat" in netlab.sh("nft", "list", "tables", ns=netns).stdout


@pytest.mark.parametrize("direction", ["to-native", "to-iptables"])
def test_reconcile_removal_is_rolled_back_when_a_later_step_fails(flavor: str, direction: str) -> None:
    with netlab.namespace("st") as ns, netlab.namespace("stp") as peer:
        netlab.link(ns, "10.79.0.2/24", peer, "10.79.0.1/24", v6=("fd79::2/64", "fd79::1/64"))
        ipt = ["--force-iptables-binary", flavor]
        first, second = (ipt, ["--native-nftables"]) if direction == "to-native" else (["--native-nftables"], ipt)
        assert run(ns, *first, *ARGS)[0] == 0
        before = snapshot(ns)
        res = in_netns(ns, _main([*second, "--dual-stack", "--reconcile", *ARGS], runner="FailingIp6AddrRunner()"))
        assert res.returncode == 1, res.stderr
        assert "rolled back" in res.stderr
        assert snapshot(ns) == before


def test_cleanup_without_the_original_flags_says_what_it_left(netns: str, flavor: str) -> None:
    full = [*ARGS, "-m", "TPROXY", "-c", "eth9", "-k", "veth7"]
    assert run(netns, "--force-iptables-binary", flavor, *full)[0] == 0
    rc, err = run(netns, "--force-iptables-binary", flavor, "--cleanup-only")
    assert rc == 0, err
    assert "capture rules removed" in err
    assert "IPv4 nat PREROUTING: -i eth9 -j RETURN" in err
    assert "IPv4 nat OUTPUT: -o eth9 -j RETURN" in err
    assert "CONNMARK --save-mark" in err and "MARK --set-xmark" in err
    assert "re-run --cleanup-only with the flags of the original run" in err
    shown = netlab.run_netinit("show", "--network-namespace", netns, "--force-iptables-binary", flavor)
    assert (
        "no rules of netinit's" in shown.stdout
        and "-i eth9 -j RETURN: looks like a rule netinit writes" in shown.stdout
    )
    # Every time: a second cleanup has nothing of ours left, and still names the look-alikes.
    rc, err = run(netns, "--force-iptables-binary", flavor, "--cleanup-only")
    assert rc == 0 and "nothing of ours to clean up" in err and "-i eth9 -j RETURN" in err
    # With the original flags they go, and nothing is reported.
    rc, err = run(netns, "--force-iptables-binary", flavor, "--cleanup-only", *full)
    assert rc == 0 and "look like" not in err, err
    assert "eth9" not in netlab.iptables_save(netns, flavor)


def test_netlink_table_listing_matches_nft(netns: str) -> None:
    """The stacking check reads tables over netlink (no nft process per apply): it must see what nft sees."""
    assert netlab.run_netinit("--network-namespace", netns, "--native-nftables", "-b", "*", "-i", "*").returncode == 0
    netlab.sh("nft", "add", "table", "inet", "someone-else", ns=netns)
    listed = sorted(
        line.split()[-1] for line in netlab.sh("nft", "list", "tables", "inet", ns=netns).stdout.splitlines()
    )
    code = "from netinit.apply import netns; print(' '.join(sorted(netns.nft_tables())))"
    ours = netlab.sh(sys.executable, "-c", code, ns=netns).stdout.split()
    assert ours == listed and "istio-proxy-nat" in ours
