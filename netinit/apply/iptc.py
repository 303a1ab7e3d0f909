"""The python-iptables applier: the same restore payload, executed in-process through libiptc.

Legacy backend only (libiptc writes x_tables; on nf_tables hosts its rules land where iptables-nft does not
look). Each table is prepared with ``autocommit = False`` and committed as one atomic replace, so a table is
never half-written; the ``Transaction`` snapshot covers the cross-table and cross-family cases.
Reading the state (and the snapshot) still uses ``iptables-legacy-save``: its text is what the plan is
compared with.
"""

from __future__ import annotations

from typing import Any

from netinit.apply.iptables import Backend, RestoreApplier
from netinit.apply.runner import Runner
from netinit.core.plan import Family, Rule
from netinit.errors import ApplyError, ConfigError
from netinit.rules.save import parse_rule, parse_save


def parse_spec(table: str, chain: str, spec: str, insert_at: int | None = None) -> Rule:
    """Inverse of ``Rule.spec()`` (``netinit.rules.save.parse_rule``), strict here: libiptc gets only what it can
    express."""
    rule, goto, problem = parse_rule(table, chain, spec)
    if rule is None or goto:
        raise ApplyError(f"netinit: cannot interpret rule {spec!r}: {problem or 'goto (-g) is not supported'}")
    return rule._replace(insert_at=insert_at)


def to_iptc(rule: Rule, iptc: Any, fam: Family) -> Any:
    r = iptc.Rule6() if fam == 6 else iptc.Rule()
    if rule.src:
        r.src = rule.src
    if rule.dst:
        r.dst = rule.dst
    if rule.in_iface:
        r.in_interface = rule.in_iface
    if rule.out_iface:
        r.out_interface = rule.out_iface
    if rule.proto:
        r.protocol = rule.proto
    for m in rule.matches:
        mm = r.create_match(m.module)
        for name, value in m.opts:
            mm.set_parameter(name, value)
    tg = r.create_target(rule.target)
    for name, tvalue in rule.target_opts:
        if tvalue is None:
            tg.set_parameter(name)
        else:
            tg.set_parameter(name, tvalue)
    return r


def load_iptc() -> Any:
    """python-iptables, imported (~200 ms) when ``--applier iptc`` is chosen; one that cannot be imported (not
    installed, or libiptc/libxtables missing, which it finds at import time) is bad input: exit 2."""
    try:
        import iptc
    except (ImportError, OSError) as e:
        raise ConfigError(
            f"netinit: --applier iptc needs python-iptables, which cannot be imported here ({e}); install it "
            "(pip install python-iptables, with libiptc) or use the default --applier restore - nothing was changed"
        ) from None
    return iptc


class IptcApplier(RestoreApplier):
    name = "iptc"

    def __init__(self, runner: Runner) -> None:
        super().__init__(Backend("legacy"), runner)
        self.iptc = load_iptc()  # before anything is touched

    def apply(self, fam: Family, payload: str) -> None:
        iptc = self.iptc
        current = parse_save(self.save(fam))
        tables: list[Any] = []
        try:
            table = None
            live: dict[str, list[str]] = {}
            for line in payload.splitlines():
                if line.startswith("*"):
                    name = line[1:]
                    table = (iptc.Table6 if fam == 6 else iptc.Table)(name)
                    table.autocommit = False
                    table.refresh()
                    tables.append(table)
                    live = {c: list(r) for c, r in current[name].chains.items()} if name in current else {}
                    continue
                if line == "COMMIT" or table is None:
                    continue
                op, rest = line.split(" ", 1)
                if op.startswith(":"):
                    chain = op[1:]
                    if table.is_chain(chain):
                        iptc.Chain(table, chain).flush()
                    else:
                        table.create_chain(chain)
                    live[chain] = []
                elif op == "-F":
                    iptc.Chain(table, rest).flush()
                    live[rest] = []
                elif op == "-X":
                    table.delete_chain(rest)
                    live.pop(rest, None)
                elif op == "-D":
                    chain, spec = rest.split(" ", 1)
                    idx = live.get(chain, []).index(spec)
                    ch = iptc.Chain(table, chain)
                    ch.delete_rule(ch.rules[idx])
                    del live[chain][idx]
                elif op in ("-A", "-I"):
                    chain, spec = rest.split(" ", 1)
                    pos = None
                    if op == "-I":
                        n, spec = spec.split(" ", 1)
                        pos = int(n)
                    rule = parse_spec(name, chain, spec, pos)
                    ch = iptc.Chain(table, chain)
                    if pos is None:
                        ch.append_rule(to_iptc(rule, iptc, fam))
                        live.setdefault(chain, []).append(spec)
                    else:
                        ch.insert_rule(to_iptc(rule, iptc, fam), position=pos - 1)
                        live.setdefault(chain, []).insert(pos - 1, spec)
            for t in tables:
                t.commit()
        except (iptc.IPTCError, ValueError, KeyError) as e:
            raise ApplyError(f"netinit: python-iptables apply failed on IPv{fam}: {e}") from e
        finally:
            for t in tables:
                t.autocommit = True
