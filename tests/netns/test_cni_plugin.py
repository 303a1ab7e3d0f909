"""CNI mode on real namespaces: the static plugin binary, executed as a runtime executes it, talking to the real
node agent over its unix socket, which reads the pod from the in-test API server and programs the namespace with
netinit. Every answer is checked as the runtime would read it (exit code, stdout JSON) and every effect in the
namespace itself (iptables-save, nft, ``netinit verify``)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lab import cni, netlab
from netinit_cni.agent import Agent, serve
from netinit_cni.kube import HttpPods
from netinit_cni.program import BACKENDS, Programmer
from tests.support.kube_server import FakeKube, running

pytestmark = pytest.mark.requires_root
ARGS = list(netlab.SIDECAR_ARGS)
HOST_NETWORK = cni.cni_mode_pod("web", "shop")
HOST_NETWORK["spec"]["hostNetwork"] = True


@dataclass
class Node:
    kube: FakeKube
    socket: str
    state: Path
    backend: str
    logs: list[dict[str, Any]] = field(default_factory=list)


@contextlib.contextmanager
def _agent(tmp: Path, backend: str = "legacy", health_port: int | None = None) -> Iterator[Node]:
    """The in-test API server and the real agent serving its socket on a thread, for the block."""
    with running() as kube:
        node = Node(kube, str(tmp / "agent.sock"), tmp / "pods", backend)
        agent = Agent(lambda t: HttpPods(kube.url, timeout=t), Programmer(node.state, backend),
                      log=lambda **f: node.logs.append(f))  # fmt: skip
        stop = threading.Event()
        kwargs = {"stop": stop, "interval": 0.2, "health_port": health_port}
        t = threading.Thread(target=serve, args=(node.socket, agent), kwargs=kwargs)
        t.start()
        try:
            for _ in range(100):
                if Path(node.socket).exists():
                    break
                stop.wait(0.02)
            yield node
        finally:
            stop.set()
            t.join(5)


@pytest.fixture(params=["legacy", "nft", "native-nft"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Node]:
    with _agent(tmp_path, str(request.param)) as n:
        yield n


@pytest.fixture
def legacy_node(tmp_path: Path) -> Iterator[Node]:
    with _agent(tmp_path) as n:
        yield n


@pytest.fixture
def pod_netns() -> Iterator[str]:
    """A pod's namespace as the bridge plugin leaves it: an address and a default route."""
    with netlab.namespace("cp") as pod, netlab.namespace("cq") as peer:
        netlab.link(pod, "10.85.0.2/24", peer, "10.85.0.1/24")
        netlab.sh("ip", "route", "add", "default", "via", "10.85.0.1", ns=pod)
        yield pod


def _conf(node: Node, version: str = "1.0.0", **plugin: Any) -> dict[str, Any]:
    return cni.network_config(node.socket, version=version, prev_result=cni.prev_result("10.85.0.2/24", "10.85.0.1",
                              version), **plugin)  # fmt: skip


def _add(node: Node, netns: str, pod: tuple[str, str], cid: str = "c0ffee", **kw: Any) -> Any:
    return cni.invoke("ADD", _conf(node, **kw), netns=f"/run/netns/{netns}", pod=pod, container_id=cid)


def _rules(netns: str, backend: str) -> str:
    if backend == "native-nft":
        return netlab.sh("nft", "-s", "list", "ruleset", ns=netns).stdout
    return netlab.normalize_save(netlab.iptables_save(netns, backend))


def _captured(netns: str, backend: str) -> bool:
    text = _rules(netns, backend)
    return "istio-proxy-nat" in text if backend == "native-nft" else "ISTIO_REDIRECT" in text


def _verify(netns: str, backend: str, args: list[str]) -> Any:
    return netlab.run_netinit("verify", "--network-namespace", netns, *BACKENDS[backend], *args)


def test_add_programs_exactly_netinit_rules_passes_the_result_through_and_del_undoes_it(
    node: Node, pod_netns: str
) -> None:
    backend = node.backend
    node.kube.add_pod("shop", cni.cni_mode_pod("cart", "shop"))
    res = _add(node, pod_netns, ("shop", "cart"))
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out == {**cni.prev_result("10.85.0.2/24", "10.85.0.1"), "cniVersion": "1.0.0"}
    verified = _verify(pod_netns, backend, ARGS)
    assert verified.returncode == 0, verified.stdout + verified.stderr  # the plan of the pod's flags, rule by rule
    line = node.logs[-1]
    assert line["outcome"] == "captured" and line["pod"] == "shop/cart" and line["command"] == "ADD"
    assert "validation passed" in line["msg"]  # probed with real connections in the pod's namespace at ADD

    before = _rules(pod_netns, backend)
    again = _add(node, pod_netns, ("shop", "cart"))  # a runtime may retry ADD
    assert again.returncode == 0 and json.loads(again.stdout) == out
    assert _rules(pod_netns, backend) == before

    check = cni.invoke("CHECK", _conf(node), netns=f"/run/netns/{pod_netns}", pod=("shop", "cart"))
    assert check.returncode == 0, check.stdout
    gone = cni.invoke("DEL", _conf(node), netns=f"/run/netns/{pod_netns}", pod=("shop", "cart"))
    assert gone.returncode == 0 and gone.stdout == ""
    assert not _captured(pod_netns, backend)
    assert not list(node.state.glob("*.json"))


