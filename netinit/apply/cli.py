"""The apply path of ``netinit [FLAGS]``: parse, enter the namespace, gather facts, plan, then print the payloads
(``--dry-run``) or - under the namespace lock - apply (or clean up), set up what the rules rely on, and validate.

Cheap start: the nftables modules, libiptc, pyroute2 and the validator are imported only when the run uses them.
"""

from __future__ import annotations

import os
import sys

from netinit.apply import netns
from netinit.apply.engine import cleanup, render_restore
from netinit.apply.facts import host_facts
from netinit.apply.iptables import Applier, Backend, RestoreApplier, detect_backend, no_tables
from netinit.apply.runner import Runner, find_tool
from netinit.apply.steps import Step
from netinit.core.config import CaptureConfig, RunOptions, resolve
from netinit.core.flags import parse_options
from netinit.core.plan import RuleSet, plan
from netinit.errors import BackendError, ConfigError, NetinitError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


def _log(msg: str) -> None:
    print(f"netinit: {msg}", file=sys.stderr)


def _inet_table_names() -> list[str]:
    """The namespace's inet nf_tables tables over netlink (raises OSError where the kernel refuses the dump)."""
    return netns.nft_table_names(netns.NFPROTO_INET)


def make_applier(name: str, forced: str | None, runner: Runner) -> Applier:
    """The iptables applier ``--applier`` names: iptables-restore of the detected (or forced) flavour, or libiptc."""
    if name == "iptc":
        from netinit.apply.iptc import IptcApplier  # lazy: libiptc costs ~200 ms to import

        return IptcApplier(runner)  # imports python-iptables now: a missing one is exit 2, nothing touched
    backend, probed_v4 = detect_backend(runner, forced, known_empty=no_tables)
    return RestoreApplier(backend, runner, probed_v4, known_empty=no_tables)


def run(argv: Sequence[str], env: Mapping[str, str], runner: Runner) -> int:
    """``netinit [FLAGS]``: parse, gather facts, plan, then print (``--dry-run``) or act. Returns the exit code."""
    try:
        raw = parse_options(argv, env)
        # Enter the target namespace before looking at anything in it.
        pid = int(raw.pid) if raw.pid and (raw.pid.isascii() and raw.pid.isdigit()) else None
        target = netns.netns_path(raw.values.get("network_namespace"), pid)
        dry_run = raw.flags["dry_run"]
        if target is not None and not dry_run:
            netns.enter(target)
        facts = host_facts(raw, raw.values.get("network_namespace"), pid, strict=not dry_run, log=_log)
        cfg, opts = resolve(raw, facts, warn=_log)
        ruleset = plan(cfg)

        if opts.dry_run and opts.cleanup_only:
            raise ConfigError(
                "netinit: --dry-run with --cleanup-only is not supported: what cleanup removes "
                "depends on the live rules (inspect them with "
                + ("nft list ruleset inet)" if opts.native_nftables else "iptables-save)")
            )
        nft_tables = None
        if opts.native_nftables:
            from netinit.rules import nft  # lazy: the iptables path never imports the nftables modules

            nft_tables = nft.render_tables(ruleset)  # untranslatable rules are refused here, before any I/O
            if opts.dry_run:
                print(f"# {', '.join(f'IPv{f}' for f in ruleset.families())}: nft -f - <<EOF")
                sys.stdout.write(nft.transaction(nft_tables))
                print("# EOF")
                return 0
        if opts.dry_run:
            for fam in ruleset.families():
                print(f"# IPv{fam}: iptables-restore --noflush <<EOF")
                sys.stdout.write(render_restore(ruleset.family(fam)))
                print("# EOF")
            return 0

        from netinit.apply import lock

        # One netinit per namespace from snapshot to the end of the apply; a validation-only run (istio-validation,
        # unprivileged) touches nothing, so it takes no lock (and could not create one).
        validation_only = opts.skip_rule_apply and not opts.cleanup_only
        held = None if validation_only else lock.acquire()
        try:
            _act(cfg, opts, ruleset, runner, nft_tables)
        finally:
            if held is not None:
                os.close(held)
        return 0
    except NetinitError as e:
        print(str(e), file=sys.stderr)
        return e.exit_code


