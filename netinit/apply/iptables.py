"""The iptables backends: which binaries to call (legacy or nft), their detection, and the restore applier.

Every command runs through a ``netinit.apply.runner.Runner``.
"""

from __future__ import annotations

from netinit.apply import netns
from netinit.apply.runner import Runner, denied, find_executable, privilege_message
from netinit.core.plan import Family
from netinit.errors import ApplyError, BackendError
from netinit.typing_lite import NamedTuple, Protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


class Backend(NamedTuple):
    """One iptables flavour: the save/restore binaries for each family."""

    flavor: str  # "legacy" | "nft"

    def save_cmd(self, fam: Family) -> list[str]:
        return [f"{'ip6' if fam == 6 else 'ip'}tables-{self.flavor}-save"]

    def restore_cmd(self, fam: Family) -> list[str]:
        return [f"{'ip6' if fam == 6 else 'ip'}tables-{self.flavor}-restore"]


def _binaries(flavor: str) -> list[str]:
    return [f"{p}tables-{flavor}-{op}" for p in ("ip", "ip6") for op in ("save", "restore")]


def no_tables(flavor: str, fam: Family) -> bool:
    """True when the kernel says this namespace holds no ``flavor`` table of family ``fam``, so that flavour's
    ``iptables-save`` would print nothing and need not be started: a fresh pod namespace is like that, and the
    save is one process start of every pod's start-up. Legacy: ``/proc/net/ip{,6}_tables_names`` is empty (the
    file iptables-legacy-save itself reads to know what to dump). nft: a netlink dump of the family's nf_tables
    tables finds none (iptables-nft-save prints only those). Missing, unreadable or refused: False, and the real
    command runs (and reports what is wrong)."""
    if flavor == "nft":
        try:
            return not netns.nft_table_names(netns.NFPROTO_IPV6 if fam == 6 else netns.NFPROTO_IPV4)
        except OSError:
            return False
    try:
        with open(f"/proc/net/ip{'6' if fam == 6 else ''}_tables_names", "rb") as names:
            return names.read(1) == b""
    except OSError:
        return False


def detect_backend(
    runner: Runner,
    forced: str | None = None,
    which: Callable[[str], str | None] | None = None,
    known_empty: Callable[[str, Family], bool] = lambda flavor, fam: False,
) -> tuple[Backend, str]:
    """Like istio-iptables: legacy only when legacy already holds rules and works; else nft; else legacy.

    ``forced`` (``--force-iptables-binary``) skips detection but still checks the binaries exist.
    Returns the backend and the IPv4 ``iptables-save`` text its probe read, so the caller's snapshot
    need not run the same command again (netinit's run time is pod start-up time). ``known_empty``
    (:func:`no_tables` in production) answers a probe without running its ``iptables-save`` when the kernel
    says it would print nothing; the binaries must still exist.
    """
    lookup = which if which is not None else find_executable
    problems: list[str] = []
    refused: list[str] = []  # failures for want of privilege

    def probe(flavor: str) -> str | None:
        missing = [b for b in _binaries(flavor) if lookup(b) is None]
        if missing:
            problems.append(f"{flavor}: {', '.join(missing)} not found")
            return None
        if known_empty(flavor, 4):
            return ""
        res = runner.run(Backend(flavor).save_cmd(4))
        if res.returncode != 0:
            problems.append(f"{flavor}: iptables-{flavor}-save failed: {res.stderr.strip() or res.returncode}")
            if denied(res.stderr):
                refused.append(problems[-1])
            return None
        return res.stdout

    if forced:
        state = probe(forced)
        if state is None and refused:
            raise BackendError(privilege_message("reading iptables", "; ".join(refused)))
        if state is None:
            raise BackendError(f"netinit: --force-iptables-binary {forced} is not usable here: {'; '.join(problems)}")
        return Backend(forced), state
    legacy = probe("legacy")
    if legacy is not None and any(line.startswith("-A ") for line in legacy.splitlines()):
        return Backend("legacy"), legacy
    nft = probe("nft")
    if nft is not None:
        return Backend("nft"), nft
    if legacy is not None:
        return Backend("legacy"), legacy
    if refused:
        raise BackendError(privilege_message("reading iptables", "; ".join(refused)))
    raise BackendError(
        "netinit: no usable iptables backend (" + "; ".join(problems) + "). "
        "Install iptables (Debian: apt-get install iptables) and make sure the kernel has "
        "ip_tables or nf_tables with the nat table."
    )


class Applier(Protocol):
    """Reads and writes one family's tables. ``apply`` is one ``--noflush`` transaction."""

    name: str
    backend: Backend

    def save(self, fam: Family) -> str: ...

    def apply(self, fam: Family, payload: str) -> None: ...

    def restore(self, fam: Family, snapshot: str) -> None: ...


class RestoreApplier:
    """The default: ``iptables-restore --noflush`` of the rendered payload."""

    name = "restore"

    def __init__(
        self,
        backend: Backend,
        runner: Runner,
        probed_v4: str | None = None,
        known_empty: Callable[[str, Family], bool] = lambda flavor, fam: False,
    ) -> None:
        self.backend = backend
        self.runner = runner
        self._probed_v4 = probed_v4  # detection's read, served once to the first IPv4 save
        self._known_empty = known_empty  # as in detect_backend: skips a save that would print nothing

    def save(self, fam: Family) -> str:
        if fam == 4 and self._probed_v4 is not None:
            state, self._probed_v4 = self._probed_v4, None
            return state
        if self._known_empty(self.backend.flavor, fam):
            return ""
        res = self.runner.run(self.backend.save_cmd(fam))
        if res.returncode != 0:
            raise BackendError(f"netinit: {' '.join(self.backend.save_cmd(fam))} failed: {res.stderr.strip()}")
        return res.stdout

    def apply(self, fam: Family, payload: str) -> None:
        cmd = [*self.backend.restore_cmd(fam), "--noflush"]
        res = self.runner.run(cmd, stdin=payload)
        if res.returncode != 0:
            raise ApplyError(f"netinit: {' '.join(cmd)} failed (exit {res.returncode}): {res.stderr.strip()}")

    def restore(self, fam: Family, snapshot: str) -> None:
        cmd = self.backend.restore_cmd(fam)
        res = self.runner.run(cmd, stdin=snapshot)
        if res.returncode != 0:
            raise ApplyError(f"netinit: rollback with {' '.join(cmd)} failed: {res.stderr.strip()}")