def test_check_reports_drift(legacy_node: Node, pod_netns: str) -> None:
    legacy_node.kube.add_pod("shop", cni.cni_mode_pod("cart", "shop"))
    assert _add(legacy_node, pod_netns, ("shop", "cart")).returncode == 0
    netlab.sh("iptables-legacy", "-t", "nat", "-F", "ISTIO_OUTPUT", ns=pod_netns)
    check = cni.invoke("CHECK", _conf(legacy_node), netns=f"/run/netns/{pod_netns}", pod=("shop", "cart"))
    assert check.returncode == 1
    err = json.loads(check.stdout)
    assert err["code"] == 104 and "drifted" in err["msg"] and "ISTIO_OUTPUT" in err["msg"]


def test_del_removes_nothing_it_did_not_add_and_never_fails_for_a_gone_namespace(
    legacy_node: Node, pod_netns: str
) -> None:
    # Rules ADD did not program (an istio-init pod, say): DEL without a record leaves them.
    assert (
        netlab.run_netinit("--network-namespace", pod_netns, "--force-iptables-binary", "legacy", *ARGS).returncode == 0
    )
    gone = cni.invoke("DEL", _conf(legacy_node), netns=f"/run/netns/{pod_netns}", container_id="other")
    assert gone.returncode == 0
    assert _captured(pod_netns, "legacy")
    assert "nothing recorded" in legacy_node.logs[-1]["msg"]
    # ADD, then the namespace disappears before DEL (the runtime tore it down first).
    with netlab.namespace("cg") as short:
        netlab.link(short, "10.86.0.2/24", pod_netns, "10.86.0.1/24")
        netlab.sh("ip", "route", "add", "default", "via", "10.86.0.1", ns=short)
        legacy_node.kube.add_pod("shop", cni.cni_mode_pod("brief", "shop"))
        assert _add(legacy_node, short, ("shop", "brief"), cid="brief1").returncode == 0
        path = f"/run/netns/{short}"
    late = cni.invoke("DEL", _conf(legacy_node), netns=path, container_id="brief1")
    assert late.returncode == 0, late.stdout
    assert "gone" in legacy_node.logs[-1]["msg"]
    assert not (legacy_node.state / "brief1.json").exists()


@pytest.mark.parametrize(
    ("pod", "reason"),
    [
        (cni.cni_mode_pod("web", "shop", annotations={"sidecar.istio.io/inject": "false"}), "inject: false"),
        (cni.cni_mode_pod("web", "shop", injected=False), "not injected"),
        (cni.cni_mode_pod("web", "shop", annotations={"sidecar.istio.io/interceptionMode": "NONE"}), "NONE"),
        (HOST_NETWORK, "hostNetwork"),
    ],
)
def test_pods_that_need_no_capture_are_untouched(
    legacy_node: Node, pod_netns: str, pod: dict[str, Any], reason: str
) -> None:
    legacy_node.kube.add_pod("shop", pod)
    res = _add(legacy_node, pod_netns, ("shop", "web"))
    assert res.returncode == 0, res.stdout
    assert json.loads(res.stdout)["ips"][0]["address"] == "10.85.0.2/24"
    assert not _captured(pod_netns, "legacy") and not _captured(pod_netns, "nft")
    assert legacy_node.logs[-1]["outcome"] == "skipped" and reason in legacy_node.logs[-1]["msg"]


def test_kube_system_starts_without_asking_the_api_server(legacy_node: Node, pod_netns: str) -> None:
    legacy_node.kube.outage = [500] * 5  # the API server is down: kube-system's pods (the API server's) must start
    res = _add(legacy_node, pod_netns, ("kube-system", "coredns-1"))
    assert res.returncode == 0 and not _captured(pod_netns, "legacy")
    assert not [r for r in legacy_node.kube.requests if "coredns" in r.path]


def _error(res: Any) -> dict[str, Any]:
    assert res.returncode == 1, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert isinstance(doc, dict) and doc["cniVersion"]
    return doc


