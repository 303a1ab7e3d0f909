"""What the debugging commands read from the system: the live rules of the namespace they are in (both iptables
flavours, or netinit's native nftables tables read back as the iptables rules they were rendered from), the
kernel's routes and policy rules (``ip -j``), and files. Every command runs through the ``Runner`` seam.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from netinit.apply.iptables import Backend
from netinit.apply.runner import Runner, find_executable
from netinit.core.config import CaptureConfig
from netinit.core.plan import FAMILIES, Family
from netinit.debug.model import Addr
from netinit.debug.verify import Drift
from netinit.errors import BackendError, ConfigError


class RuleSource(NamedTuple):
    """The rules to look at: iptables-save text per family, and where it came from."""

    texts: Mapping[Family, str]
    source: str  # live | file | plan
    origin: str  # in words, for the output
    flavor: str | None = None
    notes: tuple[str, ...] = ()
    config: CaptureConfig | None = None  # the plan's config (source "plan")


def read_file(path: str) -> str:
    """A file's text (``-``: stdin); unreadable is a ConfigError naming it."""
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"netinit: cannot read {path}: {e.strerror}") from None


# --- the live rules -----------------------------------------------------------------------------------------


def read_live(runner: Runner, forced: str | None = None) -> RuleSource:
    """Both families of the flavour that holds the rules (the one holding netinit's, else any, else nft).

    Both flavours are read because the kernel evaluates both: rules in the other one are reported, not hidden.
    Without netinit's chains in either flavour (and no ``forced`` flavour), netinit's native nftables tables are
    read instead when present, as the iptables rules they were rendered from.
    """
    got: dict[str, dict[Family, str]] = {}
    problems: list[str] = []
    for flavor in [forced] if forced else ["legacy", "nft"]:
        b = Backend(flavor)
        cmds = [b.save_cmd(f)[0] for f in FAMILIES]
        missing = [c for c in cmds if find_executable(c) is None]
        if missing:
            problems.append(f"{', '.join(missing)} not found")
            continue
        texts: dict[Family, str] = {}
        for fam in FAMILIES:
            res = runner.run(b.save_cmd(fam))
            if res.returncode != 0:
                problems.append(f"{' '.join(b.save_cmd(fam))} failed: {res.stderr.strip()}")
                break
            texts[fam] = res.stdout
        else:
            got[flavor] = texts

    def holds(flavor: str, what: str) -> bool:
        return any(line.startswith(what) for t in got[flavor].values() for line in t.splitlines())

    ours = [f for f in got if holds(f, ":ISTIO_")]
    anything = [f for f in got if holds(f, "-A ")]
    native = None if ours or forced else _native_tables(runner)
    if native:
        return _read_native(native, anything)
    if not got:
        raise BackendError(f"netinit: cannot read the rules: {'; '.join(problems)}")
    flavor = (ours or anything or (["nft"] if "nft" in got else list(got)))[0]
    notes = [
        f"iptables-{other} also holds rules: the kernel evaluates both flavours, these results read only "
        f"iptables-{flavor}"
        for other in got
        if other != flavor and other in anything
    ]
    if native is None and _native_nft_tables(runner):
        notes.append(
            "this namespace also has netinit's native nftables tables (inet istio-proxy-*), which these results do "
            "not read (they read netinit's iptables rules); check them with: netinit verify --native-nftables FLAGS"
        )
    return RuleSource(got[flavor], "live", f"live rules (iptables-{flavor})", flavor, tuple(notes))


def _native_nft_tables(runner: Runner) -> bool:
    """Whether netinit's native nftables tables are here (False when nft is not installed)."""
    from netinit.apply.nftables import nft_binary

    try:
        res = runner.run([nft_binary(), "list", "tables", "inet"])
    except BackendError:
        return False
    return res.returncode == 0 and "istio-proxy-" in res.stdout


def _native_tables(runner: Runner) -> dict[str, str]:
    """netinit's native nftables tables as ``nft`` lists them; none when nft is not installed or fails."""
    from netinit.apply.nftables import NftApplier, nft_binary

    try:
        return NftApplier(runner, nft_binary()).live()
    except BackendError:
        return {}


