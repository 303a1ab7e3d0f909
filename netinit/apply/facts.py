"""``HostFacts`` gathered from the target namespace: the one place apply and the debugging commands learn what
the planner needs to know about it (its global address families, the resolv.conf nameservers, and the user and
group names the flags mention).

Run after entering the namespace (``netinit.apply.netns.enter``): addresses are read in the current one.
"""

from __future__ import annotations

import grp
import pwd

from netinit.apply import netns
from netinit.core.config import HostFacts, envoy_user
from netinit.core.flags import RawOptions
from netinit.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


def user_group_ids(values: Mapping[str, str]) -> tuple[dict[str, int], dict[str, int]]:
    """The uids and gids of the user/group *names* given in the flags (``-u``, ``-g``, the owner-group env vars;
    without ``-u``, ``ENVOY_USER``'s); numeric ids and unknown names are left to the validator. Only those names
    are looked up: no full passwd scan at start-up."""
    users: dict[str, int] = {}
    groups: dict[str, int] = {}
    names = values.get("proxy_uid", "").split(",") if values.get("proxy_uid") else [envoy_user(values)]
    for n in names:
        n = n.strip()
        if n and not (n.isascii() and n.isdigit()):
            try:
                users[n] = pwd.getpwnam(n).pw_uid
            except KeyError:
                pass
    for key in ("proxy_gid", "ISTIO_OUTBOUND_OWNER_GROUPS", "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"):
        for n in values.get(key, "").split(","):
            n = n.strip()
            if n and n != "*" and not (n.isascii() and n.isdigit()):
                try:
                    groups[n] = grp.getgrnam(n).gr_gid
                except KeyError:
                    pass
    return users, groups


def _ignore(_msg: str) -> None:
    pass


def host_facts(
    raw: RawOptions,
    netns_name: str | None,
    pid: int | None,
    *,
    strict: bool,
    log: Callable[[str], None] = _ignore,
) -> HostFacts:
    """The facts to plan ``raw`` with, in the current namespace (``netns_name``/``pid`` locate its resolv.conf).

    ``strict``: an unreadable address list is a ``ConfigError`` (apply must not guess); otherwise (``--dry-run``,
    the debugging commands, which need no privileges) a plain IPv4 pod is assumed. A namespace with no global
    address is planned as IPv4 only.
    """
    try:
        has4, has6 = netns.global_families()
    except OSError as e:
        if strict:
            raise ConfigError(f"netinit: cannot list the namespace's addresses: {e}") from None
        has4, has6 = True, False
    if not has4 and not has6:
        log("no non-loopback address in this namespace; planning IPv4 only")
        has4 = True
    users, groups = user_group_ids(raw.values)
    dns: tuple[str, ...] = ()
    if raw.flags["redirect_dns"] and not raw.flags["capture_all_dns"]:
        dns = netns.nameservers(netns.resolv_conf_for(netns_name, pid))
    return HostFacts(has_global_ipv4=has4, has_global_ipv6=has6, dns_servers=dns, group_ids=groups, user_ids=users)
