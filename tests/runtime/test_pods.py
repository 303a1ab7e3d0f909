"""Injected pods run as they ship: the webhook in its own container (the Deployment's securityContext) admits
them over verifying TLS, the podman kubelet (lab.runtime.kubelet) runs the pod spec it returned - istio-init is
the netinit image, istio-proxy the envoy image, the app the lab's echo image - and real traffic crosses podman's
bridge.

Addresses: pods on podman's default bridge (10.88.0.0/16); the host is 10.88.0.1 there (the "node": probes and
inbound requests come from it; the ``outside`` echo servers listen on it). Envoy's admin (/stats, /clusters) is
read from the host inside the pod's network namespace; its counters say which listener and cluster carried a
connection.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest

from lab import apiserver, traffic
from lab.runtime import kubelet
from lab.runtime.webhook import WebhookContainer

from .conftest import ENABLED, GATEWAY

pytestmark = [pytest.mark.requires_podman, pytest.mark.timeout(300)]

INBOUND = "cluster.InboundPassthroughCluster.upstream_cx_total"
OUTBOUND = "cluster.PassthroughCluster.upstream_cx_total"
L_INBOUND = "listener.0.0.0.0_15006.downstream_cx_total"
L_OUTBOUND = "listener.0.0.0.0_15001.downstream_cx_total"
CAPTURE = (INBOUND, OUTBOUND, L_INBOUND, L_OUTBOUND)


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {n: after.get(n, 0) - before.get(n, 0) for n in CAPTURE}


def make_pod(
    image: str,
    name: str = "web",
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    ports: tuple[int, ...] = (8080,),
    **container: Any,
) -> dict[str, Any]:
    """A Pod as ``kubectl apply`` sends it: one app container, the lab's echo image, serving ``ports``."""
    meta: dict[str, Any] = {"name": name, "labels": {"app": name, **(labels or {})}}
    if annotations:
        meta["annotations"] = dict(annotations)
    app = {
        "name": name,
        "image": image,
        "ports": [{"containerPort": p} for p in ports],
        "env": [{"name": "ECHO_NAME", "value": name}, {"name": "ECHO_PORTS", "value": ",".join(map(str, ports))}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": ports[0]}, "periodSeconds": 2},
        **container,
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": [app]}}


def admit(webhook: WebhookContainer, pod: dict[str, Any], injected: bool = True) -> dict[str, Any]:
    out = apiserver.admit(copy.deepcopy(pod), ENABLED, webhook, namespace="shop")
    names = [c["name"] for c in [*(out["spec"].get("initContainers") or []), *out["spec"]["containers"]]]
    assert ("istio-proxy" in names) is injected, names
    return out


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod["spec"]
    return next(c for c in [*(spec.get("initContainers") or []), *spec["containers"]] if c["name"] == name)


# --- the webhook container ------------------------------------------------------------------------------------


def test_the_webhook_runs_under_the_deployments_security_context(webhook: WebhookContainer) -> None:
    pod = webhook.pod
    assert pod is not None
    name = "sidecar-injector"
    assert pod.inspect(name, "{{.Config.User}}") == "65532:65532"
    assert pod.inspect(name, "{{.HostConfig.ReadonlyRootfs}}") == "true"
    assert pod.effective_caps(name) == []
    assert "no-new-privileges" in pod.inspect(name, "{{.HostConfig.SecurityOpt}}")
    probe = "import os; s=open('/proc/1/status').read(); print(os.getuid(), os.getgid(), os.getgroups()); "
    probe += "print([l for l in s.splitlines() if l.startswith(('Seccomp:', 'NoNewPrivs:', 'CapEff:'))]); "
    probe += "open('/tmp/w', 'w').write('x'); print(oct(os.stat('/etc/sidecar-injector/certs/tls.key').st_mode))\n"
    probe += "try:\n    open('/w', 'w')\nexcept OSError as e:\n    print(e.strerror)"
    res = pod.exec(name, "python", "-c", probe)
    assert res.returncode == 0, res.stderr
    ids, status, mode, ro = res.stdout.splitlines()
    assert ids.startswith("65532 65532") and "65532" in ids.split("[")[1]  # fsGroup among the groups
    assert "'Seccomp:\\t2'" in status and "'NoNewPrivs:\\t1'" in status and "'CapEff:\\t0000000000000000'" in status
    assert mode == "0o100440" and ro == "Read-only file system"  # the Secret's defaultMode; the root is read-only
    # the Deployment's probes (HTTPS, unverified, as the kubelet) passed, and its caBundle-verified TLS answers
    assert "sidecar-injector: readinessProbe passed" in pod.events
    assert webhook.get("/readyz")[0] == 200


def test_the_webhook_is_selected_through_the_shipped_selectors(webhook: WebhookContainer, echo_image: str) -> None:
    plain = make_pod(echo_image)
    assert [h["name"] for h in apiserver.selecting_webhooks(plain, "shop", ENABLED)] == [
        "namespace.sidecar-injector.io"
    ]
    admitted = admit(webhook, plain)
    proxy, init = container(admitted, "istio-proxy"), container(admitted, "istio-init")
    assert proxy["image"] == webhook.images["envoy"] and init["image"] == webhook.images["netinit"]
    off = make_pod(echo_image, labels={"sidecar.istio.io/inject": "false"})
    assert apiserver.selecting_webhooks(off, "shop", ENABLED) == []


# --- a default pod, shared by the read-only checks -------------------------------------------------------------


@pytest.fixture(scope="module")
def default_pod(webhook: WebhookContainer, echo_image: str) -> Iterator[kubelet.PodmanPod]:
    """An injected pod (legacy layout: no API server version, so nativeSidecar auto is off) whose app reads the
    kubelet's env and volumes: fieldRef, resourceFieldRef with a divisor and without a limit, downwardAPI,
    a projected token, an optional configMap that does not exist."""
    env = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
        {"name": "EPHEMERAL", "valueFrom": {"resourceFieldRef": {"resource": "limits.ephemeral-storage"}}},
        {"name": "GREETING", "value": "hello from $(NS)"},
    ]
    pod = make_pod(echo_image, resources={"limits": {"memory": "96Mi", "cpu": "500m"}})
    app = pod["spec"]["containers"][0]
    app["env"] += env
    app["volumeMounts"] = [
        {"name": "podinfo", "mountPath": "/etc/podinfo"},
        {"name": "token", "mountPath": "/var/run/secrets/tokens"},
        {"name": "maybe", "mountPath": "/etc/maybe"},
    ]
    pod["spec"]["volumes"] = [
        {
            "name": "podinfo",
            "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]},
        },
        {
            "name": "token",
            "projected": {"sources": [{"serviceAccountToken": {"path": "istio-token", "audience": "istio-ca"}}]},
        },
        {"name": "maybe", "configMap": {"name": "not-there", "optional": True}},
    ]
    with kubelet.run_pod(admit(webhook, pod), node_iptables="legacy") as running:
        yield running


def test_inbound_is_carried_by_envoy_to_the_app(default_pod: kubelet.PodmanPod) -> None:
    before = default_pod.envoy_stats()
    res = default_pod.get(8080)
    after = default_pod.envoy_stats()
    assert res.status == 200 and res.body.startswith("name=web "), res
    assert traffic.peer_of(res.body) == "127.0.0.6"  # Envoy's inbound upstream bind, not the host
    assert delta(before, after) == {INBOUND: 1, L_INBOUND: 1, OUTBOUND: 0, L_OUTBOUND: 0}
    assert f"{default_pod.ip}:8080" in default_pod.upstream_hosts("InboundPassthroughCluster")


def test_outbound_from_the_apps_uid_is_carried_by_envoy_without_a_loop(
    default_pod: kubelet.PodmanPod, outside: tuple[str, int, int]
) -> None:
    host, port, _ = outside
    before = default_pod.envoy_stats()
    res = default_pod.exec_get("web", host, port)
    after = default_pod.envoy_stats()
    assert res.status == 200 and res.body.startswith("name=outside "), res
    assert traffic.peer_of(res.body) == default_pod.ip
    # one connection through 15001 and one upstream: Envoy's own (uid 1337) connection was not captured again
    assert delta(before, after) == {OUTBOUND: 1, L_OUTBOUND: 1, INBOUND: 0, L_INBOUND: 0}
    assert res.seconds < 1.0
    assert default_pod.upstream_hosts("PassthroughCluster").get(f"{host}:{port}", 0) >= 1


def test_the_probe_ports_answer_the_node(default_pod: kubelet.PodmanPod) -> None:
    assert default_pod.get(15021, "/healthz/ready").status == 200
    prom = default_pod.get(15090, "/stats/prometheus")
    assert prom.status == 200 and "envoy_" in prom.body
    assert "web: readinessProbe passed" in default_pod.events  # the app's own probe, through Envoy's inbound


def test_istio_init_had_only_net_admin_and_net_raw_and_the_proxy_none(default_pod: kubelet.PodmanPod) -> None:
    assert default_pod.effective_caps("istio-init") == ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    assert default_pod.inspect("istio-init", "{{.State.ExitCode}}") == "0"
    assert default_pod.effective_caps("istio-proxy") == []
    assert default_pod.inspect("istio-proxy", "{{.Config.User}}") == "1337:1337"
    assert "ISTIO_OUTPUT" in default_pod.rules("legacy")  # the node's backend the lab asked for
    assert "--force-iptables-binary legacy" in default_pod.inspect("istio-init", "{{.Config.Cmd}}").replace("[", "")
    # and both still work: the capture tests above went through this Envoy


def test_the_proxy_runs_on_a_read_only_root_with_seccomp_and_no_new_privileges(default_pod: kubelet.PodmanPod) -> None:
    assert default_pod.inspect("istio-proxy", "{{.HostConfig.ReadonlyRootfs}}") == "true"
    res = default_pod.exec("istio-proxy", "bash", "-c", "echo x > /x; grep -E '^(Seccomp|NoNewPrivs):' /proc/1/status")
    assert "Read-only file system" in res.stderr, res
    assert sorted(res.stdout.split()) == sorted(["Seccomp:", "2", "NoNewPrivs:", "1"])


def test_env_and_volumes_are_what_the_kubelet_writes(default_pod: kubelet.PodmanPod) -> None:
    def read(path: str) -> str:
        res = default_pod.get(8080, path)
        assert res.status == 200, res
        return res.body

    assert read("/env/POD_IP").strip() == default_pod.ip
    assert read("/env/MEM_MI").strip() == "96"  # the limit, divided by 1Mi
    assert int(read("/env/EPHEMERAL")) == default_pod.node.ephemeral_storage  # no limit: node allocatable
    assert read("/env/GREETING").strip() == "hello from shop"
    assert 'app="web"' in read("/file/etc/podinfo/labels").splitlines()
    token = read("/file/var/run/secrets/tokens/istio-token")
    claims = json.loads(__import__("base64").urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["aud"] == ["istio-ca"] and claims["sub"] == "system:serviceaccount:shop:default"
    assert default_pod.exec("web", "ls", "-A", "/etc/maybe").stdout == ""  # optional and absent: empty
    limit = default_pod.inspect("web", "{{.HostConfig.Memory}}")
    assert limit == str(96 * 1024 * 1024)  # the runtime enforces the limit too


def test_restarting_the_app_re_runs_nothing_else(default_pod: kubelet.PodmanPod) -> None:
    init, proxy = default_pod.started_at("istio-init"), default_pod.started_at("istio-proxy")
    app = default_pod.started_at("web")
    default_pod.restart_container("web")
    assert default_pod.started_at("web") != app
    assert default_pod.started_at("istio-init") == init and default_pod.started_at("istio-proxy") == proxy
    assert len(default_pod.init_results["istio-init"]) == 1
    assert traffic.peer_of(default_pod.get(8080).body) == "127.0.0.6"


def test_istio_init_again_in_the_same_sandbox_is_already_in_place(default_pod: kubelet.PodmanPod) -> None:
    res = default_pod.rerun_init()
    assert res.returncode == 0 and "already in place" in res.stdout + res.stderr, res


# --- layouts, backends, annotations ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["nft", "native-nft"])
def test_traffic_both_ways_on_the_other_node_backends(
    webhook: WebhookContainer, echo_image: str, outside: tuple[str, int, int], backend: str
) -> None:
    with kubelet.run_pod(admit(webhook, make_pod(echo_image)), node_iptables=backend) as pod:
        inbound = pod.get(8080)
        before = pod.envoy_stats()
        outbound = pod.exec_get("web", outside[0], outside[1])
        after = pod.envoy_stats()
        rules = pod.rules(backend)
        other = pod.rules("legacy")
    assert traffic.peer_of(inbound.body) == "127.0.0.6"
    assert traffic.peer_of(outbound.body) == pod.ip and delta(before, after)[OUTBOUND] == 1
    assert ("ISTIO_OUTPUT" in rules or "istio-proxy-nat" in rules) and "ISTIO" not in other


def test_native_sidecar_starts_and_passes_its_startup_probe_before_the_app(
    webhook: WebhookContainer, echo_image: str
) -> None:
    pod = make_pod(echo_image, annotations={"sidecar.istio.io/nativeSidecar": "true"})
    admitted = admit(webhook, pod)
    assert [c["name"] for c in admitted["spec"]["initContainers"]] == ["istio-init", "istio-proxy"]
    with kubelet.run_pod(admitted, node_iptables="nft") as running:
        events = running.events
        assert traffic.peer_of(running.get(8080).body) == "127.0.0.6"
    order = [
        "istio-init: exited 0",
        "istio-proxy: started",
        "istio-proxy: startupProbe passed (native",
        "web: started",
        "web: readinessProbe passed",
    ]
    at = [next(i for i, e in enumerate(events) if e.startswith(o)) for o in order]
    assert at == sorted(at), events


def test_legacy_layout_with_hold_runs_the_proxys_post_start_before_the_app(
    webhook: WebhookContainer, echo_image: str
) -> None:
    hold = {"proxy.istio.io/config": '{"holdApplicationUntilProxyStarts": true}'}
    admitted = admit(webhook, make_pod(echo_image, annotations=hold))
    assert [c["name"] for c in admitted["spec"]["containers"]] == ["istio-proxy", "web"]
    assert "postStart" in container(admitted, "istio-proxy").get("lifecycle", {})
    with kubelet.run_pod(admitted) as running:
        events = running.events
        proxy_ready = running.started_at("istio-proxy")
        app_started = running.started_at("web")
    hook = next(i for i, e in enumerate(events) if e.startswith("istio-proxy: postStart hook passed"))
    assert hook < next(i for i, e in enumerate(events) if e.startswith("web: started")), events
    assert proxy_ready < app_started


def test_excluded_ports_bypass_envoy(webhook: WebhookContainer, echo_image: str, outside: tuple[str, int, int]) -> None:
    host, captured, bypassed = outside
    annotations = {
        "traffic.sidecar.istio.io/excludeInboundPorts": "8081",
        "traffic.sidecar.istio.io/excludeOutboundPorts": str(bypassed),
    }
    with kubelet.run_pod(admit(webhook, make_pod(echo_image, annotations=annotations, ports=(8080, 8081)))) as pod:
        before = pod.envoy_stats()
        via, direct = pod.get(8080), pod.get(8081)
        out_via, out_direct = pod.exec_get("web", host, captured), pod.exec_get("web", host, bypassed)
        after = pod.envoy_stats()
    assert traffic.peer_of(via.body) == "127.0.0.6" and traffic.peer_of(direct.body) == GATEWAY
    assert out_via.status == 200 and out_direct.status == 200
    assert delta(before, after) == {INBOUND: 1, L_INBOUND: 1, OUTBOUND: 1, L_OUTBOUND: 1}


def test_excluded_outbound_ranges_bypass_envoy(
    webhook: WebhookContainer, echo_image: str, outside: tuple[str, int, int]
) -> None:
    annotations = {"traffic.sidecar.istio.io/excludeOutboundIPRanges": f"{GATEWAY}/32"}
    with kubelet.run_pod(admit(webhook, make_pod(echo_image, annotations=annotations))) as pod:
        before = pod.envoy_stats()
        res = pod.exec_get("web", outside[0], outside[1])
        after = pod.envoy_stats()
    assert res.status == 200 and traffic.peer_of(res.body) == pod.ip
    assert delta(before, after)[OUTBOUND] == 0 and delta(before, after)[L_OUTBOUND] == 0


def test_an_app_running_as_1337_bypasses_capture(
    webhook: WebhookContainer, echo_image: str, outside: tuple[str, int, int]
) -> None:
    """docs/compat.md and Istio's docs: uid 1337 is the proxy's; an app running as it is not captured outbound
    (its traffic leaves as if there were no sidecar). Inbound to it is still captured."""
    pod = make_pod(echo_image, securityContext={"runAsUser": 1337, "runAsGroup": 1337})
    with kubelet.run_pod(admit(webhook, pod)) as running:
        before = running.envoy_stats()
        out = running.exec_get("web", outside[0], outside[1])
        after = running.envoy_stats()
        inbound = running.get(8080)
    assert out.status == 200 and out.body.startswith("name=outside ")
    assert delta(before, after)[OUTBOUND] == 0 and delta(before, after)[L_OUTBOUND] == 0
    assert "uid=1337" in inbound.body and traffic.peer_of(inbound.body) == "127.0.0.6"


def test_an_opted_out_pod_has_no_sidecar_and_plain_traffic(
    webhook: WebhookContainer, echo_image: str, outside: tuple[str, int, int]
) -> None:
    pod = make_pod(echo_image, labels={"sidecar.istio.io/inject": "false"})
    admitted = admit(webhook, pod, injected=False)
    assert "initContainers" not in admitted["spec"]
    with kubelet.run_pod(admitted) as running:
        inbound = running.get(8080)
        outbound = running.exec_get("web", outside[0], outside[1])
        rules = running.rules("legacy") + running.rules("nft")
    assert traffic.peer_of(inbound.body) == GATEWAY  # straight from the node
    assert traffic.peer_of(outbound.body) == running.ip
    assert "ISTIO" not in rules


def test_a_sandbox_restart_re_runs_istio_init(
    webhook: WebhookContainer, echo_image: str, outside: tuple[str, int, int]
) -> None:
    with kubelet.run_pod(admit(webhook, make_pod(echo_image))) as pod:
        first_ip = pod.ip
        pod.restart_sandbox()
        runs = pod.init_results["istio-init"]
        inbound = pod.get(8080)
        before = pod.envoy_stats()
        outbound = pod.exec_get("web", outside[0], outside[1])
        after = pod.envoy_stats()
    assert len(runs) == 2 and all(r.returncode == 0 for r in runs)
    assert traffic.peer_of(inbound.body) == "127.0.0.6" and delta(before, after)[OUTBOUND] == 1
    assert traffic.peer_of(outbound.body) == pod.ip
    assert pod.ip and first_ip  # a new sandbox may or may not get a new IP: either way capture works again
