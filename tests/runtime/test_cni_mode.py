"""CNI mode as it ships, with a real container runtime invoking the plugin: podman's CNI backend runs a conflist
that chains the static ``netinit-cni`` plugin after Debian's ``bridge`` (lab.runtime.cni_node); podman calls it
with each pod's namespace when it creates the sandbox, before any container of the pod exists; the node agent
(the DaemonSet's container from manifests/overlays/cni, run by podman with its securityContext and host paths;
its installer puts the plugin on the node) reads the pod from the in-test API server and programs the namespace.

The pods are admitted by the webhook container with Istio's ``pilot.cni.enabled: true``, so they carry
``istio-validation`` (uid 1337, no capabilities) instead of ``istio-init``; the podman kubelet runs them as
written. Nothing in any pod has NET_ADMIN: the capture comes from the node.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lab import cni
from lab.runtime import cni_node, echo_app, kubelet, podman
from lab.runtime.webhook import WebhookContainer
from lab.shell import LabError
from tests.support.kube_server import FakeKube, running

from .test_pods import INBOUND, OUTBOUND, admit, delta, make_pod

pytestmark = [pytest.mark.requires_podman, pytest.mark.timeout(600)]
CNI_VALUES = {"pilot": {"cni": {"enabled": True}}}
OWNER = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d9c", "uid": "rs-1", "controller": True}]


@pytest.fixture(scope="module")
def cni_webhook(built: podman.Built) -> Iterator[WebhookContainer]:
    with WebhookContainer(built.images, values=CNI_VALUES) as hook:
        yield hook


@pytest.fixture(scope="module")
def outside() -> Iterator[int]:
    """An echo server on the host, reached by pods through their gateway (the CNI bridge's address)."""
    srv = echo_app.serve_in_thread("outside", "0.0.0.0", 0)
    try:
        yield int(srv.server_address[1])
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with running() as fake:
        yield fake


def _store(kube: FakeKube, pod: dict[str, Any], namespace: str = "shop", **meta: Any) -> dict[str, Any]:
    """What the API server stores after admission (and the ReplicaSet controller set as owner)."""
    stored = copy.deepcopy(pod)
    stored["metadata"].update(namespace=namespace, **meta)
    stored["spec"]["nodeName"] = "lab-node"
    kube.add_pod(namespace, stored)
    return stored


def _all(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]


def _captured(p: kubelet.PodmanPod, backend: str) -> bool:
    rules = p.rules("native-nft" if backend == "native-nft" else backend)
    return "istio-proxy-nat" in rules if backend == "native-nft" else "ISTIO_REDIRECT" in rules


def _stable(rules: str) -> str:
    """Rules without their counters (traffic moves them) and iptables-save's timestamps."""
    return re.sub(r"\[\d+:\d+\]|counter packets \d+ bytes \d+|^#.*$", "", rules, flags=re.M)


def _calls(node: cni_node.CniNode, outcome: str) -> list[dict[str, Any]]:
    return [line for line in node.logs() if line.get("outcome") == outcome]


@pytest.mark.parametrize("backend", ["legacy", "nft", "native-nft"])
def test_an_injected_pod_is_captured_by_the_node_with_no_net_admin_anywhere(
    backend: str, built: podman.Built, cni_webhook: WebhookContainer, echo_image: str, outside: int, kube: FakeKube
) -> None:
    pod = admit(cni_webhook, make_pod(echo_image, "web"))
    assert [c["name"] for c in pod["spec"]["initContainers"]][:1] == ["istio-validation"]
    assert "istio-init" not in [c["name"] for c in _all(pod)]
    status = json.loads(pod["metadata"]["annotations"]["sidecar.istio.io/status"])
    assert "istio-validation" in status["initContainers"]
    for c in _all(pod):
        caps = (c.get("securityContext") or {}).get("capabilities") or {}
        assert not caps.get("add"), (c["name"], caps)
    _store(kube, pod)
    with cni_node.cni_node(kube.url, backend, image=built.images["netinit"]) as node:
        with kubelet.run_pod(pod, sandbox_name="shop_web", node_ip=cni_node.GATEWAY) as p:
            added = _calls(node, "captured")
            assert [line["pod"] for line in added] == ["shop/web"], node.logs()
            assert "validation passed" in added[0]["msg"]
            # istio-validation ran first, as uid 1337 with no capabilities, and found the capture in place
            validation = p.init_results["istio-validation"][0]
            assert validation.returncode == 0, validation.stdout + validation.stderr
            for name in p.containers:
                if name != "istio-validation":
                    assert not {"CAP_NET_ADMIN", "CAP_NET_RAW"} & set(p.effective_caps(name)), name
            assert _captured(p, backend)

            before = p.envoy_stats()
            assert p.get(8080, "/inbound").status == 200  # node -> pod IP:8080 -> 15006 -> Envoy -> app
            out = p.exec_get("web", cni_node.GATEWAY, outside, "/outbound")  # app -> host -> 15001 -> Envoy
            assert out.status == 200, out
            moved = delta(before, p.envoy_stats())
            assert moved[INBOUND] >= 1 and moved[OUTBOUND] >= 1, moved

            # The runtime may re-run ADD for the same sandbox: same answer, same rules; CHECK agrees.
            infra = podman.cli("inspect", "-f", "{{.Id}}", p.infra).stdout.strip()
            rules = _stable(p.rules(backend))
            conf = cni.network_config(node.socket, prev_result=cni.prev_result(f"{p.ip}/24", cni_node.GATEWAY))
            netns = f"/run/netns/{p.netns}"
            again = cni.invoke("ADD", conf, netns=netns, container_id=infra, pod=("shop", "web"))
            assert again.returncode == 0 and json.loads(again.stdout)["ips"][0]["address"] == f"{p.ip}/24"
            assert _stable(p.rules(backend)) == rules
            check = cni.invoke("CHECK", conf, netns=netns, container_id=infra, pod=("shop", "web"))
            assert check.returncode == 0, check.stdout
        # pod removal: podman calls DEL, the agent undoes what it recorded
        deleted = _calls(node, "deleted")
        assert deleted and "removed the capture of pod shop/web" in deleted[-1]["msg"], node.logs()
        assert not list((node.workdir / "pods").glob("*.json"))


def test_opted_out_and_kube_system_pods_are_untouched(
    built: podman.Built, cni_webhook: WebhookContainer, echo_image: str, kube: FakeKube
) -> None:
    opted = admit(cni_webhook, make_pod(echo_image, "batch", annotations={"sidecar.istio.io/inject": "false"}),
                  injected=False)  # fmt: skip
    _store(kube, opted)
    system = make_pod(echo_image, "coredns")  # kube-system: the agent must not even ask the API server
    with cni_node.cni_node(kube.url, "legacy", image=built.images["netinit"]) as node:
        with kubelet.run_pod(opted, sandbox_name="shop_batch", node_ip=cni_node.GATEWAY) as p:
            assert p.get(8080, "/").status == 200 and not _captured(p, "legacy") and not _captured(p, "nft")
        with kubelet.run_pod(system, sandbox_name="kube-system_coredns", node_ip=cni_node.GATEWAY) as p:
            assert p.get(8080, "/").status == 200 and not _captured(p, "legacy")
        skipped = {line["pod"]: line["msg"] for line in _calls(node, "skipped")}
        assert "inject: false" in skipped["shop/batch"] and "excluded" in skipped["kube-system/coredns"]
        assert not [r for r in kube.requests if "coredns" in r.path]


def test_agent_down_then_back_repair_recreates_the_pod(
    built: podman.Built, cni_webhook: WebhookContainer, echo_image: str, outside: int, kube: FakeKube
) -> None:
    pod = admit(cni_webhook, make_pod(echo_image, "web"))
    plain = make_pod(echo_image, "plain")
    _store(kube, plain)
    with cni_node.cni_node(kube.url, "nft", agent=False, image=built.images["netinit"]) as node:
        # Agent not there: a pod that needs no capture still starts ...
        with kubelet.run_pod(plain, sandbox_name="shop_plain", node_ip=cni_node.GATEWAY) as p:
            assert p.get(8080, "/").status == 200
        # ... and one that needs capture does not run uncaptured: istio-validation fails with Istio's code.
        _store(kube, pod, ownerReferences=OWNER)
        first_uid = kube.pods[("shop", "web")]["metadata"]["uid"]
        with pytest.raises(LabError, match=r"istio-validation.*exited 126"):
            with kubelet.run_pod(pod, sandbox_name="shop_web", node_ip=cni_node.GATEWAY, ready_timeout=20):
                pytest.fail("the app must not start")
        # The kubelet reports the failure in the pod's status; the agent comes back with its repair loop.
        failed = kube.pods[("shop", "web")]
        failed["status"] = {"initContainerStatuses": [{"name": "istio-validation", "restartCount": 1,
                            "lastState": {"terminated": {"exitCode": 126}}, "state": {"waiting": {}}}]}  # fmt: skip
        node.start_agent(repair=True)
        deadline = time.monotonic() + 15
        while ("shop", "web") not in kube.deleted_pods and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ("shop", "web") in kube.deleted_pods, node.logs()
        assert _calls(node, "repaired")
        # The ReplicaSet recreates it (a new UID); this time the plugin captures it.
        _store(kube, pod, ownerReferences=OWNER)
        assert kube.pods[("shop", "web")]["metadata"]["uid"] != first_uid
        with kubelet.run_pod(pod, sandbox_name="shop_web", node_ip=cni_node.GATEWAY) as p:
            before = p.envoy_stats()
            assert p.exec_get("web", cni_node.GATEWAY, outside, "/").status == 200
            assert delta(before, p.envoy_stats())[OUTBOUND] >= 1
        time.sleep(1.5)  # two more repair passes: the healthy pod is left alone
        assert kube.deleted_pods.count(("shop", "web")) == 1
