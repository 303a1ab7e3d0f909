"""``netinit-cni agent|install|uninstall``: the node agent's command line (the DaemonSet runs ``agent``)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

DEFAULT_SOCKET = "/var/run/netinit-cni/agent.sock"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netinit-cni", description="CNI mode: the node agent and its installer.")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("agent", help="serve the plugin's calls (and install it unless --no-install)")
    a.add_argument("--socket", default=DEFAULT_SOCKET, help=f"the plugin's unix socket ({DEFAULT_SOCKET})")
    a.add_argument("--state-dir", default="/var/run/netinit-cni/pods", help="records of what ADD programmed")
    a.add_argument("--kube-url", help="API server URL (default: in-cluster service account)")
    a.add_argument("--node", default=os.environ.get("NODE_NAME") or socket.gethostname(), help="this node's name")
    a.add_argument("--backend", default="auto", choices=("auto", "legacy", "nft", "native-nft"))
    a.add_argument("--health-port", type=int, default=None, help="serve /healthz, /readyz, /metrics here")
    a.add_argument("--health-address", default="127.0.0.1")
    a.add_argument("--repair-interval", type=float, default=10.0, help="seconds between repair (and re-chain) passes")
    a.add_argument("--no-repair", action="store_true", help="never delete pods that failed validation")
    a.add_argument("--repair-max-per-minute", type=int, default=5)
    _install_args(a)
    a.add_argument("--no-install", action="store_true", help="do not touch the node's CNI config (tests, manual)")
    i = sub.add_parser("install", help="copy the plugin and chain it into the conflist once")
    _install_args(i)
    i.add_argument("--socket", default=DEFAULT_SOCKET)
    u = sub.add_parser("uninstall", help="take the plugin out of every conflist and remove the binary")
    _install_args(u)
    return p


def _install_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cni-conf-dir", default="/etc/cni/net.d", help="the node's CNI conf dir (/etc/cni/net.d)")
    p.add_argument("--cni-bin-dir", default="/opt/cni/bin", help="the node's CNI bin dir (/opt/cni/bin)")
    p.add_argument("--plugin-binary", default="/usr/local/lib/netinit-cni/netinit-cni", help="the shim to install")
    p.add_argument("--exclude-namespaces", default="kube-system", help="comma list never captured (kube-system)")


def plugin_conf(ns: argparse.Namespace) -> dict[str, object]:
    excluded = [n for n in ns.exclude_namespaces.split(",") if n]
    return {"type": "netinit-cni", "agentSocket": ns.socket, "excludeNamespaces": excluded}


def _install(ns: argparse.Namespace, log: Callable[..., None]) -> None:
    from netinit_cni import install

    target = install.install_binary(Path(ns.plugin_binary), Path(ns.cni_bin_dir))
    log(msg=f"installed {target}", outcome="installed")
    done = install.ensure(Path(ns.cni_conf_dir), plugin_conf(ns))
    if done:
        log(msg=done, outcome="installed")


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    from netinit_cni.agent import log_line

    if ns.cmd == "uninstall":
        from netinit_cni import install

        for line in install.uninstall(Path(ns.cni_conf_dir), Path(ns.cni_bin_dir)):
            log_line(msg=line, outcome="uninstalled")
        return 0
    if ns.cmd == "install":
        _install(ns, log_line)
        return 0
    from netinit_cni.agent import Agent, serve
    from netinit_cni.kube import HttpPods
    from netinit_cni.program import Programmer
    from netinit_cni.repair import Repairer

    def pods(timeout: float = 5.0) -> HttpPods:
        return HttpPods.from_env(ns.kube_url, timeout)

    agent = Agent(pods, Programmer(Path(ns.state_dir), ns.backend))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ticks: list[Callable[[], object]] = []
    if not ns.no_repair:
        ticks.append(Repairer(pods, ns.node, log_line, max_per_minute=ns.repair_max_per_minute).run_once)
    if not ns.no_install:
        from netinit_cni import install

        _install(ns, log_line)

        def keep_chained() -> None:  # another component (the network plugin's own installer) may rewrite it
            done = install.ensure(Path(ns.cni_conf_dir), plugin_conf(ns))
            if done:
                log_line(msg=f"re-chained: {done}", outcome="installed")

        ticks.append(keep_chained)
    serve(ns.socket, agent, health_port=ns.health_port, health_address=ns.health_address, ticks=ticks,
          interval=ns.repair_interval, stop=stop)  # fmt: skip
    if not ns.no_install:
        # The chain stays as is on exit (a restart would only race it); uninstall is its own command.
        log_line(msg=f"stopped; {install.PLUGIN_TYPE} stays chained (netinit-cni uninstall removes it)")
    return 0


def main_entry() -> None:
    try:
        sys.exit(main())
    except (ValueError, OSError) as e:
        print(json.dumps({"msg": f"netinit-cni: {e}", "outcome": "error"}), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main_entry()
