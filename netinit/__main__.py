"""``netinit [FLAGS]``: istio-iptables-compatible capture. Thin: parse, gather facts, plan, apply.

Exit codes: 0 done (or already in place), 2 bad input (nothing touched), 1 apply failed (rolled back),
126 validation failed.

``netinit explain|show|verify ...`` are the debugging commands (netinit.debug.cli), imported only when that word
comes first: istio-iptables takes no positional arguments, so the flag form is unaffected.
"""

from __future__ import annotations

import grp
import os
import pwd
import sys
from collections.abc import Mapping, Sequence

from netinit.apply import netns
from netinit.apply.engine import cleanup, render_restore
from netinit.apply.iptables import Applier, RestoreApplier, detect_backend
from netinit.apply.runner import Runner, SubprocessRunner
from netinit.core.config import CaptureConfig, HostFacts, RunOptions, resolve
from netinit.core.flags import parse_options
from netinit.core.plan import RuleSet, plan
from netinit.errors import ApplyError, ConfigError, NetinitError


def _log(msg: str) -> None:
    print(f"netinit: {msg}", file=sys.stderr)


def _names(raw_values: Mapping[str, str]) -> tuple[dict[str, int], dict[str, int]]:
    """Resolve only the user/group names that were actually given (no full passwd scan at start-up)."""
    users: dict[str, int] = {}
    groups: dict[str, int] = {}
    for key in ("proxy_uid",):
        for n in raw_values.get(key, "").split(","):
            n = n.strip()
            if n and not (n.isascii() and n.isdigit()):
                try:
                    users[n] = pwd.getpwnam(n).pw_uid
                except KeyError:
                    pass
    for key in ("proxy_gid", "ISTIO_OUTBOUND_OWNER_GROUPS", "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"):
        for n in raw_values.get(key, "").split(","):
            n = n.strip()
            if n and n != "*" and not (n.isascii() and n.isdigit()):
                try:
                    groups[n] = grp.getgrnam(n).gr_gid
                except KeyError:
                    pass
    return users, groups


def make_applier(name: str, forced: str | None, runner: Runner) -> Applier:
    if name == "iptc":
        from netinit.apply.iptc import IptcApplier  # lazy: libiptc costs ~200 ms to import

        return IptcApplier(runner)
    backend, probed_v4 = detect_backend(runner, forced)
    return RestoreApplier(backend, runner, probed_v4)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None, runner: Runner | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    runner = runner or SubprocessRunner()
    if argv and argv[0] in ("explain", "show", "verify"):
        from netinit.debug import cli as debug_cli  # lazy: the apply path never imports the debugging commands

        return debug_cli.run(argv[0], argv[1:], env, runner)
    try:
        raw = parse_options(argv, env)
        # Enter the target namespace before looking at anything in it.
        pid = int(raw.pid) if raw.pid and (raw.pid.isascii() and raw.pid.isdigit()) else None
        target = netns.netns_path(raw.values.get("network_namespace"), pid)
        dry_run = raw.flags["dry_run"]
        if target is not None and not dry_run:
            netns.enter(target)
        try:
            has4, has6 = netns.global_families()
        except OSError as e:
            if not dry_run:
                raise ConfigError(f"netinit: cannot list the namespace's addresses: {e}") from None
            has4, has6 = True, False  # --dry-run needs no privileges: plan for a plain IPv4 pod
        if not has4 and not has6:
            _log("no non-loopback address in this namespace; planning IPv4 only")
            has4 = True
        users, groups = _names(raw.values)
        wants_dns = raw.flags["redirect_dns"] and not raw.flags["capture_all_dns"]
        dns = netns.nameservers(netns.resolv_conf_for(raw.values.get("network_namespace"), pid)) if wants_dns else ()
        facts = HostFacts(has_global_ipv4=has4, has_global_ipv6=has6, dns_servers=dns, group_ids=groups, user_ids=users)
        cfg, run = resolve(raw, facts, warn=_log)
        ruleset = plan(cfg)

        if run.dry_run and run.cleanup_only:
            raise ConfigError(
                "netinit: --dry-run with --cleanup-only is not supported: what cleanup removes "
                "depends on the live rules (inspect them with "
                + ("nft list ruleset inet)" if run.native_nftables else "iptables-save)")
            )
        nft_tables = None
        if run.native_nftables:
            from netinit.rules import nft  # lazy: the iptables path never imports the nftables modules

            nft_tables = nft.render_tables(ruleset)  # untranslatable rules are refused here, before any I/O
            if run.dry_run:
                print(f"# {', '.join(f'IPv{f}' for f in ruleset.families())}: nft -f - <<EOF")
                sys.stdout.write(nft.transaction(nft_tables))
                print("# EOF")
                return 0
        if run.dry_run:
            for fam in ruleset.families():
                print(f"# IPv{fam}: iptables-restore --noflush <<EOF")
                sys.stdout.write(render_restore(ruleset.family(fam)))
                print("# EOF")
            return 0

        from netinit.apply import lock

        held = lock.acquire()  # one netinit per namespace from snapshot to the end of the apply
        try:
            _act(cfg, run, ruleset, runner, nft_tables)
        finally:
            if held is not None:
                os.close(held)
        return 0
    except NetinitError as e:
        print(str(e), file=sys.stderr)
        return e.exit_code


