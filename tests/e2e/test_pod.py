"""An injected pod comes alive: the real webhook admits it, netinit programs its namespace, a real Envoy carries
its traffic. For both iptables backends (the ``flavor`` fixture).

Topology (lab.podlab): the pod's namespace (10.89.0.2, default route via the client) <-veth-> the client
namespace (10.89.0.1: the node that probes, and every other workload). Envoy's admin /stats is read before and
after each request: counters are immediate, and they say which listener and cluster carried the connection.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from lab import apiserver, podlab, traffic
from lab.webhook_process import WebhookProcess

from .conftest import ENABLED, delta, inject, make_pod

pytestmark = pytest.mark.requires_root

INBOUND = "cluster.InboundPassthroughCluster.upstream_cx_total"
OUTBOUND = "cluster.PassthroughCluster.upstream_cx_total"
L_INBOUND = "listener.0.0.0.0_15006.downstream_cx_total"
L_OUTBOUND = "listener.0.0.0.0_15001.downstream_cx_total"
CAPTURE = (INBOUND, OUTBOUND, L_INBOUND, L_OUTBOUND)


def ids(proc_pid: int) -> tuple[str, str]:
    """(real uid, real gid) of a running process."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{proc_pid}/status").read_text().splitlines())
    return status["Uid"].split()[0], status["Gid"].split()[0]


def test_inbound_is_carried_by_envoy_to_the_app(webhook: WebhookProcess, flavor: str) -> None:
    with podlab.run_pod(inject(webhook, make_pod()), flavor) as pod:
        before = pod.envoy_stats()
        body = pod.client_get(8080)
        after = pod.envoy_stats()
        hosts = pod.upstream_hosts("InboundPassthroughCluster")
    assert body.startswith("name=web ")  # answered by the app container
    assert traffic.peer_of(body) == "127.0.0.6"  # from Envoy's inbound upstream bind address, not the client
    assert delta(before, after, *CAPTURE) == {INBOUND: 1, L_INBOUND: 1, OUTBOUND: 0, L_OUTBOUND: 0}
    assert after["cluster.InboundPassthroughCluster.upstream_cx_connect_fail"] == 0
    assert hosts == {f"{pod.ip}:8080": 1}  # Envoy forwarded to the original destination the client dialled


def test_outbound_is_carried_by_envoy_without_a_loop(webhook: WebhookProcess, flavor: str) -> None:
    with podlab.run_pod(inject(webhook, make_pod()), flavor) as pod:
        pod.start_client_server(9090)
        before = pod.envoy_stats()
        res = pod.pod_request(pod.client_ip, 9090)  # as the app's uid 1000
        after = pod.envoy_stats()
        hosts = pod.upstream_hosts("PassthroughCluster")
        # The proxy's own uid is not captured: that is what keeps Envoy's upstream connection from looping.
        direct = pod.pod_request(pod.client_ip, 9090, uid=1337)
        after_direct = pod.envoy_stats()
    assert res.status == 200 and res.body.startswith("name=client "), res
    assert traffic.peer_of(res.body) == pod.ip  # Envoy's upstream leaves from the pod IP, like the app would
    # Exactly one connection reached the outbound listener and one left the passthrough cluster: a re-captured
    # upstream would have come back to 15001 again and again (and the request would hang, not take < 1 s).
    assert delta(before, after, *CAPTURE) == {OUTBOUND: 1, L_OUTBOUND: 1, INBOUND: 0, L_INBOUND: 0}
    assert res.seconds < 1.0
    assert hosts == {f"{pod.client_ip}:9090": 1}  # the original destination, kept through the REDIRECT
    assert direct.status == 200 and delta(after, after_direct, *CAPTURE) == dict.fromkeys(CAPTURE, 0)