def _act(
    cfg: CaptureConfig, opts: RunOptions, ruleset: RuleSet, runner: Runner, nft_tables: dict[str, str] | None = None
) -> None:
    """Clean up, or apply (+ what the rules rely on) and validate - under the namespace lock. ``nft_tables``:
    the plan rendered for ``--native-nftables``. Every prerequisite is checked before anything is touched;
    the apply, the removal of the other capture kind (``--reconcile``) and the steps outside the tables are one
    transaction (``netinit.apply.steps``): exit 1 means rolled back."""
    if opts.cleanup_only:
        if opts.native_nftables:
            from netinit.apply import nftables  # lazy: the iptables path never imports the nftables modules

            _log(nftables.cleanup(nftables.NftApplier(runner, nftables.nft_binary(), _inet_table_names)))
            return
        applier = make_applier(opts.applier, opts.force_iptables_binary, runner)
        full = plan(cfg._replace(enable_ipv6=True))
        _log(cleanup(full, applier, _log))
        return

    if not opts.skip_rule_apply:
        after = _post_apply_steps(cfg, runner)  # checks its prerequisites (pyroute2, ip) first
        families = ", ".join(f"IPv{f}" for f in ruleset.families())
        if nft_tables is not None:
            from netinit.apply import nftables

            nft = nftables.NftApplier(runner, nftables.nft_binary(), _inet_table_names)
            before = _remove_iptables_capture(runner, opts.reconcile)
            _log(f"backend: native nftables via {nft.nft} -f; families: {families}")
            msg = nftables.apply_tables(
                nft_tables, nft, reconcile=opts.reconcile, force=opts.force_apply, log=_log, after=after, before=before
            )
        else:
            from netinit.apply.engine import apply_ruleset

            applier = make_applier(opts.applier, opts.force_iptables_binary, runner)
            before = _remove_native_capture(runner, opts.reconcile)
            _log(f"backend: iptables-{applier.backend.flavor} via {applier.name}; families: {families}")
            msg = apply_ruleset(
                ruleset, applier, reconcile=opts.reconcile, force=opts.force_apply, log=_log, after=after, before=before
            )
        _log(msg)
    if opts.run_validation:
        from netinit.apply.validate import validate

        if validate(cfg, _log, opts.probe_port, opts.probe_timeout):
            _log("validation passed")


def _post_apply_steps(cfg: CaptureConfig, runner: Runner) -> list[Step]:
    """What the rules rely on outside the tables - ``::6`` on lo (IPv6) and the TPROXY policy route - as steps of
    the apply's transaction, after checking what they need (nothing is touched yet)."""
    steps = []
    if cfg.enable_ipv6:
        ip = find_tool("ip")
        if ip is None:
            raise BackendError(
                "netinit: IPv6 capture needs the ip command (to add ::6/128 to lo), which is not installed "
                "(Debian: apt-get install iproute2); nothing was changed"
            )
        if netns.ipv6_disabled_on_lo():
            raise BackendError(
                "netinit: IPv6 capture needs ::6/128 on lo, but IPv6 is disabled on lo "
                "(net.ipv6.conf.lo.disable_ipv6 = 1); nothing was changed"
            )
        steps.append(netns.loopback6_step(runner, ip))
    if cfg.mode == "TPROXY" and cfg.inbound_ports:
        netns.require_pyroute2()
        steps.append(netns.TproxyRoutes(cfg.tproxy_mark, cfg.tproxy_route_table, cfg.enable_ipv6).step())
    return steps


def _remove_native_capture(runner: Runner, reconcile: bool) -> list[Step]:
    """Before an iptables apply: native nftables capture of ours is refused, or (``--reconcile``) removed."""
    from netinit.apply import stacking

    tables = stacking.native_tables()
    if not tables:
        return []
    nft_path = find_tool("nft")
    names = ", ".join(f"table inet {t}" for t in tables)
    if not reconcile:
        raise stacking.refuse(f"native nftables rules of ours ({names})", "netinit --native-nftables --cleanup-only")
    from netinit.apply import nftables

    nft = nftables.NftApplier(runner, nft_path or "nft")
    _log(f"--reconcile: removing native nftables capture ({names}) in the same transaction")
    return [nftables.removal_step(nft, nft.live(leftovers=True))]


def _remove_iptables_capture(runner: Runner, reconcile: bool) -> list[Step]:
    """Before a native nftables apply: iptables capture of ours is refused, or (``--reconcile``) removed."""
    from netinit.apply import stacking

    found = stacking.iptables_capture(runner, known_empty=no_tables)
    if not found:
        return []
    names = ", ".join(f"iptables-{fl} IPv{fam}" for fl, fam in found)
    if not reconcile:
        flavors = sorted({fl for fl, _ in found})
        how = " and ".join(f"netinit --cleanup-only --force-iptables-binary {fl}" for fl in flavors)
        raise stacking.refuse(f"iptables rules of ours ({names})", how)
    from netinit.apply.engine import cleanup_steps
    from netinit.core.config import CaptureConfig as _Cfg

    _log(f"--reconcile: removing iptables capture ({names}) in the same transaction")
    full = plan(_Cfg(enable_ipv6=True))
    steps: list[Step] = []
    for flavor in sorted({fl for fl, _ in found}):
        steps += cleanup_steps(full, RestoreApplier(Backend(flavor), runner))[0]
    return steps
