"""THE validator of capture values: ports, port ranges and lists, interface names, CIDR lists, uid/gid lists,
bounded integers. Pure; no I/O.

One home for what a valid value is, used by netinit's flags (``netinit.core.config.resolve``) and by the
injector for the pod annotations that become those flags, so a value the injector accepts is one netinit
accepts. Every function takes the name of the setting (``flag``: a flag such as ``-b/--istio-inbound-ports``, an
env var, or an annotation) and the text as given, and raises ``InvalidValue`` (a ``ConfigError``, exit 2)
naming that setting, the offending value and why; on success it returns the value normalised the way the
rules print it. Lists are istio-iptables' comma lists (``split_list``).

``ipaddress`` and ``re`` are imported by the validators that need them, when they run: the default capture
(``-i '*' -x ''``, numeric ids, no interfaces) needs neither, and netinit's start-up is every pod's.
"""

from __future__ import annotations

from netinit.errors import InvalidValue

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ipaddress
    from collections.abc import Mapping

    Network = ipaddress.IPv4Network | ipaddress.IPv6Network

GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def go_bool(value: str) -> bool | None:
    """Go's strconv.ParseBool, which istio-iptables' flags and Istio's boolean annotations use; None when it fails."""
    v = value.strip()
    return True if v in GO_TRUE else False if v in GO_FALSE else None