def test_excluded_ports_and_ranges_bypass_envoy(webhook: WebhookProcess, flavor: str) -> None:
    annotations = {
        "traffic.sidecar.istio.io/excludeInboundPorts": "8080",
        "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.89.1.0/24",
    }
    admitted = inject(webhook, make_pod(annotations=annotations))
    init = next(c for c in admitted["spec"]["initContainers"] if c["name"] == "istio-init")
    args = init["args"]
    assert args[args.index("-x") + 1] == "10.89.1.0/24" and "8080" in args[args.index("-d") + 1].split(",")
    with podlab.run_pod(admitted, flavor) as pod:
        outside = pod.add_client_address("10.89.1.1")  # in the excluded range, reached via the default route
        pod.start_client_server(9090)
        before = pod.envoy_stats()
        inbound = pod.client_get(8080)
        outbound = pod.pod_get(outside, 9090)
        ready = pod.client_get(15021, "/healthz/ready")  # the kubelet's probe port, from the node
        prom = pod.client_get(15090, "/stats/prometheus")  # the metrics port, from a scraper
        after = pod.envoy_stats()
        captured = pod.pod_get(pod.client_ip, 9090)  # the control: not excluded, so it is captured
        after_control = pod.envoy_stats()
    assert traffic.peer_of(inbound) == pod.client_ip  # straight from the client, not via 127.0.0.6
    assert outbound.startswith("name=client ") and traffic.peer_of(outbound) == pod.ip
    assert ready.strip() == "LIVE" and "envoy_server_live{} 1" in prom
    assert delta(before, after, *CAPTURE) == dict.fromkeys(CAPTURE, 0)
    assert after["listener.0.0.0.0_15021.downstream_cx_total"] > before["listener.0.0.0.0_15021.downstream_cx_total"]
    assert captured.startswith("name=client ") and delta(after, after_control, OUTBOUND) == {OUTBOUND: 1}


@pytest.mark.parametrize(
    ("pod_labels", "namespace_labels"),
    [
        ({"sidecar.istio.io/inject": "false"}, ENABLED),
        ({}, {"istio-injection": "disabled"}),
        ({}, {}),
    ],
    ids=["pod-label-inject-false", "namespace-injection-disabled", "namespace-unlabelled"],
)
def test_opted_out_pods_get_no_sidecar_and_talk_directly(
    webhook: WebhookProcess, flavor: str, pod_labels: dict[str, str], namespace_labels: dict[str, str]
) -> None:
    pod = make_pod(labels=pod_labels)
    calls = webhook.metric("sidecar_injector_requests_total")
    admitted = apiserver.admit(copy.deepcopy(pod), namespace_labels, webhook, namespace="shop")
    assert admitted == pod  # unchanged: the API server did not even call the webhook
    assert webhook.metric("sidecar_injector_requests_total") == calls
    with podlab.run_pod(admitted, flavor) as running:
        assert not running.injected and "istio-proxy" not in running.processes
        assert "ISTIO" not in running.nat_rules()
        body = running.client_get(8080)
        running.start_client_server(9090)
        out = running.pod_get(running.client_ip, 9090)
    assert traffic.peer_of(body) == running.client_ip and traffic.peer_of(out) == running.ip


def test_the_selected_webhook_is_actually_called(webhook: WebhookProcess) -> None:
    """The control for the opt-out cases: an enabled namespace goes through the webhook, which injects."""
    calls = webhook.metric("sidecar_injector_injections_total")
    pod = make_pod()
    names = [h["name"] for h in apiserver.selecting_webhooks(pod, "shop", ENABLED)]
    assert names == ["namespace.sidecar-injector.io"]
    assert [h["name"] for h in apiserver.selecting_webhooks(pod, "kube-system", ENABLED)] == []
    assert [h["name"] for h in apiserver.selecting_webhooks(pod, "shop", {"istio.io/rev": "default"})] == [
        "rev.namespace.sidecar-injector.io"
    ]
    inject(webhook, pod)
    assert webhook.metric("sidecar_injector_injections_total") == calls + 1


def test_a_refused_pod_is_not_created(webhook: WebhookProcess) -> None:
    bad = make_pod(annotations={"sidecar.istio.io/interceptionMode": "magic"})
    with pytest.raises(apiserver.AdmissionRefused, match="interceptionMode='magic'"):
        apiserver.admit(bad, ENABLED, webhook, namespace="shop")


