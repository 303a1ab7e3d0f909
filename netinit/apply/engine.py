"""Apply, reconcile and clean up a RuleSet atomically, with a snapshot to roll back to.

The live state is read with iptables-save and compared with the plan's *desired state* (our chains and
their rules, plus our rules inside the built-in chains). From the difference we render one
``iptables-restore --noflush`` transaction per family:

- our chains are declared ``:CHAIN - [0:0]`` (create-or-flush), so a re-run never hits "Chain already exists";
- a built-in chain whose rules of ours already read as planned is left alone (jumps added only when missing);
  otherwise our rules in it are deleted and re-added in plan order;
- chains of ours that the plan no longer uses are flushed and deleted.

Both families are snapshotted first; if anything fails, every family is restored from its snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

from netinit.apply.iptables import Applier
from netinit.core.plan import BUILTIN_CHAINS, OWN_CHAINS, TABLE_ORDER, Family, Rule, RuleSet, chains_in_order
from netinit.errors import ApplyError, DriftError, NetinitError
from netinit.rules.save import TableState, desired_state, jump_target, parse_save

Log = Callable[[str], None]


class TableDiff(NamedTuple):
    table: str
    in_place: bool
    residue: bool
    payload: str = ""


def _ours_in_builtin(specs: Iterable[str], wanted: set[str]) -> list[str]:
    return [s for s in specs if s in wanted or jump_target(s) in OWN_CHAINS]


def diff_family(rules: tuple[Rule, ...], current: dict[str, TableState]) -> list[TableDiff]:
    """Compare the plan with the live tables of one family; render the transaction for each table."""
    desired = desired_state(rules)
    tables = [t for t in TABLE_ORDER if t in desired or _has_ours(current.get(t))]
    out: list[TableDiff] = []
    for t in tables:
        des = desired.get(t, TableState())
        cur = current.get(t, TableState())
        des_own = des.own_chains()
        cur_own = cur.own_chains()
        lines = [f"*{t}"]
        declared = chains_in_order(rules, t)
        stale = [c for c in cur_own if c not in des_own]
        lines += [f":{c} - [0:0]" for c in declared + stale]
        builtin_ok: dict[str, bool] = {}
        residue = bool(cur_own)
        for ch in sorted(BUILTIN_CHAINS):
            want = des.chains.get(ch, [])
            have = _ours_in_builtin(cur.chains.get(ch, []), set(want))
            residue = residue or bool(have)
            builtin_ok[ch] = have == want
            if not builtin_ok[ch]:
                lines += [f"-D {ch} {s}" for s in have]
        lines += [f"-X {c}" for c in stale]
        for r in rules:
            if r.table == t and not (r.chain in BUILTIN_CHAINS and builtin_ok[r.chain]):
                lines.append(r.line())
        lines.append("COMMIT")
        in_place = des_own == cur_own and all(builtin_ok.values())
        out.append(TableDiff(t, in_place, residue, "\n".join(lines) + "\n"))
    return out


def _has_ours(st: TableState | None) -> bool:
    if st is None:
        return False
    return bool(st.own_chains()) or any(_ours_in_builtin(st.chains.get(ch, []), set()) for ch in BUILTIN_CHAINS)


def render_restore(rules: tuple[Rule, ...]) -> str:
    """The payload for an empty namespace: exactly what a first apply feeds iptables-restore."""
    return "".join(d.payload for d in diff_family(rules, {}))


def render_cleanup(rules: tuple[Rule, ...], current: dict[str, TableState]) -> str:
    """Remove our chains and our rules in built-in chains; foreign rules stay."""
    desired = desired_state(rules)
    out: list[str] = []
    for t in TABLE_ORDER:
        cur = current.get(t)
        if cur is None:
            continue
        want = {s for ch in BUILTIN_CHAINS for s in desired.get(t, TableState()).chains.get(ch, [])}
        dels = [f"-D {ch} {s}" for ch in sorted(BUILTIN_CHAINS) for s in _ours_in_builtin(cur.chains.get(ch, []), want)]
        own = list(cur.own_chains())
        if not dels and not own:
            continue
        out += [f"*{t}", *dels, *[f"-F {c}" for c in own], *[f"-X {c}" for c in own], "COMMIT"]
    return "\n".join(out) + ("\n" if out else "")


def _rollback_payload(snapshot: str, touched_tables: Iterable[str]) -> str:
    """A snapshot re-applied without --noflush; tables that did not exist then are emptied."""
    present = set(parse_save(snapshot))
    extra = "".join(f"*{t}\nCOMMIT\n" for t in touched_tables if t not in present)
    return snapshot + extra


class Transaction:
    """Snapshot every family, run the per-family steps, roll everything back if one fails."""

    def __init__(self, applier: Applier, families: tuple[Family, ...], log: Log) -> None:
        self.applier = applier
        self.families = families
        self.log = log
        self.snapshots: dict[Family, str] = {}
        self.touched: dict[Family, set[str]] = {}

    def snapshot(self) -> dict[Family, dict[str, TableState]]:
        states = {}
        for fam in self.families:
            self.snapshots[fam] = self.applier.save(fam)
            states[fam] = parse_save(self.snapshots[fam])
        return states

    def run(self, payloads: dict[Family, str]) -> None:
        done: list[Family] = []
        try:
            for fam in self.families:
                if not payloads.get(fam):
                    continue
                self.touched[fam] = set(parse_save(payloads[fam]))
                done.append(fam)
                self.applier.apply(fam, payloads[fam])
        except NetinitError as e:
            self.log(f"apply failed: {e}; rolling back {', '.join(f'IPv{f}' for f in done)} to the snapshot")
            rollback_errors = []
            for fam in done:
                try:
                    self.applier.restore(fam, _rollback_payload(self.snapshots[fam], self.touched[fam]))
                except NetinitError as re_:
                    rollback_errors.append(str(re_))
            if rollback_errors:
                raise ApplyError(f"{e}; ROLLBACK ALSO FAILED: {'; '.join(rollback_errors)}") from e
            raise ApplyError(f"{e} (state rolled back to the snapshot)") from e


def apply_ruleset(ruleset: RuleSet, applier: Applier, *, reconcile: bool, force: bool, log: Log) -> str:
    fams_to_read = ruleset.families()
    txn = Transaction(applier, fams_to_read, log)
    states = txn.snapshot()
    payloads: dict[Family, str] = {}
    drift: list[str] = []
    all_in_place = True
    for fam in fams_to_read:
        rules = ruleset.family(fam)
        diffs = diff_family(rules, states[fam])
        for d in diffs:
            if not d.in_place:
                all_in_place = False
                if d.residue:
                    drift.append(f"IPv{fam} {d.table}")
        payloads[fam] = "".join(d.payload for d in diffs if force or not d.in_place)
    if all_in_place and not force:
        return "capture rules already in place; nothing to do"
    if drift and not (reconcile or force):
        raise DriftError(
            "netinit: rules of ours already exist but differ from the plan in "
            f"{', '.join(drift)}; re-run with --reconcile to replace them (nothing was changed)"
        )
    txn.run(payloads)
    return "capture rules applied" + (" (replaced drifted rules)" if drift else "")


def cleanup(ruleset: RuleSet, applier: Applier, log: Log) -> str:
    """Remove ours from both families (a dual-stack run may have left IPv6 rules); pass a dual-stack plan."""
    fams: tuple[Family, ...] = (4, 6)
    txn = Transaction(applier, fams, log)
    states = txn.snapshot()
    payloads = {fam: render_cleanup(ruleset.family(fam), states[fam]) for fam in fams}
    if not any(payloads.values()):
        return "nothing of ours to clean up"
    txn.run(payloads)
    return "capture rules removed"
