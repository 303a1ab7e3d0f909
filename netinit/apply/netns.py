"""Network-namespace edge: enter a namespace, read its addresses and resolv.conf, program TPROXY routes.

Only the standard library on the default path (start-up time is pod start-up time); pyroute2 is imported
only in TPROXY mode (``require_pyroute2``, ``TproxyRoutes``), the one feature that needs it.
"""

from __future__ import annotations

import _socket  # the C module: socket.py adds enums and selectors (~2.5 ms of start-up) that netlink never needs
import os
import struct

from netinit.apply.runner import Runner
from netinit.apply.steps import Step
from netinit.errors import ApplyError, ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"  # paths are plain strings: pathlib costs ~4 ms of start-up


def netns_path(name_or_path: str | None, pid: int | None) -> str | None:
    if pid is not None:
        return f"/proc/{pid}/ns/net"
    if not name_or_path:
        return None
    return name_or_path if "/" in name_or_path else os.path.join(NETNS_RUN_DIR, name_or_path)


def enter(path: str) -> None:
    """setns(2) into the namespace at ``path`` (Python 3.11 has no os.setns)."""
    import ctypes  # only when entering a namespace: an init container already runs in the pod's

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ConfigError(f"netinit: cannot open network namespace {str(path)!r}: {e.strerror}") from None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise ConfigError(f"netinit: cannot enter network namespace {str(path)!r}: {os.strerror(err)}")
    finally:
        os.close(fd)


def resolv_conf_for(netns_name: str | None, pid: int | None = None) -> str:
    """The target's resolv.conf: the process's own view with ``--pid``; /etc/netns/NAME/resolv.conf (what
    ``ip netns exec`` bind-mounts) with a namespace name; else /etc/resolv.conf."""
    if pid is not None:
        return f"/proc/{pid}/root/etc/resolv.conf"
    if netns_name and "/" not in netns_name:
        p = os.path.join("/etc/netns", netns_name, "resolv.conf")
        if os.path.exists(p):
            return p
    return "/etc/resolv.conf"


def nameservers(path: str) -> tuple[str, ...]:
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ()
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            out.append(parts[1].split("%")[0])
    return tuple(out)


# --- addresses via a minimal rtnetlink dump (RTM_GETADDR), no pyroute2 --------------------------------------
_RTM_GETADDR = 22
_NLM_F_REQUEST = 1
_NLM_F_DUMP = 0x300
_NLMSG_DONE = 3
_NLMSG_ERROR = 2
_IFA_ADDRESS = 1
_IFA_LOCAL = 2
_NETLINK_NETFILTER = 12
_NFT_MSG_GETTABLE = (10 << 8) | 1  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETTABLE
_NFTA_TABLE_NAME = 1
NFPROTO_INET, NFPROTO_IPV4, NFPROTO_IPV6 = 1, 2, 10  # nf_tables table families


def _dump(protocol: int, msg_type: int, header: bytes) -> Iterator[tuple[bytes, dict[int, bytes]]]:
    """One netlink dump: each answer's fixed header (as long as the request's) and its attributes by type. The
    standard library is enough, and a netlink round trip costs far less than starting ``ip`` or ``nft``. A
    refusal (an error answer: no privilege, no such subsystem) raises OSError, so it never reads as empty."""
    s = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, protocol)
    try:
        s.sendto(struct.pack("=LHHLL", 16 + len(header), msg_type, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0) + header, (0, 0))
        while True:
            data = s.recv(65536)
            off = 0
            while off + 16 <= len(data):
                length, typ, _flags, _seq, _pid = struct.unpack_from("=LHHLL", data, off)
                if typ == _NLMSG_ERROR and length >= 20:
                    (err,) = struct.unpack_from("=i", data, off + 16)
                    if err:
                        raise OSError(-err, os.strerror(-err))
                if typ in (_NLMSG_DONE, _NLMSG_ERROR) or length < 16:
                    return
                fixed = data[off + 16 : off + 16 + len(header)]
                attrs: dict[int, bytes] = {}
                attr_off = off + 16 + len(header)
                while attr_off + 4 <= off + length:
                    alen, atype = struct.unpack_from("=HH", data, attr_off)
                    if alen < 4:
                        break
                    attrs.setdefault(atype & 0x3FFF, data[attr_off + 4 : attr_off + alen])
                    attr_off += (alen + 3) & ~3
                yield fixed, attrs
                off += (length + 3) & ~3
    finally:
        s.close()


def packed_addresses() -> Iterator[bytes]:
    """Every address of the current network namespace, packed (4 or 16 bytes; IPv4 first, as the kernel dumps
    them)."""
    for family in (_socket.AF_INET, _socket.AF_INET6):
        for _fixed, attrs in _dump(_socket.NETLINK_ROUTE, _RTM_GETADDR, struct.pack("=BBBBI", family, 0, 0, 0, 0)):
            found = attrs.get(_IFA_LOCAL, attrs.get(_IFA_ADDRESS))
            if found is not None:
                yield found


def nft_table_names(family: int) -> list[str]:
    """The nf_tables tables of ``family`` (an NFPROTO_* number) in the current namespace, over netlink: what
    ``nft list tables`` prints, without starting nft. Raises OSError where the kernel refuses the dump."""
    return [
        attrs[_NFTA_TABLE_NAME].rstrip(b"\0").decode()
        for _fixed, attrs in _dump(_NETLINK_NETFILTER, _NFT_MSG_GETTABLE, struct.pack("=BBH", family, 0, 0))
        if _NFTA_TABLE_NAME in attrs
    ]


