"""``netinit verify``: compare the live rules with the plan rule by rule; any difference is drift.

Pure: a ``RuleSet`` and iptables-save text per family in, a ``Report`` out. "Ours" means what apply and cleanup
mean (netinit.apply.engine): our chains entirely, and in built-in chains the rules that jump to our chains or read
exactly as a planned rule. Foreign rules are not drift - apply leaves them alone too - but a foreign rule placed
*before* ours in a built-in chain is a warning, because traffic it takes never reaches capture.

Each difference is located and named (missing / extra / reordered / changed, with positions as
``iptables -L --line-numbers`` counts them), so a periodic check can say what changed, not just that something did.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

from netinit.core.plan import BUILTIN_CHAINS, OWN_CHAINS, TABLE_ORDER, Family, RuleSet
from netinit.rules.save import TableState, desired_state, jump_target, parse_save

Kind = Literal["missing", "extra", "reordered", "changed", "missing-chain", "extra-chain"]


class Drift(NamedTuple):
    family: Family
    table: str
    chain: str
    kind: Kind
    planned: str | None = None  # the planned rule, as iptables-save prints it (-A CHAIN ...)
    live: str | None = None  # the live rule
    planned_pos: int | None = None  # position in the chain (built-in chains: among netinit's rules)
    live_pos: int | None = None  # position in the live chain, as `iptables -L --line-numbers` counts

    def describe(self) -> str:
        where = f"IPv{self.family} {self.table} {self.chain}"
        if self.kind == "missing":
            return f"{where}: missing rule (planned #{self.planned_pos}): {self.planned}"
        if self.kind == "extra":
            return f"{where}: extra rule #{self.live_pos}: {self.live}"
        if self.kind == "reordered":
            return f"{where}: reordered: rule #{self.live_pos} is planned as #{self.planned_pos}: {self.live}"
        if self.kind == "changed":
            return (
                f"{where}: rule #{self.live_pos} changed ({token_change(self.planned or '', self.live or '')}): "
                f"planned {self.planned}, live {self.live}"
            )
        if self.kind == "missing-chain":
            return f"{where}: missing chain ({self.planned})"
        return f"{where}: chain of ours that the plan does not have ({self.live})"

    def to_json(self) -> dict[str, Any]:
        d = self._asdict()
        d["description"] = self.describe()
        return d


class Report(NamedTuple):
    drift: tuple[Drift, ...]
    warnings: tuple[str, ...]
    checked: tuple[str, ...]  # "IPv4 nat", ... : what was compared

    @property
    def ok(self) -> bool:
        return not self.drift

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "drift": [d.to_json() for d in self.drift],
            "warnings": list(self.warnings),
            "checked": list(self.checked),
        }


def token_change(planned: str, live: str) -> str:
    """The differing words of two rules, e.g. ``8081 -> 8082``."""
    a, b = planned.split(), live.split()
    parts = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op != "equal":
            parts.append(f"{' '.join(a[i1:i2]) or '(nothing)'} -> {' '.join(b[j1:j2]) or '(nothing)'}")
    return "; ".join(parts)


class _Edit(NamedTuple):
    kind: Kind
    planned: str | None
    live: str | None
    planned_pos: int | None
    live_pos: int | None


def diff_rules(want: Sequence[str], have: Sequence[str], have_pos: Sequence[int] | None = None) -> list[_Edit]:
    """Planned vs live rule lists of one chain -> edits. A rule missing in one place and extra in another is
    "reordered"; a planned rule replaced in place by a different one is "changed"."""
    pos = list(have_pos) if have_pos is not None else list(range(1, len(have) + 1))
    missing: list[tuple[int, int]] = []  # (want index, region)
    extra: list[tuple[int, int]] = []  # (have index, region)
    replace_regions: set[int] = set()
    opcodes = difflib.SequenceMatcher(None, list(want), list(have), autojunk=False).get_opcodes()
    for region, (op, i1, i2, j1, j2) in enumerate(opcodes):
        if op == "equal":
            continue
        missing += [(i, region) for i in range(i1, i2)]
        extra += [(j, region) for j in range(j1, j2)]
        if op == "replace":
            replace_regions.add(region)
    edits: list[_Edit] = []
    for mi, (i, _r) in enumerate(list(missing)):
        k = next((k for k, (j, _rj) in enumerate(extra) if have[j] == want[i]), None)
        if k is not None:
            j, _ = extra.pop(k)
            edits.append(_Edit("reordered", want[i], have[j], i + 1, pos[j]))
            missing[mi] = (-1, -1)
    missing = [m for m in missing if m[0] >= 0]
    for region in sorted(replace_regions):
        ms = [m for m in missing if m[1] == region]
        xs = [x for x in extra if x[1] == region]
        for (i, _), (j, _) in zip(ms, xs, strict=False):
            edits.append(_Edit("changed", want[i], have[j], i + 1, pos[j]))
            missing.remove((i, region))
            extra.remove((j, region))
    edits += [_Edit("missing", want[i], None, i + 1, None) for i, _ in missing]
    edits += [_Edit("extra", None, have[j], None, pos[j]) for j, _ in extra]
    return sorted(edits, key=lambda e: (e.planned_pos or e.live_pos or 0, e.kind))


def _has_ours(st: TableState) -> bool:
    return bool(st.own_chains()) or any(
        jump_target(s) in OWN_CHAINS for ch in BUILTIN_CHAINS for s in st.chains.get(ch, [])
    )


def compare(ruleset: RuleSet, texts: Mapping[Family, str]) -> Report:
    """The plan against the live iptables-save text of each family it programs."""
    drift: list[Drift] = []
    warnings: list[str] = []
    checked: list[str] = []
    for fam in (4, 6):
        live = parse_save(texts.get(fam, ""))
        if fam not in ruleset.families():
            if any(_has_ours(st) for st in live.values()):
                warnings.append(
                    f"IPv{fam} holds rules of netinit's that this plan does not program "
                    "(apply leaves them alone; --cleanup-only removes them)"
                )
            continue
        desired = desired_state(ruleset.family(fam))
        for table in TABLE_ORDER:
            des = desired.get(table, TableState())
            cur = live.get(table, TableState())
            if table not in desired and not _has_ours(cur):
                continue
            checked.append(f"IPv{fam} {table}")
            drift += _compare_table(fam, table, des, cur, warnings)
    return Report(tuple(drift), tuple(warnings), tuple(checked))


def _compare_table(fam: Family, table: str, des: TableState, cur: TableState, warnings: list[str]) -> list[Drift]:
    out: list[Drift] = []
    for chain, want in des.chains.items():
        if chain in BUILTIN_CHAINS:
            continue
        if chain not in cur.chains:
            out.append(Drift(fam, table, chain, "missing-chain", planned=f":{chain} with {len(want)} rule(s)"))
            continue
        have = cur.chains[chain]
        out += [_drift(fam, table, chain, e) for e in diff_rules(want, have)]
    for chain, have in cur.own_chains().items():
        if chain not in des.chains:
            out.append(Drift(fam, table, chain, "extra-chain", live=f":{chain} with {len(have)} rule(s)"))
    for chain in sorted(BUILTIN_CHAINS):
        want = des.chains.get(chain, [])
        full = cur.chains.get(chain, [])
        wanted = set(want)
        ours = [(n, s) for n, s in enumerate(full, 1) if s in wanted or jump_target(s) in OWN_CHAINS]
        if not want and not ours:
            continue
        out += [_drift(fam, table, chain, e) for e in diff_rules(want, [s for _, s in ours], [n for n, _ in ours])]
        if ours:
            first = ours[0][0]
            for n, s in enumerate(full[: first - 1], 1):
                warnings.append(
                    f"IPv{fam} {table} {chain}: foreign rule #{n} comes before netinit's rules "
                    f"(traffic it takes never reaches capture): -A {chain} {s}"
                )
    return out


def _drift(fam: Family, table: str, chain: str, e: _Edit) -> Drift:
    def line(spec: str | None) -> str | None:
        return None if spec is None else f"-A {chain} {spec}"

    return Drift(fam, table, chain, e.kind, line(e.planned), line(e.live), e.planned_pos, e.live_pos)