def test_bad_input_gets_a_cni_error_naming_the_field_and_changes_nothing(legacy_node: Node, pod_netns: str) -> None:
    n, ns_path, pod = legacy_node, f"/run/netns/{pod_netns}", ("shop", "cart")
    n.kube.add_pod("shop", cni.cni_mode_pod("cart", "shop"))
    assert _error(cni.invoke("ADD", b"{not json", netns=ns_path, pod=pod))["code"] == 6
    doc = _error(cni.invoke("ADD", {**_conf(n), "cniVersion": "9.9.9"}, netns=ns_path, pod=pod))
    assert doc["code"] == 1 and "9.9.9" in doc["msg"]
    no_prev = {k: v for k, v in _conf(n).items() if k != "prevResult"}
    doc = _error(cni.invoke("ADD", no_prev, netns=ns_path, pod=pod))
    assert doc["code"] == 7 and "prevResult" in doc["msg"]
    doc = _error(cni.invoke("ADD", _conf(n), netns="/run/netns/no-such-ns", pod=pod))
    assert doc["code"] == 4 and "CNI_NETNS" in doc["msg"]
    doc = _error(cni.invoke("ADD", _conf(n), netns=ns_path, pod=("shop", "ghost")))
    assert doc["code"] == 103 and "not known to the API server" in doc["msg"]
    doc = _error(cni.invoke("ADD", _conf(n, excludeNamespaces="kube-system"), netns=ns_path, pod=pod))
    assert doc["code"] == 7 and "excludeNamespaces" in doc["msg"]
    n.kube.add_pod("shop", cni.cni_mode_pod("bad", "shop", capture_args=[*ARGS, "-b", "http"]))
    doc = _error(_add(n, pod_netns, ("shop", "bad")))
    assert doc["code"] == 100 and "http" in doc["msg"]
    n.kube.add_pod(
        "shop", cni.cni_mode_pod("sly", "shop", capture_args=[*ARGS, "--network-namespace", "/proc/1/ns/net"])
    )
    doc = _error(_add(n, pod_netns, ("shop", "sly")))
    assert doc["code"] == 100 and "--network-namespace" in doc["msg"]
    n.kube.outage = [503]
    doc = _error(_add(n, pod_netns, pod))
    assert doc["code"] == 103 and "503" in doc["msg"]
    assert not _captured(pod_netns, "legacy") and not _captured(pod_netns, "nft")
    assert not list(n.state.glob("*.json"))
    errors = [line for line in n.logs if line.get("outcome") == "error"]
    # every call that reached the agent is logged (the shim itself answers the one that is not JSON)
    assert len(errors) == 8 and all(line["msg"] for line in errors)


def test_without_the_agent_the_node_keeps_starting_pods(tmp_path: Path, pod_netns: str) -> None:
    conf = cni.network_config(str(tmp_path / "absent.sock"), version="0.4.0",
                              prev_result=cni.prev_result("10.85.0.2/24", "10.85.0.1", "0.4.0"))  # fmt: skip
    ns_path = f"/run/netns/{pod_netns}"
    add = cni.invoke("ADD", conf, netns=ns_path, pod=("shop", "cart"))
    assert add.returncode == 0 and json.loads(add.stdout) == conf["prevResult"]
    assert "not reachable" in add.stderr and "istio-validation" in add.stderr
    assert not _captured(pod_netns, "legacy") and not _captured(pod_netns, "nft")
    assert cni.invoke("DEL", conf, netns=ns_path).returncode == 0
    assert cni.invoke("CHECK", conf, netns=ns_path).returncode == 0
    version = cni.invoke("VERSION", conf)
    assert version.returncode == 0 and "1.0.0" in json.loads(version.stdout)["supportedVersions"]
    no_prev = {k: v for k, v in conf.items() if k != "prevResult"}
    assert _error(cni.invoke("ADD", no_prev, netns=ns_path))["code"] == 7


def test_version_and_0_4_0_through_the_agent(legacy_node: Node, pod_netns: str) -> None:
    res = cni.invoke("VERSION", {"cniVersion": "0.4.0"})
    assert json.loads(res.stdout) == {"cniVersion": "0.4.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]}
    legacy_node.kube.add_pod("shop", cni.cni_mode_pod("cart", "shop"))
    res = _add(legacy_node, pod_netns, ("shop", "cart"), version="0.4.0")
    assert res.returncode == 0 and json.loads(res.stdout)["cniVersion"] == "0.4.0"
    assert _captured(pod_netns, "legacy")


def test_health_readiness_and_metrics(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    from lab.shell import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with _agent(tmp_path, health_port=port) as n:
        for _ in range(100):
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
                    assert r.status == 200
                    break
            except OSError:
                time.sleep(0.05)
        assert cni.invoke("VERSION", cni.network_config(n.socket)).returncode == 0  # the shim answers this itself
        assert cni.invoke("DEL", cni.network_config(n.socket), container_id="x").returncode == 0
        with urllib.request.urlopen(url + "/metrics", timeout=2) as r:
            assert 'netinit_cni_calls_total{command="DEL",outcome="deleted"} 1' in r.read().decode()
        Path(n.socket).unlink()  # the socket gone: not ready, still alive
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + "/readyz", timeout=2)
        assert e.value.code == 503
        with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
            assert r.status == 200
