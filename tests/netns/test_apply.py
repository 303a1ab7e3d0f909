"""netinit against real iptables (legacy and nft) in real network namespaces."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from lab import netlab
from netinit.__main__ import main
from netinit.apply.runner import Completed, SubprocessRunner
from netinit.core.config import config_from_flags
from netinit.core.plan import plan
from netinit.rules.save import desired_state, parse_save
from tests.support.cases import FULL, ISTIO

pytestmark = pytest.mark.requires_root

ISTIO_DEFAULT = ISTIO


def netinit(ns: str, flavor: str, *args: str) -> subprocess.CompletedProcess[str]:
    return netlab.run_netinit("--network-namespace", ns, "--force-iptables-binary", flavor, *args)


def save(ns: str, flavor: str, fam: int = 4) -> str:
    return netlab.normalize_save(netlab.iptables_save(ns, flavor, fam))


def assert_matches_plan(ns: str, flavor: str, args: Sequence[str], fam: int = 4) -> None:
    """Every table netinit planned reads back from iptables-save exactly as planned."""
    cfg = config_from_flags(args)
    rules = plan(cfg).family(4 if fam == 4 else 6)
    live = parse_save(save(ns, flavor, fam))
    for table, st in desired_state(rules).items():
        for chain, specs in st.chains.items():
            have = live[table].chains.get(chain, [])
            if chain.startswith("ISTIO_"):
                assert have == specs, f"{table}/{chain}"
            else:
                assert [s for s in have if s in specs] == specs, f"{table}/{chain}"


@pytest.mark.parametrize(
    "args", [ISTIO_DEFAULT, FULL, [*ISTIO_DEFAULT, "-m", "TPROXY"]], ids=["istio", "full", "tproxy"]
)
def test_apply_reads_back_as_planned_and_rerun_is_noop(netns: str, flavor: str, args: list[str]) -> None:
    first = netinit(netns, flavor, *args)
    assert first.returncode == 0, first.stderr
    assert "capture rules applied" in first.stderr
    assert_matches_plan(netns, flavor, args)
    before = save(netns, flavor)
    again = netinit(netns, flavor, *args)
    assert again.returncode == 0, again.stderr
    assert "already in place" in again.stderr
    assert save(netns, flavor) == before


def test_drift_refused_without_reconcile_then_replaced(netns: str, flavor: str) -> None:
    assert netinit(netns, flavor, *ISTIO_DEFAULT).returncode == 0
    netlab.sh(f"iptables-{flavor}", "-t", "nat", "-D", "ISTIO_OUTPUT", "-d", "127.0.0.1/32", "-j", "RETURN", ns=netns)
    netlab.sh(
        f"iptables-{flavor}",
        "-t",
        "nat",
        "-A",
        "ISTIO_REDIRECT",
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        "9999",
        ns=netns,
    )
    drifted = save(netns, flavor)
    refused = netinit(netns, flavor, *ISTIO_DEFAULT)
    assert refused.returncode == 1
    assert "--reconcile" in refused.stderr
    assert save(netns, flavor) == drifted
    fixed = netinit(netns, flavor, *ISTIO_DEFAULT, "--reconcile")
    assert fixed.returncode == 0, fixed.stderr
    assert_matches_plan(netns, flavor, ISTIO_DEFAULT)
    assert "9999" not in save(netns, flavor)


def test_changed_flags_reconcile_removes_stale_chains(netns: str, flavor: str) -> None:
    assert netinit(netns, flavor, *FULL).returncode == 0
    assert "ISTIO_DROP" in save(netns, flavor)
    res = netinit(netns, flavor, *ISTIO_DEFAULT, "--reconcile")
    assert res.returncode == 0, res.stderr
    text = save(netns, flavor)
    assert "ISTIO_DROP" not in text
    assert "ISTIO_OUTPUT_DNS" not in text
    assert "-i veth7 -j ISTIO_REDIRECT" not in text  # jumps to our chains are recognisably ours
    assert_matches_plan(netns, flavor, ISTIO_DEFAULT)
    # A bare "-i eth9 -j RETURN" in a built-in chain cannot be told apart from a CNI's rule, so reconcile
    # keeps it (docs/compat.md); a cleanup with the flags that created it removes it.
    assert "-A PREROUTING -i eth9 -j RETURN" in text
    assert netinit(netns, flavor, *FULL, "--cleanup-only").returncode == 0
    assert "eth9" not in save(netns, flavor)
    assert "veth7" not in save(netns, flavor)


def test_cleanup_removes_ours_and_keeps_foreign_rules(netns: str, flavor: str) -> None:
    ipt = f"iptables-{flavor}"
    netlab.sh(ipt, "-t", "nat", "-N", "CNI_CHAIN", ns=netns)
    netlab.sh(ipt, "-t", "nat", "-A", "CNI_CHAIN", "-p", "tcp", "--dport", "8443", "-j", "RETURN", ns=netns)
    netlab.sh(ipt, "-t", "nat", "-A", "PREROUTING", "-j", "CNI_CHAIN", ns=netns)
    netlab.sh(ipt, "-t", "nat", "-A", "OUTPUT", "-o", "eth1", "-j", "RETURN", ns=netns)
    netlab.sh(ipt, "-t", "mangle", "-A", "PREROUTING", "-p", "udp", "-j", "MARK", "--set-mark", "7", ns=netns)
    before = save(netns, flavor)
    assert netinit(netns, flavor, *FULL, "-m", "TPROXY").returncode == 0
    assert "ISTIO_" in save(netns, flavor)
    res = netinit(netns, flavor, "--cleanup-only")
    assert res.returncode == 0, res.stderr
    after = save(netns, flavor)
    assert "ISTIO" not in after
    foreign = [line for line in before.splitlines() if line.startswith("-A")]
    assert foreign and all(line in after.splitlines() for line in foreign)
    # Cleaning up again is a no-op.
    again = netinit(netns, flavor, "--cleanup-only")
    assert again.returncode == 0 and "nothing of ours" in again.stderr


@pytest.mark.parametrize(
    "bad",
    [
        ["-p", "0"],
        ["-b", "80,abc"],
        ["-x", "*"],
        ["-i", "10.0.0.0/33"],
        ["-c", "bad iface"],
        ["-m", "MAGIC"],
        ["-u", "nosuchuser-xyz"],
        ["-c", "averyveryverylongifname"],
    ],
)
def test_bad_flags_exit_2_and_touch_nothing(netns: str, flavor: str, bad: list[str]) -> None:
    before = save(netns, flavor)
    res = netinit(netns, flavor, *ISTIO_DEFAULT, *bad)
    assert res.returncode == 2, res.stderr
    assert "invalid value" in res.stderr
    assert repr(bad[1])[1:-1].split(",")[-1] in res.stderr or bad[1] in res.stderr
    assert save(netns, flavor) == before


def test_the_most_owner_groups_a_rule_can_hold_apply_and_one_more_is_refused_first(netns: str, flavor: str) -> None:
    """Included owner groups share one rule; iptables-restore parses at most 255 words a line. The limit netinit
    refuses beyond (49; Istio's is 64) must be one this backend really applies, and 50 must be refused before
    any rule is touched - not fail half-way through the restore, as it did before the limit."""
    from netinit.core.config import MAX_OWNER_GROUPS_INCLUDE

    groups = [str(2000 + i) for i in range(MAX_OWNER_GROUPS_INCLUDE + 1)]
    before = save(netns, flavor)
    refused = netlab.run_netinit(
        "--network-namespace",
        netns,
        "--force-iptables-binary",
        flavor,
        *ISTIO_DEFAULT,
        env={"ISTIO_OUTBOUND_OWNER_GROUPS": ",".join(groups)},
    )
    assert refused.returncode == 2, refused.stderr
    assert f"{len(groups)} groups, at most {MAX_OWNER_GROUPS_INCLUDE}" in refused.stderr
    assert save(netns, flavor) == before
    env = {"ISTIO_OUTBOUND_OWNER_GROUPS": ",".join(groups[:-1])}
    applied = netlab.run_netinit(
        "--network-namespace", netns, "--force-iptables-binary", flavor, *ISTIO_DEFAULT, env=env
    )
    assert applied.returncode == 0, applied.stderr
    rule = next(line for line in save(netns, flavor).splitlines() if "! --gid-owner 2000 " in line)
    assert rule.count("--gid-owner") == MAX_OWNER_GROUPS_INCLUDE and rule.endswith("-j RETURN"), rule


class FailingV6Runner(SubprocessRunner):
    """The real runner, except the IPv6 apply step fails (as a broken ip6tables-restore would)."""

    def run(self, argv: Sequence[str], stdin: str | None = None) -> Completed:
        if argv[0].startswith("ip6tables") and "restore" in argv[0] and "--noflush" in argv:
            return Completed(4, "", "ip6tables-restore: injected failure")
        return super().run(argv, stdin)


def _in_netns(ns: str, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_v6_failure_rolls_back_both_families(flavor: str) -> None:
    with netlab.namespace("t") as a, netlab.namespace("t") as b:
        netlab.link(a, "10.77.0.2/24", b, "10.77.0.1/24", v6=("fd77::2/64", "fd77::1/64"))
        netlab.sh(f"iptables-{flavor}", "-t", "nat", "-A", "OUTPUT", "-d", "10.9.9.9/32", "-j", "RETURN", ns=a)
        netlab.sh(f"ip6tables-{flavor}", "-t", "nat", "-A", "OUTPUT", "-d", "fd99::9/128", "-j", "RETURN", ns=a)
        v4_before, v6_before = save(a, flavor, 4), save(a, flavor, 6)
        code = (
            "import sys\n"
            "from tests.netns.test_apply import FailingV6Runner\n"
            "from netinit.__main__ import main\n"
            f"sys.exit(main(['--force-iptables-binary', '{flavor}', '--dual-stack', *{ISTIO_DEFAULT!r}], {{}},"
            " FailingV6Runner()))\n"
        )
        res = _in_netns(a, code)
        assert res.returncode == 1, res.stderr
        assert "rolled back" in res.stderr
        assert save(a, flavor, 4) == v4_before
        assert save(a, flavor, 6) == v6_before
        # Without the fault the same run applies both families.
        ok = netlab.run_netinit(
            "--network-namespace", a, "--force-iptables-binary", flavor, "--dual-stack", *ISTIO_DEFAULT
        )
        assert ok.returncode == 0, ok.stderr
        assert "ISTIO_OUTPUT" in save(a, flavor, 6)
        assert "-A ISTIO_OUTPUT -d ::1/128 -j RETURN" in save(a, flavor, 6)


def test_pid_targets_the_process_namespace(netns: str, flavor: str) -> None:
    sleeper = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "30"])
    try:
        import time

        time.sleep(0.2)
        res = netlab.run_netinit("--pid", str(sleeper.pid), "--force-iptables-binary", flavor, *ISTIO_DEFAULT)
        assert res.returncode == 0, res.stderr
        assert_matches_plan(netns, flavor, ISTIO_DEFAULT)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_missing_namespace_is_a_clear_error() -> None:
    res = netlab.run_netinit("--network-namespace", "no-such-ns-xyz", *ISTIO_DEFAULT)
    assert res.returncode == 2
    assert "no-such-ns-xyz" in res.stderr


def test_in_process_main_applies_in_current_namespace(netns: str) -> None:
    code = f"import sys; from netinit.__main__ import main; sys.exit(main({ISTIO_DEFAULT!r}, {{}}))"
    res = _in_netns(netns, code)
    assert res.returncode == 0, res.stderr
    assert "ISTIO_INBOUND" in netlab.sh("iptables-save", ns=netns).stdout or "ISTIO_INBOUND" in save(netns, "legacy")
    assert main is not None


def test_auto_detection_in_a_fresh_namespace_starts_no_save(netns: str, tmp_path: Path) -> None:
    """A fresh pod namespace holds no table of either flavour, so netinit starts no iptables-save to learn that or
    to snapshot it (the kernel says so: /proc/net/ip_tables_names, an nf_tables netlink dump); once a flavour
    holds tables, its save runs again, and legacy with rules is kept, as before."""
    log = tmp_path / "calls"
    shims = tmp_path / "bin"
    shims.mkdir()
    for name in ("iptables-legacy-save", "iptables-nft-save"):
        real = shutil.which(name)
        assert real is not None
        (shims / name).write_text(f'#!/bin/sh\necho {name} >> {log}\nexec {real} "$@"\n')
        (shims / name).chmod(0o755)
    env = {"PATH": f"{shims}:{os.environ['PATH']}"}
    probe = "from netinit.apply.iptables import no_tables; print(no_tables('legacy', 4), no_tables('nft', 4))"
    assert _in_netns(netns, probe).stdout.split() == ["True", "True"]

    res = netlab.run_netinit("--network-namespace", netns, "-i", "*", "-b", "*", env=env)
    assert res.returncode == 0, res.stderr
    assert "backend: iptables-nft" in res.stderr
    assert not log.exists()  # neither probe nor snapshot needed a process
    assert "ISTIO_OUTPUT" in save(netns, "nft")
    assert _in_netns(netns, probe).stdout.split() == ["True", "False"]
    res = netlab.run_netinit("--network-namespace", netns, "-i", "*", "-b", "*", env=env)  # a re-run: a no-op
    assert res.returncode == 0, res.stderr
    assert log.read_text().split() == ["iptables-nft-save"]  # now there is something to read
    assert netinit(netns, "nft", "--cleanup-only").returncode == 0

    assert netinit(netns, "legacy", "-i", "*", "-b", "*").returncode == 0
    assert _in_netns(netns, probe).stdout.split()[0] == "False"
    log.write_text("")
    res = netlab.run_netinit("--network-namespace", netns, "-i", "*", "-b", "*", env=env)
    assert res.returncode == 0, res.stderr
    assert "backend: iptables-legacy" in res.stderr and log.read_text().split() == ["iptables-legacy-save"]


def test_native_apply_in_a_fresh_namespace_is_one_nft_process(netns: str, tmp_path: Path) -> None:
    """--native-nftables in a fresh namespace: the stacking check starts no iptables-save (no table of either
    flavour) and nothing lists our tables (netlink finds none), so the apply is the one ``nft -f``. A re-run lists
    them (they exist now), and iptables capture of ours is still found and refused."""
    log = tmp_path / "calls"
    shims = tmp_path / "bin"
    shims.mkdir()
    for name in ("iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save", "ip6tables-nft-save", "nft"):
        real = shutil.which(name)
        assert real is not None
        (shims / name).write_text(f'#!/bin/sh\necho {name} "$@" >> {log}\nexec {real} "$@"\n')
        (shims / name).chmod(0o755)
    env = {"PATH": f"{shims}:{os.environ['PATH']}"}
    res = netlab.run_netinit("--network-namespace", netns, "--native-nftables", "-i", "*", "-b", "*", env=env)
    assert res.returncode == 0, res.stderr
    assert log.read_text().splitlines() == ["nft -f -"]
    log.write_text("")
    res = netlab.run_netinit("--network-namespace", netns, "--native-nftables", "-i", "*", "-b", "*", env=env)
    assert res.returncode == 0, res.stderr
    assert "nft list ruleset inet" in log.read_text().splitlines()
    assert netlab.run_netinit("--network-namespace", netns, "--native-nftables", "--cleanup-only").returncode == 0
    assert netinit(netns, "nft", "-i", "*", "-b", "*").returncode == 0  # iptables capture of ours
    res = netlab.run_netinit("--network-namespace", netns, "--native-nftables", "-i", "*", "-b", "*", env=env)
    assert res.returncode != 0 and "would stack both" in res.stderr, res.stderr


def test_no_tables_is_per_family_and_never_guesses(netns: str) -> None:
    """The shortcut answers "empty" only for what the kernel listed: an ip6 table leaves IPv4 empty but not IPv6,
    and a dump the kernel refuses (no CAP_NET_ADMIN) is "unknown", so the real iptables-save runs and reports."""
    netlab.sh("nft", "add", "table", "ip6", "other", ns=netns)
    netlab.sh("ip6tables-legacy", "-t", "nat", "-N", "X", ns=netns)
    probe = (
        "from netinit.apply.iptables import no_tables; "
        "print(*(no_tables(fl, fam) for fl in ('nft', 'legacy') for fam in (4, 6)))"
    )
    assert _in_netns(netns, probe).stdout.split() == ["True", "False", "True", "False"]
    unprivileged = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "setpriv",
            "--reuid",
            "1000",
            "--regid",
            "1000",
            "--clear-groups",
            sys.executable,
            "-c",
            probe.replace("fl in ('nft', 'legacy')", "fl in ('nft',)"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert unprivileged.returncode == 0, unprivileged.stderr
    assert unprivileged.stdout.split() == ["False", "False"]