def nft_tables(family: int = NFPROTO_INET) -> list[str]:
    """:func:`nft_table_names`, empty where the kernel has no nf_tables (this runs on every apply)."""
    try:
        return nft_table_names(family)
    except OSError:
        return []


_IPV6_LOOPBACK = bytes(15) + b"\x01"


def global_families() -> tuple[bool, bool]:
    """(has a non-loopback non-link-local IPv4, same for IPv6) — istio-iptables' getLocalIP test."""
    v4 = v6 = False
    for a in packed_addresses():
        if len(a) == 4:
            v4 = v4 or not (a[0] == 127 or a[:2] == b"\xa9\xfe")  # 127.0.0.0/8, 169.254.0.0/16
        else:
            v6 = v6 or not (a == _IPV6_LOOPBACK or (a[0] == 0xFE and a[1] & 0xC0 == 0x80))  # ::1, fe80::/10
    return v4, v6


def require_pyroute2() -> None:
    """Checked before any rule is touched: TPROXY mode programs its policy route with pyroute2."""
    try:
        import pyroute2  # noqa: F401  (the import the route step will need; ~140 ms, TPROXY only)
    except ImportError as e:
        raise ConfigError(
            f"netinit: TPROXY mode needs pyroute2 to program its policy route, and it cannot be imported here ({e}); "
            "install it (pip install pyroute2) - nothing was changed"
        ) from None


class TproxyRoutes:
    """``ip rule add fwmark MARK lookup TABLE`` + ``ip route add local default dev lo table TABLE`` (IPv4, and
    IPv6 with ``ipv6``) as an undoable step: it records what it added, and its undo deletes exactly that."""

    def __init__(self, mark: int, table: int, ipv6: bool) -> None:
        self.mark, self.table, self.ipv6 = mark, table, ipv6
        self.added: list[tuple[str, dict[str, object]]] = []

    def step(self) -> Step:
        return Step("TPROXY policy route", self.do, self.undo)

    def _families(self) -> list[tuple[int, str]]:
        return [(_socket.AF_INET, "0.0.0.0/0")] + ([(_socket.AF_INET6, "::/0")] if self.ipv6 else [])

    def do(self) -> None:
        from pyroute2 import IPRoute

        try:
            with IPRoute() as ipr:
                lo = ipr.link_lookup(ifname="lo")[0]
                for fam, dst in self._families():
                    rules = ipr.get_rules(family=fam)
                    if not any(
                        r.get_attr("FRA_FWMARK") == self.mark and r.get_attr("FRA_TABLE") == self.table for r in rules
                    ):
                        rule: dict[str, object] = {"family": fam, "fwmark": self.mark, "table": self.table}
                        ipr.rule("add", **rule)
                        self.added.append(("rule", rule))
                    had_default = any(r.get("dst_len") == 0 for r in ipr.get_routes(family=fam, table=self.table))
                    route: dict[str, object] = {"family": fam, "dst": dst, "type": "local", "scope": "host", "oif": lo}
                    route["table"] = self.table
                    ipr.route("replace", **route)
                    if not had_default:
                        self.added.append(("route", route))
        except Exception as e:  # pyroute2's NetlinkError is a plain Exception
            raise ApplyError(f"netinit: setting up the TPROXY policy route (table {self.table}) failed: {e}") from e

    def undo(self) -> None:
        from pyroute2 import IPRoute

        try:
            with IPRoute() as ipr:
                while self.added:
                    kind, args = self.added.pop()
                    (ipr.rule if kind == "rule" else ipr.route)("del", **args)
        except Exception as e:
            raise ApplyError(f"netinit: removing the TPROXY policy route again failed: {e}") from e


def has_address(addr: str) -> bool:
    """Does the namespace hold ``addr`` (an IPv4 or IPv6 address in text)?"""
    family = _socket.AF_INET6 if ":" in addr else _socket.AF_INET
    return _socket.inet_pton(family, addr) in set(packed_addresses())


def loopback6_step(runner: Runner, ip: str) -> Step:
    """``::6/128`` on lo (the IPv6 passthrough source, as istio-iptables adds it) as an undoable step: the undo
    removes it only if this run added it."""
    added: list[bool] = []

    def do() -> None:
        if has_address("::6"):
            return
        res = runner.run([ip, "-6", "addr", "add", "::6/128", "dev", "lo"])
        if res.returncode != 0:
            raise ApplyError(f"netinit: adding ::6/128 to lo failed: {res.stderr.strip() or res.returncode}")
        added.append(True)

    def undo() -> None:
        if added:
            res = runner.run([ip, "-6", "addr", "del", "::6/128", "dev", "lo"])
            if res.returncode != 0:
                raise ApplyError(f"netinit: removing ::6/128 from lo again failed: {res.stderr.strip()}")
            added.clear()

    return Step("::6 on lo", do, undo)


def ipv6_disabled_on_lo() -> bool:
    try:
        with open("/proc/sys/net/ipv6/conf/lo/disable_ipv6") as f:
            return f.read().strip() == "1"
    except OSError:
        return False
