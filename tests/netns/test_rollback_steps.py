"""Exit 1 means rolled back - also when the failing step is outside the tables (the TPROXY policy route, ``::6``
on lo), and a missing prerequisite (pyroute2, python-iptables) is found before anything is touched.

Each fault is injected at its exact step in a subprocess inside the namespace (``-c`` wrapper): a Runner that fails
one command, pyroute2's route call raising after the rule was added, or an import made to fail. Afterwards the
namespace must equal its snapshot: both families' iptables (or nft's tables), ``ip rule``, table 133 and lo's
addresses.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

import pytest

from lab import netlab
from netinit.apply.runner import Completed, SubprocessRunner

pytestmark = pytest.mark.requires_root

TPROXY = [*netlab.SIDECAR_ARGS, "-m", "TPROXY"]


class FailingIp6AddrRunner(SubprocessRunner):
    """The real runner, except adding ``::6`` to lo fails (as on a kernel that refuses it)."""

    def run(self, argv: Sequence[str], stdin: str | None = None) -> Completed:
        if argv[0].endswith("ip") and "::6/128" in argv and "add" in argv:
            return Completed(2, "", "RTNETLINK answers: injected failure")
        return super().run(argv, stdin)


_BUILTIN = (":PREROUTING ACCEPT", ":INPUT ACCEPT", ":FORWARD ACCEPT", ":OUTPUT ACCEPT", ":POSTROUTING ACCEPT")


def _content(text: str) -> str:
    """iptables-save text as its rules and chains per table; an empty table (which legacy cannot unregister once
    a restore touched it) reads as absent."""
    out, table = [], ""
    for line in netlab.normalize_save(text).splitlines():
        if line.startswith("*"):
            table = line
        elif line != "COMMIT" and line not in _BUILTIN:
            out.append(f"{table} {line}")
    return "\n".join(out)


def snapshot(ns: str) -> dict[str, str]:
    out = {}
    for name, argv in {
        "legacy4": ["iptables-legacy-save"],
        "legacy6": ["ip6tables-legacy-save"],
        "nft4": ["iptables-nft-save"],
        "nft6": ["ip6tables-nft-save"],
        "nft": ["nft", "list", "ruleset", "inet"],  # ip/ip6 tables: via iptables-nft-save
        "rule4": ["ip", "-4", "rule"],
        "rule6": ["ip", "-6", "rule"],
        "route4": ["ip", "-4", "route", "show", "table", "all"],
        "route6": ["ip", "-6", "route", "show", "table", "all"],
        "lo": ["ip", "addr", "show", "dev", "lo"],
    }.items():
        text = netlab.sh(*argv, ns=ns, check=False).stdout
        out[name] = _content(text) if "save" in argv[0] else text
    return out


def in_netns(ns: str, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def _main(args: Sequence[str], runner: str = "None", prelude: str = "") -> str:
    return (
        "import sys\n" + prelude + "from netinit.__main__ import main\n"
        "from tests.netns.test_rollback_steps import FailingIp6AddrRunner\n"
        f"sys.exit(main({list(args)!r}, {{}}, {runner}))\n"
    )


# pyroute2's route call fails after the ip rule was added: the half-done step must be undone too.
_ROUTE_FAILS = (
    "import pyroute2\n"
    "from pyroute2 import NetlinkError\n"
    "def _fail(self, *a, **k):\n"
    "    raise NetlinkError(22, 'injected route failure')\n"
    "pyroute2.IPRoute.route = _fail\n"
)


@pytest.fixture
def dual_stack_pod() -> object:
    with netlab.namespace("rb") as a, netlab.namespace("rbp") as b:
        netlab.link(a, "10.78.0.2/24", b, "10.78.0.1/24", v6=("fd78::2/64", "fd78::1/64"))
        yield a


@pytest.mark.parametrize("backend", ["legacy", "nft", "native"])
def test_tproxy_route_failure_rolls_back_everything(dual_stack_pod: str, backend: str) -> None:
    ns = dual_stack_pod
    sel = ["--native-nftables"] if backend == "native" else ["--force-iptables-binary", backend]
    before = snapshot(ns)
    res = in_netns(ns, _main([*sel, "--dual-stack", *TPROXY], prelude=_ROUTE_FAILS))
    assert res.returncode == 1, res.stderr
    assert "injected route failure" in res.stderr and "rolled back" in res.stderr
    assert "capture rules applied" not in res.stderr
    assert res.stderr.count("injected route failure") == 1  # one message, not the error twice
    assert snapshot(ns) == before
    # A re-run without the fault applies (it is not "already in place").
    ok = netlab.run_netinit("--network-namespace", ns, *sel, "--dual-stack", *TPROXY)
    assert ok.returncode == 0 and "capture rules applied" in ok.stderr, ok.stderr
    assert "fwmark 0x539 lookup 133" in netlab.sh("ip", "rule", ns=ns).stdout


@pytest.mark.parametrize("backend", ["legacy", "nft", "native"])
def test_loopback6_failure_rolls_back_everything(dual_stack_pod: str, backend: str) -> None:
    ns = dual_stack_pod
    sel = ["--native-nftables"] if backend == "native" else ["--force-iptables-binary", backend]
    before = snapshot(ns)
    res = in_netns(ns, _main([*sel, "--dual-stack", *TPROXY], runner="FailingIp6AddrRunner()"))
    assert res.returncode == 1, res.stderr
    assert "adding ::6/128 to lo failed" in res.stderr and "rolled back" in res.stderr
    assert snapshot(ns) == before


@pytest.mark.parametrize(
    ("args", "block", "needle"),
    [
        (["--force-iptables-binary", "legacy", *TPROXY], "pyroute2", "TPROXY mode needs pyroute2"),
        (["--native-nftables", *TPROXY], "pyroute2", "TPROXY mode needs pyroute2"),
        (["--applier", "iptc", *netlab.SIDECAR_ARGS], "iptc", "--applier iptc needs python-iptables"),
    ],
    ids=["tproxy-legacy", "tproxy-native", "iptc"],
)
def test_missing_module_is_exit_2_before_anything_is_touched(
    netns: str, args: list[str], block: str, needle: str
) -> None:
    before = snapshot(netns)
    res = in_netns(netns, _main(args, prelude=f"sys.modules[{block!r}] = None\n"))
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr and "Traceback" not in res.stderr
    assert snapshot(netns) == before
