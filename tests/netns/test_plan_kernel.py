"""Every planner case is accepted by the real iptables-restore (legacy and nft, IPv4 and IPv6) and reads
back from iptables-save exactly as planned - so the canonical text we compare against is the kernel's."""

from __future__ import annotations

import pytest

from lab import netlab
from netinit.apply.engine import render_restore
from netinit.core.config import config_from_flags
from netinit.core.plan import plan
from netinit.rules.save import desired_state, parse_save
from tests.support.cases import CASES

pytestmark = pytest.mark.requires_root


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_round_trips_through_the_kernel(name: str, flavor: str, netns: str) -> None:
    flags, env, facts = CASES[name]
    rs = plan(config_from_flags(flags, env, facts))
    for fam in rs.families():
        rules = rs.family(fam)
        prefix = "ip6" if fam == 6 else "ip"
        netlab.sh(f"{prefix}tables-{flavor}-restore", "--noflush", ns=netns, input=render_restore(rules))
        live = parse_save(netlab.iptables_save(netns, flavor, fam))
        for table, st in desired_state(rules).items():
            for chain, specs in st.chains.items():
                assert live[table].chains.get(chain, []) == specs, f"IPv{fam} {table}/{chain}"
