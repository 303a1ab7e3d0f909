"""Apply, re-apply and clean up the native-nftables rendering (``--native-nftables``) with the ``nft`` CLI.

The whole change is one ``nft -f -`` script (``nft.transaction``): nft commits a script atomically, so a failing
statement leaves the namespace exactly as it was and there is nothing to roll back. Our tables are replaced
whole, which makes a re-run a no-op in effect; netinit still compares first (``nft list ruleset inet``) so that
a re-run changes nothing at all, and so that tables of ours that differ from the plan are refused without
``--reconcile``, the same contract as the iptables path. Only the three ``istio-proxy-*`` tables are ever
read, replaced or deleted.
"""

from __future__ import annotations

import os

from netinit.apply.runner import Runner, denied, find_executable, privilege_message
from netinit.apply.steps import Step, run_steps
from netinit.errors import ApplyError, BackendError, DriftError, NetinitError
from netinit.rules import nft

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    Log = Callable[[str], None]

_FALLBACK_PATHS = ("/usr/sbin/nft", "/sbin/nft")
CHECK_PREFIX = "netinit-check-"  # temporary hook-less tables of ``NftApplier.canonical``


def nft_binary(
    which: Callable[[str], str | None] = find_executable, fallbacks: tuple[str, ...] = _FALLBACK_PATHS
) -> str:
    """The ``nft`` CLI (PATH, then /usr/sbin: an init container's PATH may lack sbin)."""
    found = which("nft") or next((p for p in fallbacks if os.access(p, os.X_OK)), None)
    if found:
        return found
    raise BackendError(
        "netinit: --native-nftables needs the nft command, which is not installed (Debian: apt-get install nftables)"
    )


class NftApplier:
    """Our tables as nft lists them, and ``nft -f -`` transactions, through the Runner seam."""

    def __init__(self, runner: Runner, binary: str, table_names: Callable[[], list[str]] | None = None) -> None:
        self.runner = runner
        self.nft = binary
        # Production: the namespace's inet tables over netlink (netinit.apply.netns.nft_table_names), so that a
        # namespace holding none of ours is known without starting nft; None (tests' canned runners): always list.
        self._table_names = table_names

    def live(self, leftovers: bool = False) -> dict[str, str]:
        """Our tables that exist, as listed (other inet tables are ignored); with ``leftovers`` also temporary
        check tables an interrupted run left behind. Where netlink finds no such table (a fresh pod), nft is not
        started; where the dump is refused, nft runs and says why."""
        if self._table_names is not None:
            try:
                names: list[str] | None = self._table_names()
            except OSError:
                names = None
            if names is not None and not any(
                n in nft.TABLE_NAMES or (leftovers and n.startswith(CHECK_PREFIX)) for n in names
            ):
                return {}
        res = self.runner.run([self.nft, "list", "ruleset", "inet"])
        if res.returncode != 0 and denied(res.stderr):
            raise BackendError(
                privilege_message("native nftables", f"{self.nft} list ruleset inet: {res.stderr.strip()}")
            )
        if res.returncode != 0:
            raise BackendError(f"netinit: {self.nft} list ruleset inet failed: {res.stderr.strip()}")
        return {
            n: t
            for n, t in nft.split_tables(res.stdout).items()
            if n in nft.TABLE_NAMES or (leftovers and n.startswith(CHECK_PREFIX))
        }

    def run(self, script: str) -> None:
        res = self.runner.run([self.nft, "-f", "-"], stdin=script)
        if res.returncode != 0:
            raise ApplyError(
                f"netinit: {self.nft} -f - failed (exit {res.returncode}), nothing was applied "
                f"(nft transactions are atomic): {res.stderr.strip()}"
            )

    def canonical(self, tables: dict[str, str]) -> dict[str, list[str]] | None:
        """``tables`` normalized as *this* nft prints them back; None if that cannot be found out.

        Used only when the live listing differs from our text, so that an nft that spells some expression
        differently than the one the renderer was written against is not mistaken for drift. The rules are
        loaded into temporary tables whose chains have no hooks (they see no packet) and deleted again; the
        base chains' ``type ... hook ... priority`` lines are compared as numbers by ``nft.normalize``."""
        check = {CHECK_PREFIX + n: _hookless(text, CHECK_PREFIX + n) for n, text in tables.items()}
        try:
            self.run(nft.transaction(check, existing=check))  # leftovers of a killed run go
            listed = self.runner.run([self.nft, "list", "ruleset", "inet"])
        except NetinitError:
            return None
        finally:
            self.runner.run([self.nft, "-f", "-"], stdin=nft.transaction({}, existing=check))
        got = nft.split_tables(listed.stdout) if listed.returncode == 0 else {}
        if not set(check) <= set(got):
            return None
        return {n: _with_headers(nft.normalize(got[CHECK_PREFIX + n]), nft.normalize(t)) for n, t in tables.items()}