def _act(
    cfg: CaptureConfig, run: RunOptions, ruleset: RuleSet, runner: Runner, nft_tables: dict[str, str] | None = None
) -> None:
    """Clean up, or apply (+ what the rules rely on) and validate - under the namespace lock. ``nft_tables``:
    the plan rendered for ``--native-nftables``."""
    if run.cleanup_only:
        if run.native_nftables:
            from netinit.apply import nftables  # lazy: the iptables path never imports the nftables modules

            _log(nftables.cleanup(nftables.NftApplier(runner, nftables.nft_binary())))
            return
        applier = make_applier(run.applier, run.force_iptables_binary, runner)
        full = plan(cfg._replace(enable_ipv6=True))
        _log(cleanup(full, applier, _log))
        return

    if not run.skip_rule_apply:
        families = ", ".join(f"IPv{f}" for f in ruleset.families())
        if nft_tables is not None:
            from netinit.apply import nftables

            nft = nftables.NftApplier(runner, nftables.nft_binary())
            _log(f"backend: native nftables via {nft.nft} -f; families: {families}")
            _log(nftables.apply_tables(nft_tables, nft, reconcile=run.reconcile, force=run.force_apply, log=_log))
        else:
            from netinit.apply.engine import apply_ruleset

            applier = make_applier(run.applier, run.force_iptables_binary, runner)
            _log(f"backend: iptables-{applier.backend.flavor} via {applier.name}; families: {families}")
            _log(apply_ruleset(ruleset, applier, reconcile=run.reconcile, force=run.force_apply, log=_log))
        _post_apply(cfg, runner)
    if run.run_validation:
        from netinit.apply.validate import validate

        if validate(cfg, _log):
            _log("validation passed: outbound capture and proxy bypass work")


def _post_apply(cfg: CaptureConfig, runner: Runner) -> None:
    """What the rules rely on outside iptables: ``::6`` on lo (IPv6) and the TPROXY policy route."""
    if cfg.enable_ipv6:
        res = runner.run(["ip", "-6", "addr", "replace", "::6/128", "dev", "lo"])
        if res.returncode != 0:
            raise ApplyError(f"netinit: rules applied, but adding ::6/128 to lo failed: {res.stderr.strip()}")
    if cfg.mode == "TPROXY" and cfg.inbound_ports:
        netns.configure_tproxy_routes(cfg.tproxy_mark, cfg.tproxy_route_table, cfg.enable_ipv6)


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
