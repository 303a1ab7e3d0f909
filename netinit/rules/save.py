"""The ``iptables-save`` format: the one reader of its text and of its rule specs, and the one writer of it. Pure.

- ``TableState`` is one table as iptables-save lists it: chain -> rule specs; ``desired_state`` is the plan as
  that state (our chains, and our rules in the built-in chains).
- ``parse_save`` reads a dump into table -> chain -> rule specs (what apply, cleanup, rollback and verify compare);
  ``chain_policies`` reads the built-in chains' policies it leaves out (what explain needs).
- ``parse_rule`` reads one spec back into the structured ``Rule`` the planner builds - the inverse of
  ``Rule.spec()`` for any rule iptables-save prints; the python-iptables applier, explain and show use it.
- ``render_save`` writes chains and specs as iptables-save lists them; ``planned_save`` is the plan as it reads
  back after a first apply into empty tables (the rules explain/show/verify read when they come from flags).
"""

from __future__ import annotations

from netinit.core.plan import BUILTIN_CHAINS, OWN_CHAINS, TABLE_ORDER, Match, Rule

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence


class TableState:
    """Chains of one table -> their rule specs, in order (as iptables-save would list them)."""

    def __init__(self, chains: dict[str, list[str]] | None = None) -> None:
        self.chains: dict[str, list[str]] = {} if chains is None else chains

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TableState) and self.chains == other.chains

    def __repr__(self) -> str:
        return f"TableState({self.chains!r})"

    def own_chains(self) -> dict[str, list[str]]:
        return {c: r for c, r in self.chains.items() if c in OWN_CHAINS}


def desired_state(rules: Iterable[Rule]) -> dict[str, TableState]:
    """Simulate the plan on empty tables: our chains' content and our rules in built-in chains."""
    out: dict[str, TableState] = {}
    for r in rules:
        st = out.setdefault(r.table, TableState())
        lst = st.chains.setdefault(r.chain, [])
        if r.target in OWN_CHAINS:
            out[r.table].chains.setdefault(r.target, [])
        if r.insert_at is None:
            lst.append(r.spec())
        else:
            lst.insert(r.insert_at - 1, r.spec())
    return out


def parse_save(text: str) -> dict[str, TableState]:
    """iptables-save output -> table -> chain -> rule specs (``-A CHAIN`` stripped), in order."""
    tables: dict[str, TableState] = {}
    cur: TableState | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            cur = tables.setdefault(line[1:].strip(), TableState())
        elif cur is None:
            continue
        elif line.startswith(":"):
            cur.chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            _, chain, *rest = line.split(" ", 2)
            cur.chains.setdefault(chain, []).append(rest[0] if rest else "")
    return tables


def chain_policies(text: str) -> dict[tuple[str, str], str]:
    """iptables-save output -> (table, built-in chain) -> its policy (``ACCEPT``, ``DROP``); ``parse_save`` drops
    these. Our own chains (``:CHAIN - [0:0]``) have none."""
    policies: dict[tuple[str, str], str] = {}
    table = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":") and table:
            parts = line[1:].split()
            if len(parts) >= 2 and parts[1] != "-":
                policies[(table, parts[0])] = parts[1]
    return policies


def jump_target(spec: str) -> str | None:
    """The chain a rule spec jumps (``-j``) or goes (``-g``) to."""
    toks = spec.split()
    for i, t in enumerate(toks[:-1]):
        if t in ("-j", "-g"):
            return toks[i + 1]
    return None


_TOP = {"-s": "src", "-d": "dst", "-i": "in_iface", "-o": "out_iface", "-p": "proto"}
_LONG = {
    "--source": "-s",
    "--src": "-s",
    "--destination": "-d",
    "--dst": "-d",
    "--in-interface": "-i",
    "--out-interface": "-o",
    "--protocol": "-p",
    "--match": "-m",
    "--jump": "-j",
    "--goto": "-g",
}
_ONE_TOKEN_OPTS = {"comment"}