def test_a_second_init_run_is_a_noop_and_traffic_is_still_captured(webhook: WebhookProcess, flavor: str) -> None:
    with podlab.run_pod(inject(webhook, make_pod()), flavor) as pod:
        rules = pod.nat_rules()
        again = pod.run_init()  # what a pod sandbox restart does
        rules_again = pod.nat_rules()
        before = pod.envoy_stats()
        body = pod.client_get(8080)
        after = pod.envoy_stats()
    assert again.returncode == 0, again.stderr
    assert "already in place" in again.stderr
    assert rules_again == rules and "-j ISTIO_INBOUND" in rules
    assert rules.count("-A PREROUTING") == 1 and rules.count("-A OUTPUT") == 1  # no duplicated jumps
    assert traffic.peer_of(body) == "127.0.0.6" and delta(before, after, INBOUND) == {INBOUND: 1}


@pytest.mark.parametrize("native", [True, False], ids=["native-sidecar", "legacy-sidecar"])
def test_native_and_legacy_layouts_come_up(webhook: WebhookProcess, flavor: str, native: bool) -> None:
    admitted = inject(webhook, make_pod(annotations={"sidecar.istio.io/nativeSidecar": str(native).lower()}))
    inits = [c["name"] for c in admitted["spec"]["initContainers"]]
    containers = [c["name"] for c in admitted["spec"]["containers"]]
    if native:
        assert (inits, containers) == (["istio-init", "istio-proxy"], ["web"])
        assert admitted["spec"]["initContainers"][1]["restartPolicy"] == "Always"
    else:
        assert (inits, containers) == (["istio-init"], ["web", "istio-proxy"])
    with podlab.run_pod(admitted, flavor) as pod:
        assert pod.native_sidecar is native
        envoy, app = pod.processes["istio-proxy"], pod.processes["web"]
        assert ids(envoy.pid) == ("1337", "1337") and Path(f"/proc/{envoy.pid}/exe").resolve().name == "envoy"
        assert ids(app.pid) == ("1000", "1000")
        # node.id was "$(POD_NAME).$(POD_NAMESPACE)" in the injected args: expanded from the fieldRef env.
        assert '"id": "web.shop"' in pod.admin("/server_info")
        inbound = pod.client_get(8080)
        pod.start_client_server(9090)
        outbound = pod.pod_get(pod.client_ip, 9090)
        stats = pod.envoy_stats()
    started = [e.split(":")[0] for e in pod.events if "started" in e or "app server" in e]
    # Native: the kubelet starts the app only after the sidecar's startupProbe passed.
    assert started == (["istio-proxy", "web"] if native else ["web", "istio-proxy"])
    if native:
        assert pod.events.index("istio-proxy: startupProbe passed") < pod.events.index(
            next(e for e in pod.events if e.startswith("web:"))
        )
    assert traffic.peer_of(inbound) == "127.0.0.6" and traffic.peer_of(outbound) == pod.ip
    assert (stats[INBOUND], stats[OUTBOUND]) == (1, 1)


def test_hold_application_until_proxy_starts_in_the_legacy_layout(webhook: WebhookProcess) -> None:
    annotations = {
        "proxy.istio.io/config": '{"holdApplicationUntilProxyStarts": true}',
        "sidecar.istio.io/nativeSidecar": "false",
    }
    admitted = inject(webhook, make_pod(annotations=annotations))
    assert [c["name"] for c in admitted["spec"]["containers"]] == ["istio-proxy", "web"]
    assert "postStart" in admitted["spec"]["containers"][0]["lifecycle"]
    # The hook polls for up to 2 minutes; Envoy is ready in well under a second, so 3 s is plenty.
    with podlab.run_pod(admitted, "legacy", hook_timeout=3) as pod:
        assert traffic.peer_of(pod.client_get(8080)) == "127.0.0.6"
    assert pod.events.index("istio-proxy: postStart hook passed") < pod.events.index(
        next(e for e in pod.events if e.startswith("web:"))
    )