def _read_native(tables: Mapping[str, str], iptables_flavors: Sequence[str]) -> RuleSource:
    """Our native tables read back into the iptables rules they were rendered from (``nft_read``), so that
    explain/show/verify read them as they read iptables; a table that is not netinit's rendering is an error."""
    from netinit.rules.nft_read import save_texts

    texts = save_texts(tables)
    notes = [
        "read from netinit's native nftables tables (inet istio-proxy-*) with nft, as the iptables rules they were "
        "rendered from; netinit verify --native-nftables FLAGS compares the tables themselves with a plan"
    ]
    notes += [
        f"iptables-{f} also holds rules: the kernel evaluates them too, these results read only the native tables"
        for f in iptables_flavors
    ]
    return RuleSource(texts, "live", "live rules (native nftables)", "native-nftables", tuple(notes))


# --- routing ------------------------------------------------------------------------------------------------


def route(runner: Runner, dst: Addr, src: Addr | None = None, mark: int = 0) -> dict[str, Any] | str:
    """The kernel's route for ``dst`` (``ip -j route get``): a dict, or the error text."""
    argv = ["ip", "-j", "route", "get", str(dst)]
    if src is not None:
        argv += ["from", str(src)]
    if mark:
        argv += ["mark", str(mark)]
    res = runner.run(argv)
    if res.returncode != 0:
        return res.stderr.strip() or f"exit {res.returncode}"
    try:
        routes = json.loads(res.stdout)
        return dict(routes[0])
    except (ValueError, IndexError, TypeError):
        return f"unreadable `ip route get` output: {res.stdout[:80]!r}"


def single_link(runner: Runner) -> str | None:
    """The namespace's one non-lo interface that is up, if it has exactly one."""
    res = runner.run(["ip", "-j", "link", "show", "up"])
    try:
        links = [link["ifname"] for link in json.loads(res.stdout) if link.get("ifname") != "lo"]
    except (ValueError, TypeError, KeyError):
        return None
    return links[0].split("@")[0] if len(links) == 1 else None


def tproxy_table(runner: Runner, mark: int) -> int | None:
    """The routing table the ``ip rule`` for fwmark ``mark`` looks up (TPROXY's -r), if there is one."""
    res = runner.run(["ip", "-j", "rule", "show"])
    try:
        for r in json.loads(res.stdout):
            if int(str(r.get("fwmark", "-1")), 0) == mark and str(r.get("table", "")).isdigit():
                return int(r["table"])
    except (ValueError, TypeError):
        return None
    return None


def routing_drift(cfg: CaptureConfig, runner: Runner) -> list[Drift]:
    """What apply sets up outside iptables: the TPROXY policy route, and ::6 on lo for IPv6."""
    out: list[Drift] = []
    fams: tuple[Family, ...] = (4, 6) if cfg.enable_ipv6 else (4,)
    if cfg.mode == "TPROXY" and cfg.inbound_ports:
        for fam in fams:
            flag = ["-6"] if fam == 6 else []
            rules = runner.run(["ip", *flag, "-j", "rule", "show"])
            want = f"fwmark {cfg.tproxy_mark:#x} lookup {cfg.tproxy_route_table}"
            try:
                found = any(
                    int(str(r.get("fwmark", "-1")), 0) == cfg.tproxy_mark
                    and str(r.get("table")) == str(cfg.tproxy_route_table)
                    for r in json.loads(rules.stdout or "[]")
                )
            except ValueError:
                found = False
            if not found:
                out.append(Drift(fam, "routing", "ip rule", "missing", planned=want, planned_pos=1))
            routes = runner.run(["ip", *flag, "-j", "route", "show", "table", str(cfg.tproxy_route_table)])
            try:
                local = any(
                    r.get("type") == "local" and r.get("dst") == "default" for r in json.loads(routes.stdout or "[]")
                )
            except ValueError:
                local = False
            if not local:
                want = f"local default dev lo table {cfg.tproxy_route_table}"
                out.append(Drift(fam, "routing", "ip route", "missing", planned=want, planned_pos=1))
    if cfg.enable_ipv6:
        res = runner.run(["ip", "-6", "-j", "addr", "show", "dev", "lo"])
        if '"::6"' not in res.stdout:
            out.append(Drift(6, "routing", "lo", "missing", planned="address ::6/128", planned_pos=1))
    return out