def address_text(value: str) -> tuple[int, str, int | None]:
    """(family, address, prefix or None) of an address or CIDR as the kernel's tools print it: host bits
    cleared, IPv6 as libc's inet_ntop writes it (``::127.0.0.53``, where ipaddress says ``::7f00:35``).
    ValueError when it is neither. The one normaliser of address text for the rules (iptables-save's and nft's
    forms); _socket, not ipaddress: a plan can hold thousands of CIDRs."""
    import _socket  # the C module: socket.py costs ~3 ms of start-up

    addr, slash, plen = value.partition("/")
    fam = 6 if ":" in addr else 4
    af, bits = (_socket.AF_INET6, 128) if fam == 6 else (_socket.AF_INET, 32)
    try:
        packed = _socket.inet_pton(af, addr)
    except OSError:
        raise ValueError(f"{value!r} is not an address or CIDR") from None
    if not slash:
        return fam, _socket.inet_ntop(af, packed), None
    if not (_digits(plen) and int(plen) <= bits):
        raise ValueError(f"{value!r} is not an address or CIDR")
    prefix = int(plen)
    net = int.from_bytes(packed, "big") & (((1 << prefix) - 1) << (bits - prefix))
    return fam, _socket.inet_ntop(af, net.to_bytes(bits // 8, "big")), prefix


WILDCARD = "*"

MAX_ID = 2**32 - 2  # the largest uid/gid (2**32 - 1 is "no id")
_IFACE_PATTERN = r"[a-zA-Z][a-zA-Z0-9_.-]*"
_NAME_PATTERN = r"[a-zA-Z_][a-zA-Z0-9_.-]*"


def invalid(flag: str, value: str, why: str) -> InvalidValue:
    """The error for a bad value: ``netinit: invalid value for FLAG: 'VALUE' (WHY)``."""
    return InvalidValue(flag, value, why)


def split_list(text: str) -> list[str]:
    """istio-iptables' Split: comma list, empty items dropped (we also strip blanks)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def port(flag: str, text: str) -> int:
    """One port, 1-65535 (surrounding blanks allowed)."""
    v = text.strip()
    if not _digits(v) or not 1 <= int(v) <= 65535:
        raise invalid(flag, text, "port must be an integer 1-65535")
    return int(v)


def port_spec(flag: str, text: str) -> str:
    """One list entry: a port or an ``a-b``/``a:b`` range; returned the way iptables prints it (``a:b``, or ``a``
    when both ends are equal)."""
    first, sep, second = text.replace(":", "-", 1).partition("-")
    if not _digits(first) or (sep and not _digits(second)):
        raise invalid(flag, text, "expected a port 1-65535 or a range a-b")
    lo = port(flag, first)
    if not sep:
        return str(lo)
    hi = port(flag, second)
    if hi < lo:
        raise invalid(flag, text, "range start is after its end")
    return f"{lo}:{hi}" if hi != lo else str(lo)


def ports(flag: str, text: str) -> tuple[str, ...]:
    """A comma list of ports and ranges (``port_spec`` each); empty text is the empty list."""
    return tuple(port_spec(flag, item) for item in split_list(text))


def ports_or_all(flag: str, text: str) -> str | tuple[str, ...]:
    """``*`` (every port) or ``ports``."""
    t = text.strip()
    return WILDCARD if t == WILDCARD else ports(flag, t)


def interfaces(flag: str, text: str) -> tuple[str, ...]:
    """A comma list of interface names (Linux's limit: 15 characters)."""
    items = split_list(text)
    if not items:
        return ()
    import re

    out = []
    for item in items:
        if len(item) > 15 or not re.fullmatch(_IFACE_PATTERN, item):
            raise invalid(flag, item, f"interface names match ^{_IFACE_PATTERN}$ and are at most 15 characters")
        out.append(item)
    return tuple(out)


def cidrs(flag: str, text: str) -> tuple[Network, ...]:
    """A comma list of IPv4/IPv6 CIDRs (or plain addresses); host bits are masked off (``10.1.2.3/8`` is
    ``10.0.0.0/8``, as iptables reads it)."""
    items = split_list(text)
    if not items:
        return ()
    import ipaddress

    out: list[Network] = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise invalid(flag, item, "expected a CIDR such as 10.0.0.0/8 or fd00::/8") from None
    return tuple(out)


def cidrs_or_all(flag: str, text: str) -> str | tuple[Network, ...]:
    """``*`` (every destination) or ``cidrs``."""
    t = text.strip()
    return WILDCARD if t == WILDCARD else cidrs(flag, t)


def ids(flag: str, text: str, names: Mapping[str, int], kind: str) -> tuple[str, ...]:
    """A non-empty comma list of numeric ids or names; ``names`` resolves the names (e.g. the namespace's
    ``/etc/group``: ``netinit.apply.facts.user_group_ids``). Returned as decimal strings. ``kind`` (uid, gid,
    group) words the error."""
    out = []
    items = split_list(text)
    if not items:
        raise invalid(flag, text, f"at least one {kind} is required")
    for item in items:
        if _digits(item):
            if int(item) > MAX_ID:
                raise invalid(flag, item, f"{kind} out of range")
            out.append(str(int(item)))
        elif item in names and _is_name(item):
            out.append(str(names[item]))
        else:
            raise invalid(flag, item, f"not a numeric {kind} nor a known {kind} name")
    return tuple(out)


def _is_name(text: str) -> bool:
    import re

    return re.fullmatch(_NAME_PATTERN, text) is not None


def loopback_cidr(flag: str, text: str) -> str:
    """An IPv4 CIDR within 127.0.0.0/8 (``ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR``), host bits masked off."""
    import ipaddress

    try:
        net = ipaddress.IPv4Network(text.strip(), strict=False)
    except ValueError:
        raise invalid(flag, text, "expected an IPv4 CIDR") from None
    if not net.network_address.is_loopback or net.prefixlen < 8:
        raise invalid(flag, text, "must lie within 127.0.0.0/8")
    return str(net)


def bounded_int(flag: str, text: str, lo: int, hi: int) -> int:
    """A decimal integer ``lo``-``hi`` (surrounding blanks allowed)."""
    v = text.strip()
    if not _digits(v) or not lo <= int(v) <= hi:
        raise invalid(flag, text, f"expected an integer {lo}-{hi}")
    return int(v)


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(flag: str, text: str) -> float:
    """A positive Go duration (``5s``, ``500ms``, ``1m30s``), in seconds."""
    import re

    part = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
    v = text.strip()
    pos, total = 0, 0.0
    while pos < len(v):
        m = part.match(v, pos)
        if m is None:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not v or pos != len(v) or total <= 0:
        raise invalid(flag, text, "expected a positive duration such as 5s, 500ms or 1m30s")
    return total


LOG_LEVELS = ("debug", "info", "warn", "error", "fatal", "none")


def log_levels(flag: str, text: str) -> str:
    """Istio's ``[scope:]level`` comma list (``default:info,grpc:none``); scopes are free-form."""
    for item in split_list(text):
        level = item.rpartition(":")[2]
        if level not in LOG_LEVELS:
            raise invalid(flag, item, f"expected [scope:]level with a level of {', '.join(LOG_LEVELS)}")
    return text