def _hookless(text: str, name: str) -> str:
    """A rendered table renamed, its base chains turned into regular chains."""
    lines = text.splitlines()
    lines[0] = f"table inet {name} {{"
    return "\n".join(line for line in lines if not line.strip().startswith("type ")) + "\n"


def _with_headers(canon: list[str], want: list[str]) -> list[str]:
    """Put the planned base-chain lines back after their ``chain NAME {`` lines."""
    headers = {want[i - 1]: line for i, line in enumerate(want) if line.startswith("type ")}
    out: list[str] = []
    for line in canon:
        out.append(line)
        if line in headers:
            out.append(headers[line])
    return out


def _same(a: str | None, b: str | None) -> bool:
    return (a is None) == (b is None) and nft.normalize(a or "") == nft.normalize(b or "")


def differing_tables(want: dict[str, str], live: dict[str, str]) -> list[str]:
    return [n for n in nft.TABLE_NAMES if not _same(want.get(n), live.get(n))]


def apply_tables(
    want: dict[str, str],
    applier: NftApplier,
    *,
    reconcile: bool,
    force: bool,
    log: Log,
    after: Sequence[Step] = (),
    before: Sequence[Step] = (),
) -> str:
    """Make our tables ``want`` (``nft.render_tables``): nothing when already in place, refuse drift unless
    reconcile/force, else one script. ``before``/``after``: steps of the same transaction (the removal of
    iptables capture, what the rules rely on outside nftables); if one fails the tables are put back as they
    were listed before."""
    live = applier.live()
    differing = differing_tables(want, live)
    if any(n in live and n in want for n in differing):
        canon = applier.canonical({n: want[n] for n in differing if n in want and n in live})
        if canon is not None:
            spelled = [n for n in differing if n in canon and canon[n] == nft.normalize(live[n])]
            if spelled:
                log(f"{applier.nft} prints {', '.join(spelled)} differently than netinit writes it; same rules")
            differing = [n for n in differing if n not in spelled]
    if not differing and not force:
        run_steps([*before, *after])
        return "capture rules already in place; nothing to do"
    drift = [n for n in differing if n in live]
    if drift and not (reconcile or force):
        raise DriftError(
            "netinit: rules of ours already exist but differ from the plan in "
            f"{', '.join(f'table inet {n}' for n in drift)}; re-run with --reconcile to replace them "
            "(nothing was changed)"
        )
    if force:
        script = nft.transaction(want, existing=live)
    else:
        script = nft.transaction({n: want[n] for n in differing if n in want}, existing=drift)
    run_steps([*before, tables_step(applier, script, live), *after])
    return "capture rules applied" + (" (replaced drifted rules)" if drift else "")


def tables_step(applier: NftApplier, script: str, live: dict[str, str]) -> Step:
    """``script`` as a step; its undo makes our tables what ``live`` listed (nft's listing loads back). A failed
    script changed nothing (nft transactions are atomic), so then there is nothing to undo."""
    done: list[bool] = []

    def do() -> None:
        applier.run(script)
        done.append(True)

    def undo() -> None:
        if done:
            applier.run(nft.transaction(dict(live), existing=applier.live()))

    return Step("native nftables", do, undo)


def removal_step(applier: NftApplier, live: dict[str, str]) -> Step:
    """Delete our tables ``live`` (as listed); the undo loads them back."""
    return tables_step(applier, nft.transaction({}, existing=live), live)


def cleanup(applier: NftApplier) -> str:
    """Delete our tables (only ours) in one script."""
    live = applier.live(leftovers=True)
    if not live:
        return "nothing of ours to clean up"
    applier.run(nft.transaction({}, existing=live))
    return "capture rules removed"