def parse_rule(table: str, chain: str, spec: str) -> tuple[Rule | None, bool, str | None]:
    """Inverse of ``Rule.spec()`` for any rule iptables-save prints: (rule, is goto, problem).

    A rule that cannot be read gets ``None`` and the reason; callers report it (explain) or refuse it (iptc)
    instead of guessing.
    """
    import shlex  # lazy: the apply path reads dumps with parse_save only

    try:
        toks = shlex.split(spec)
    except ValueError as e:
        return None, False, f"cannot parse rule: {e}"
    fields: dict[str, str] = {}
    matches: list[Match] = []
    target = ""
    topts: list[tuple[str, str | None]] = []
    goto = False
    neg = False
    i = 0
    while i < len(toks):
        t = _LONG.get(toks[i], toks[i])
        if t == "!":
            neg = True
            i += 1
        elif t in _TOP:
            if i + 1 >= len(toks):
                return None, False, f"{t} without a value"
            fields[_TOP[t]] = ("!" if neg else "") + toks[i + 1]
            neg = False
            i += 2
        elif t == "-m":
            if i + 1 >= len(toks):
                return None, False, "-m without a module"
            module, i = toks[i + 1], i + 2
            opts: list[tuple[str, str]] = []
            while i < len(toks):
                mneg = toks[i] == "!" and i + 1 < len(toks) and toks[i + 1].startswith("--")
                name = toks[i + 1] if mneg else toks[i]
                if not name.startswith("--") or name in _LONG:
                    break
                i += 2 if mneg else 1
                vals: list[str] = []
                if name[2:] in _ONE_TOKEN_OPTS:
                    vals, i = toks[i : i + 1], i + 1
                else:
                    while i < len(toks) and not toks[i].startswith("-") and toks[i] != "!":
                        vals.append(toks[i])
                        i += 1
                opts.append((name[2:], ("!" if mneg else "") + " ".join(vals)))
            matches.append(Match(module, tuple(opts)))
        elif t in ("-j", "-g"):
            if i + 1 >= len(toks):
                return None, False, f"{t} without a target"
            goto, target, i = t == "-g", toks[i + 1], i + 2
            while i < len(toks):
                if not toks[i].startswith("--"):
                    return None, False, f"unexpected token {toks[i]!r} after the target"
                name, i = toks[i][2:], i + 1
                tv: list[str] = []
                while i < len(toks) and not toks[i].startswith("--"):
                    tv.append(toks[i])
                    i += 1
                topts.append((name, " ".join(tv) if tv else None))
        else:
            return None, False, f"unsupported option {toks[i]!r}"
    if neg:
        return None, False, "dangling '!'"
    rule = Rule(
        table,
        chain,
        target,
        tuple(topts),
        src=fields.get("src"),
        dst=fields.get("dst"),
        in_iface=fields.get("in_iface"),
        out_iface=fields.get("out_iface"),
        proto=fields.get("proto"),
        matches=tuple(matches),
    )
    return rule, goto, None


def render_save(tables: Mapping[str, Mapping[str, Sequence[str]]]) -> str:
    """table -> chain -> rule specs, as iptables-save lists them (tables in ``TABLE_ORDER``; built-in chains with
    policy ACCEPT, ours ``-``; counters zero). Tables not given are left out."""
    out: list[str] = []
    for table in TABLE_ORDER:
        if table not in tables:
            continue
        chains = tables[table]
        out.append(f"*{table}")
        out += [f":{c} {'ACCEPT' if c in BUILTIN_CHAINS else '-'} [0:0]" for c in chains]
        out += [f"-A {c} {spec}" for c, specs in chains.items() for spec in specs]
        out.append("COMMIT")
    return "\n".join(out) + ("\n" if out else "")


def planned_save(rules: Sequence[Rule]) -> str:
    """The plan as iptables-save would list it after a first apply into empty tables (inserts in place).

    ``netinit.apply.engine.render_restore`` is the restore payload (``-I CHAIN N`` for inserts); this is its
    read-back, the text that explain/show/verify read when the rules come from flags instead of a namespace.
    """
    return render_save({table: st.chains for table, st in desired_state(rules).items()})
