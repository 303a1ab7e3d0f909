"""The e2e essentials of test_pod.py with ``istio-init`` running ``netinit --native-nftables`` (podlab flavor
"native-nft"): the real webhook admits the pod, netinit programs the ``inet istio-proxy-*`` tables, a real Envoy
carries inbound and outbound traffic, exclusions bypass it, and a second init run changes nothing."""

from __future__ import annotations

import pytest

from lab import podlab, shell, traffic
from lab.webhook_process import WebhookProcess
from netinit.rules import nft

from .conftest import delta, inject, make_pod
from .test_pod import CAPTURE, INBOUND, L_INBOUND, L_OUTBOUND, OUTBOUND

pytestmark = pytest.mark.requires_root

FLAVOR = podlab.NATIVE_NFT


def nft_tables(pod: podlab.RunningPod) -> dict[str, str]:
    """The pod's inet tables as nft lists them."""
    return nft.split_tables(shell.sh("nft", "list", "ruleset", "inet", ns=pod.ns).stdout)


def iptables_nat(pod: podlab.RunningPod) -> str:
    return shell.sh("iptables-nft-save", "-t", "nat", ns=pod.ns).stdout


def test_inbound_is_carried_by_envoy_to_the_app(webhook: WebhookProcess) -> None:
    with podlab.run_pod(inject(webhook, make_pod()), FLAVOR) as pod:
        tables = nft_tables(pod)
        ipt = iptables_nat(pod)
        nat = pod.nat_rules()
        before = pod.envoy_stats()
        body = pod.client_get(8080)
        after = pod.envoy_stats()
        hosts = pod.upstream_hosts("InboundPassthroughCluster")
    assert set(tables) == {"istio-proxy-nat"} and "redirect to :15006" in tables["istio-proxy-nat"]
    assert "table inet istio-proxy-nat" in nat and "redirect to :15001" in nat
    assert "ISTIO" not in ipt  # the capture is native nftables only
    assert body.startswith("name=web ") and traffic.peer_of(body) == "127.0.0.6"
    assert delta(before, after, *CAPTURE) == {INBOUND: 1, L_INBOUND: 1, OUTBOUND: 0, L_OUTBOUND: 0}
    assert hosts == {f"{pod.ip}:8080": 1}


def test_outbound_is_carried_by_envoy_without_a_loop(webhook: WebhookProcess) -> None:
    with podlab.run_pod(inject(webhook, make_pod()), FLAVOR) as pod:
        pod.start_client_server(9090)
        before = pod.envoy_stats()
        res = pod.pod_request(pod.client_ip, 9090)
        after = pod.envoy_stats()
        hosts = pod.upstream_hosts("PassthroughCluster")
        direct = pod.pod_request(pod.client_ip, 9090, uid=1337)
        after_direct = pod.envoy_stats()
    assert res.status == 200 and res.body.startswith("name=client "), res
    assert traffic.peer_of(res.body) == pod.ip
    assert delta(before, after, *CAPTURE) == {OUTBOUND: 1, L_OUTBOUND: 1, INBOUND: 0, L_INBOUND: 0}
    assert res.seconds < 1.0
    assert hosts == {f"{pod.client_ip}:9090": 1}
    assert direct.status == 200 and delta(after, after_direct, *CAPTURE) == dict.fromkeys(CAPTURE, 0)


def test_excluded_ports_and_ranges_bypass_envoy(webhook: WebhookProcess) -> None:
    annotations = {
        "traffic.sidecar.istio.io/excludeInboundPorts": "8080",
        "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.89.1.0/24",
    }
    with podlab.run_pod(inject(webhook, make_pod(annotations=annotations)), FLAVOR) as pod:
        outside = pod.add_client_address("10.89.1.1")
        pod.start_client_server(9090)
        before = pod.envoy_stats()
        inbound = pod.client_get(8080)
        outbound = pod.pod_get(outside, 9090)
        ready = pod.client_get(15021, "/healthz/ready")
        after = pod.envoy_stats()
        captured = pod.pod_get(pod.client_ip, 9090)  # the control: not excluded, so captured
        after_control = pod.envoy_stats()
        nat = nft_tables(pod)["istio-proxy-nat"]
    assert "ip daddr 10.89.1.0/24 counter" in nat and "tcp dport 8080 counter" in nat
    assert traffic.peer_of(inbound) == pod.client_ip
    assert outbound.startswith("name=client ") and traffic.peer_of(outbound) == pod.ip
    assert ready.strip() == "LIVE"
    assert delta(before, after, *CAPTURE) == dict.fromkeys(CAPTURE, 0)
    assert captured.startswith("name=client ") and delta(after, after_control, OUTBOUND) == {OUTBOUND: 1}


def test_a_second_init_run_is_a_noop_and_traffic_is_still_captured(webhook: WebhookProcess) -> None:
    with podlab.run_pod(inject(webhook, make_pod()), FLAVOR) as pod:
        listing = shell.sh("nft", "list", "ruleset", ns=pod.ns).stdout
        again = pod.run_init()
        listing_again = shell.sh("nft", "list", "ruleset", ns=pod.ns).stdout
        before = pod.envoy_stats()
        body = pod.client_get(8080)
        after = pod.envoy_stats()
    assert again.returncode == 0, again.stderr
    assert "backend: native nftables" in again.stderr and "already in place" in again.stderr
    assert listing_again == listing  # untouched: same rules, same counters
    assert listing.count("jump istio-inbound") == 1 and listing.count("jump istio-output") == 1
    assert traffic.peer_of(body) == "127.0.0.6" and delta(before, after, INBOUND) == {INBOUND: 1}
