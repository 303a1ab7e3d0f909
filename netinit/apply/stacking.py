"""The two capture kinds must not stack: iptables rules of ours (``ISTIO_*`` chains, legacy or nft flavour) and
native nftables tables of ours (``inet istio-proxy-*``) in the same namespace would both capture. Before an apply
netinit looks for the other kind; it refuses (nothing changed) unless ``--reconcile``, which removes the other
kind in the same transaction (``netinit.apply.steps``).
"""

from __future__ import annotations

from netinit.apply import netns
from netinit.apply.runner import Runner, find_executable
from netinit.core.plan import Family
from netinit.errors import DriftError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

NATIVE_PREFIX = "istio-proxy-"


def native_tables() -> list[str]:
    """Our ``inet istio-proxy-*`` tables in this namespace, read over netlink (no nft process on every apply)."""
    return [n for n in netns.nft_tables() if n.startswith(NATIVE_PREFIX)]


def iptables_capture(
    runner: Runner, known_empty: Callable[[str, Family], bool] = lambda flavor, fam: False
) -> list[tuple[str, Family]]:
    """(flavour, family) pairs whose iptables hold a chain of ours or a jump to one. ``known_empty``
    (``netinit.apply.iptables.no_tables`` in production) skips a save the kernel says would print nothing: in a
    fresh namespace, all four."""
    found: list[tuple[str, Family]] = []
    fams: tuple[Family, ...] = (4, 6)
    for flavor in ("legacy", "nft"):
        for fam in fams:
            save = f"{'ip6' if fam == 6 else 'ip'}tables-{flavor}-save"
            if find_executable(save) is None or known_empty(flavor, fam):
                continue
            res = runner.run([save])
            if res.returncode == 0 and any(
                line.startswith(":ISTIO_") or " -j ISTIO_" in line for line in res.stdout.splitlines()
            ):
                found.append((flavor, fam))
    return found


def refuse(what: str, remove: str) -> DriftError:
    return DriftError(
        f"netinit: {what} already capture this namespace; applying the other kind on top would stack both "
        f"(nothing was changed). Remove it first ({remove}), or re-run with --reconcile to replace it in the "
        "same transaction"
    )
