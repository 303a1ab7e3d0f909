"""`netinit verify --native-nftables` on a live namespace: clean after apply, drift named per table."""

from __future__ import annotations

import pytest

from lab import netlab

pytestmark = pytest.mark.requires_root

ARGS = ["--native-nftables", *netlab.SIDECAR_ARGS]


def test_verify_native_nftables_clean_then_drift(netns: str) -> None:
    applied = netlab.run_netinit("--network-namespace", netns, *ARGS)
    assert applied.returncode == 0, applied.stderr
    clean = netlab.run_netinit("verify", "--network-namespace", netns, *ARGS)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "ok: the live rules are as planned" in clean.stdout
    # Someone adds a rule to our nat table's output chain.
    netlab.sh(
        "nft", "add", "rule", "inet", "istio-proxy-nat", "output", "tcp", "dport", "9999", "counter", "accept", ns=netns
    )
    drift = netlab.run_netinit("verify", "--network-namespace", netns, *ARGS)
    assert drift.returncode == 1, drift.stdout + drift.stderr
    assert "DRIFT table inet istio-proxy-nat: changed" in drift.stdout
    assert "+" in drift.stdout and "9999" in drift.stdout
    # Someone deletes the whole table.
    netlab.sh("nft", "delete", "table", "inet", "istio-proxy-nat", ns=netns)
    gone = netlab.run_netinit("verify", "--network-namespace", netns, *ARGS)
    assert gone.returncode == 1 and "DRIFT table inet istio-proxy-nat: missing" in gone.stdout


def test_show_reads_native_tables_and_says_so(netns: str) -> None:
    assert netlab.run_netinit("--network-namespace", netns, *ARGS).returncode == 0
    shown = netlab.run_netinit("show", "--network-namespace", netns)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "native nftables" in shown.stdout + shown.stderr
    assert "-p 15001" in shown.stdout and "-z 15006" in shown.stdout
