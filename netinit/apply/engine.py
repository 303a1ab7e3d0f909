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

from netinit.apply.iptables import Applier
from netinit.apply.steps import Step, run_steps
from netinit.core.plan import BUILTIN_CHAINS, OWN_CHAINS, TABLE_ORDER, Family, Rule, RuleSet, chains_in_order, plan
from netinit.errors import DriftError
from netinit.rules.save import TableState, desired_state, jump_target, parse_save
from netinit.typing_lite import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    Log = Callable[[str], None]


def _family_step(applier: Applier, fam: Family, payload: str, rollback: str) -> Step:
    """Write ``payload``; the undo writes ``rollback``. Closures, not ``functools.partial``: start-up would import
    functools for this alone."""
    return Step(f"IPv{fam} iptables", lambda: applier.apply(fam, payload), lambda: applier.restore(fam, rollback))


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
    """Snapshot every family; then one ``Step`` per family payload, followed by the caller's steps, all rolled
    back together if one fails (``netinit.apply.steps``)."""

    def __init__(self, applier: Applier, families: tuple[Family, ...]) -> None:
        self.applier = applier
        self.families = families
        self.snapshots: dict[Family, str] = {}

    def snapshot(self) -> dict[Family, dict[str, TableState]]:
        states = {}
        for fam in self.families:
            self.snapshots[fam] = self.applier.save(fam)
            states[fam] = parse_save(self.snapshots[fam])
        return states

    def steps(self, payloads: dict[Family, str]) -> list[Step]:
        """A step per family with something to write; its undo restores that family's snapshot."""
        out = []
        for fam in self.families:
            payload = payloads.get(fam)
            if not payload:
                continue
            rollback = _rollback_payload(self.snapshots[fam], parse_save(payload))
            out.append(_family_step(self.applier, fam, payload, rollback))
        return out

    def run(self, payloads: dict[Family, str], after: Sequence[Step] = ()) -> None:
        run_steps([*self.steps(payloads), *after])


def apply_ruleset(
    ruleset: RuleSet,
    applier: Applier,
    *,
    reconcile: bool,
    force: bool,
    log: Log,
    after: Sequence[Step] = (),
    before: Sequence[Step] = (),
) -> str:
    """Apply ``ruleset``; ``before``/``after``: steps of the same transaction (the removal of native nftables
    capture, what the rules rely on outside iptables) - rolled back with the tables if any step fails. They run
    also when the rules are already in place."""
    fams_to_read = ruleset.families()
    txn = Transaction(applier, fams_to_read)
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
        run_steps([*before, *after])
        return "capture rules already in place; nothing to do"
    if drift and not (reconcile or force):
        raise DriftError(
            "netinit: rules of ours already exist but differ from the plan in "
            f"{', '.join(drift)}; re-run with --reconcile to replace them (nothing was changed)"
        )
    run_steps([*before, *txn.steps(payloads), *after])
    return "capture rules applied" + (" (replaced drifted rules)" if drift else "")


def cleanup_steps(ruleset: RuleSet, applier: Applier) -> tuple[list[Step], dict[Family, dict[str, TableState]]]:
    """The steps that remove ours from both families (a dual-stack run may have left IPv6 rules; pass a
    dual-stack plan), and the state they were computed from."""
    txn = Transaction(applier, (4, 6))
    states = txn.snapshot()
    return txn.steps({fam: render_cleanup(ruleset.family(fam), states[fam]) for fam in txn.families}), states


def cleanup(ruleset: RuleSet, applier: Applier, log: Log) -> str:
    """Remove ours; say which rules that look like ours were left (not recognisable with the given flags)."""
    steps, states = cleanup_steps(ruleset, applier)
    left = lookalikes(states, ruleset)
    if left:
        log(
            f"left {len(left)} rule{'s' * (len(left) != 1)} in built-in chains that look like netinit's but are "
            "not what the given flags write (a CNI may write the same rules, so only exact matches are removed):\n  "
            + "\n  ".join(left)
            + "\nIf netinit wrote them, re-run --cleanup-only with the flags of the original run "
            "(or delete each with iptables -t TABLE -D CHAIN RULE)"
        )
    if not steps:
        return "nothing of ours to clean up" + (" (see the rules left above)" if left else "")
    run_steps(steps)
    return "capture rules removed" + (f" ({len(left)} look-alike rules left, see above)" if left else "")


# The flags under which the planner writes every kind of rule it puts in built-in chains without jumping to a
# chain of its own (-c/-k RETURNs, TPROXY's MARK/CONNMARK rules); ``_shape`` erases what varies between runs.
_ALL_FEATURES = (
    ["-b", "*", "-i", "*", "-c", "c0", "-k", "k0", "--drop-invalid", "--redirect-dns", "--capture-all-dns"],
    ["-m", "TPROXY", "-b", "*", "-i", "*", "-c", "c0", "-k", "k0", "--redirect-dns", "--capture-all-dns"],
)
_SHAPE_SUBS = (
    (r"(-[io]) (?!lo\b)\S+", r"\1 IFACE"),
    (r"0x[0-9a-f]+", "N"),
    (r"--(uid|gid)-owner \d+", r"--\1-owner N"),
    (r"--(dport|sport|to-ports|on-port) \d+", r"--\1 N"),
    (r"127\.\d+\.\d+\.\d+/\d+", "LOOPBACK"),
)


def _shape(spec: str) -> str:
    import re

    for pattern, repl in _SHAPE_SUBS:
        spec = re.sub(pattern, repl, spec)
    return spec


def lookalikes(states: dict[Family, dict[str, TableState]], ruleset: RuleSet) -> list[str]:
    """Rules in built-in chains that have the shape of a rule netinit writes (with other flags) but that
    ``ruleset``'s cleanup does not remove: ``IPv4 nat PREROUTING: -i eth9 -j RETURN``."""
    from netinit.core.config import HostFacts, config_from_flags

    shapes: set[str] = set()
    for argv in _ALL_FEATURES:
        full = plan(config_from_flags(argv, facts=HostFacts(has_global_ipv6=True))._replace(enable_ipv6=True))
        for fam in full.families():
            shapes |= {_shape(r.spec()) for r in full.family(fam) if r.chain in BUILTIN_CHAINS}
    out = []
    for fam, tables in states.items():
        desired = desired_state(ruleset.family(fam))
        for t in TABLE_ORDER:
            cur = tables.get(t)
            if cur is None:
                continue
            for ch in sorted(BUILTIN_CHAINS):
                want = set(desired.get(t, TableState()).chains.get(ch, []))
                removed = set(_ours_in_builtin(cur.chains.get(ch, []), want))
                out += [
                    f"IPv{fam} {t} {ch}: {s}"
                    for s in cur.chains.get(ch, [])
                    if s not in removed and _shape(s) in shapes
                ]
    return out
