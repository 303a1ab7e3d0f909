"""The CNI protocol, the capture decision, the conflist edit and the repair loop's choices: pure functions over
plain data (the repair loop against the in-test API server's real REST paths)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lab import cni, netlab
from netinit_cni import install
from netinit_cni.decide import decide
from netinit_cni.kube import HttpPods, KubeError
from netinit_cni.protocol import CniError, Code, Settings, add_result, parse_call
from netinit_cni.repair import Repairer, validation_failed
from tests.support.kube_server import running

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0"}
PREV = {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]}


def _conf(**kw: Any) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "netinit-cni", "prevResult": PREV, **kw}).encode()


def _code(env: dict[str, str], stdin: bytes) -> tuple[Code, str, str]:
    with pytest.raises(CniError) as e:
        parse_call(env, stdin)
    return e.value.code, e.value.msg, e.value.details


def test_a_call_is_parsed_and_add_answers_with_the_previous_result() -> None:
    call = parse_call({**ENV, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart"}, _conf())
    assert call.pod == ("shop", "cart") and call.netns == "/run/netns/x"
    assert call.settings == Settings()
    assert add_result(call) == PREV
    old = parse_call(ENV, _conf(cniVersion="0.4.0"))
    assert add_result(old)["cniVersion"] == "0.4.0"  # the answer speaks the config's version


def test_podman_names_carry_the_namespace() -> None:
    call = parse_call({**ENV, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=shop_cart"}, _conf())
    assert call.pod == ("shop", "cart")
    assert parse_call({**ENV, "CNI_ARGS": "K8S_POD_NAME=cart"}, _conf()).pod is None


@pytest.mark.parametrize(
    ("env", "stdin", "code", "field"),
    [
        ({**ENV, "CNI_COMMAND": "GET"}, _conf(), Code.INVALID_ENV, "CNI_COMMAND"),
        ({k: v for k, v in ENV.items() if k != "CNI_NETNS"}, _conf(), Code.INVALID_ENV, "CNI_NETNS"),
        ({k: v for k, v in ENV.items() if k != "CNI_CONTAINERID"}, _conf(), Code.INVALID_ENV, "CNI_CONTAINERID"),
        ({**ENV, "CNI_ARGS": "K8S_POD_NAME"}, _conf(), Code.INVALID_ENV, "CNI_ARGS"),
        (ENV, b"[1]", Code.DECODE_FAILURE, "stdin"),
        (ENV, b"{", Code.DECODE_FAILURE, "stdin"),
        (ENV, _conf(cniVersion="0.2.0"), Code.INCOMPATIBLE_VERSION, "cniVersion"),
        (
            ENV,
            json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "t"}).encode(),
            Code.INVALID_CONFIG,
            "prevResult",
        ),
        (ENV, _conf(prevResult=[]), Code.INVALID_CONFIG, "prevResult"),
        (ENV, _conf(name=""), Code.INVALID_CONFIG, "name"),
        (ENV, _conf(kubernetesTimeoutSeconds=0), Code.INVALID_CONFIG, "kubernetesTimeoutSeconds"),
        (ENV, _conf(validate="yes"), Code.INVALID_CONFIG, "validate"),
    ],
)
def test_bad_calls_name_the_field(env: dict[str, str], stdin: bytes, code: Code, field: str) -> None:
    got, msg, details = _code(env, stdin)
    assert got == code and field in msg + details


def test_del_needs_no_namespace_and_version_needs_nothing() -> None:
    call = parse_call({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "abc"}, _conf())
    assert call.command == "DEL" and call.netns == ""
    assert parse_call({"CNI_COMMAND": "VERSION"}, b"").version == "1.0.0"


S = Settings()


def test_decide_takes_the_validation_containers_flags() -> None:
    d = decide(cni.cni_mode_pod("cart", "shop"), "shop", S)
    assert d.capture and list(d.args) == list(netlab.SIDECAR_ARGS)  # --run-validation --skip-rule-apply stripped


@pytest.mark.parametrize(
    ("pod", "namespace", "reason"),
    [
        (cni.cni_mode_pod("a", "kube-system"), "kube-system", "excluded"),
        (cni.cni_mode_pod("a", annotations={"sidecar.istio.io/inject": "False"}), "default", "inject: false"),
        (cni.cni_mode_pod("a", injected=False), "default", "not injected"),
        (cni.cni_mode_pod("a", annotations={"sidecar.istio.io/interceptionMode": "NONE"}), "default", "NONE"),
    ],
)
def test_decide_skips_with_a_reason(pod: dict[str, Any], namespace: str, reason: str) -> None:
    d = decide(pod, namespace, S)
    assert not d.capture and reason in d.reason


def test_a_pod_with_istio_init_programs_itself() -> None:
    pod = cni.cni_mode_pod("a")
    pod["spec"]["initContainers"][0]["name"] = "istio-init"
    d = decide(pod, "default", S)
    assert not d.capture and "istio-init" in d.reason


@pytest.mark.parametrize("extra", [["--network-namespace", "x"], ["--cleanup-only"], ["--dry-run"], ["--pid", "1"]])
def test_flags_that_reach_beyond_the_pod_are_refused(extra: list[str]) -> None:
    with pytest.raises(CniError) as e:
        decide(cni.cni_mode_pod("a", capture_args=[*netlab.SIDECAR_ARGS, *extra]), "default", S)
    assert e.value.code == Code.POD_REFUSED and extra[0] in e.value.msg


def test_only_netinits_own_env_reaches_the_node() -> None:
    pod = cni.cni_mode_pod("a")
    pod["spec"]["initContainers"][0]["env"] = [
        {"name": "LD_PRELOAD", "value": "/tmp/evil.so"},
        {"name": "PATH", "value": "/tmp"},
        {"name": "ISTIO_META_DNS_CAPTURE", "value": "true"},
    ]
    d = decide(pod, "default", S)
    assert dict(d.env) == {"ISTIO_META_DNS_CAPTURE": "true"}


def test_unparseable_flags_are_refused() -> None:
    with pytest.raises(CniError) as e:
        decide(cni.cni_mode_pod("a", capture_args=["--no-such-flag"]), "default", S)
    assert e.value.code == Code.POD_REFUSED and "--no-such-flag" in e.value.msg


PLUGIN = {"type": "netinit-cni", "agentSocket": "/run/a.sock"}
BRIDGE = {"cniVersion": "1.0.0", "name": "k8s", "plugins": [{"type": "bridge"}, {"type": "portmap"}]}


def test_conflist_edit_chains_last_once_and_comes_out_cleanly() -> None:
    once = install.with_plugin(BRIDGE, PLUGIN)
    assert [p["type"] for p in once["plugins"]] == ["bridge", "portmap", "netinit-cni"]
    moved = install.with_plugin({**BRIDGE, "plugins": [PLUGIN, *BRIDGE["plugins"]]}, PLUGIN)
    assert [p["type"] for p in moved["plugins"]] == ["bridge", "portmap", "netinit-cni"]
    assert install.with_plugin(once, PLUGIN) == once
    assert install.without_plugin(once) == BRIDGE
    single = install.with_plugin({"cniVersion": "0.4.0", "name": "k", "type": "bridge", "bridge": "cni0"}, PLUGIN)
    assert single == {"cniVersion": "0.4.0", "name": "k", "plugins": [{"type": "bridge", "bridge": "cni0"}, PLUGIN]}


def test_install_writes_atomically_converts_conf_and_uninstalls(tmp_path: Path) -> None:
    conf_dir, bin_dir, shim = tmp_path / "net.d", tmp_path / "bin", tmp_path / "shim"
    conf_dir.mkdir()
    shim.write_bytes(b"\x7fELF")
    (conf_dir / "10-bridge.conf").write_text(json.dumps({"cniVersion": "1.0.0", "name": "k", "type": "bridge"}))
    (conf_dir / "99-other.conflist").write_text(json.dumps(BRIDGE))
    assert install.install_binary(shim, bin_dir).read_bytes() == b"\x7fELF"
    assert "converted 10-bridge.conf" in (install.ensure(conf_dir, PLUGIN) or "")
    assert sorted(p.name for p in conf_dir.iterdir()) == ["10-bridge.conflist", "99-other.conflist"]
    assert install.ensure(conf_dir, PLUGIN) is None  # already chained: not rewritten
    # another component rewrites the file: the next pass puts the plugin back
    (conf_dir / "10-bridge.conflist").write_text(json.dumps(BRIDGE))
    assert install.ensure(conf_dir, PLUGIN)
    assert json.loads((conf_dir / "10-bridge.conflist").read_text())["plugins"][-1] == PLUGIN
    (conf_dir / "10-bridge.conflist").write_text("{broken")
    with pytest.raises(ValueError, match="not JSON"):
        install.ensure(conf_dir, PLUGIN)
    (conf_dir / "10-bridge.conflist").write_text(json.dumps(install.with_plugin(BRIDGE, PLUGIN)))
    done = install.uninstall(conf_dir, bin_dir)
    assert json.loads((conf_dir / "10-bridge.conflist").read_text()) == BRIDGE
    assert not (bin_dir / "netinit-cni").exists() and len(done) == 2
    assert not [p for p in conf_dir.iterdir() if p.name.startswith(".")]  # no temp files left


def _failed(name: str, uid: str, owned: bool = True, code: int = 126) -> dict[str, Any]:
    pod = cni.cni_mode_pod(name, "shop", node="node-1")
    pod["metadata"]["uid"] = uid
    if owned:
        pod["metadata"]["ownerReferences"] = [{"kind": "ReplicaSet", "name": "rs", "controller": True, "uid": "r"}]
    last = {"terminated": {"exitCode": code}}
    status = {"name": "istio-validation", "restartCount": 3, "lastState": last, "state": {"waiting": {}}}
    pod["status"] = {"initContainerStatuses": [status]}
    return pod


def test_validation_failed_reads_the_init_status() -> None:
    assert validation_failed(_failed("a", "1"))
    assert not validation_failed(_failed("a", "1", code=1))
    assert not validation_failed(cni.cni_mode_pod("a"))


def test_repair_deletes_failed_owned_pods_once_within_a_budget() -> None:
    logs: list[dict[str, Any]] = []
    now = [0.0]
    with running() as kube:
        for i in range(4):
            kube.add_pod("shop", _failed(f"p{i}", f"u{i}"))
        kube.add_pod("shop", _failed("bare", "ub", owned=False))
        kube.add_pod("shop", cni.cni_mode_pod("fine", "shop", node="node-1"))
        kube.add_pod("shop", {**_failed("elsewhere", "ue"), "spec": {"nodeName": "node-2"}})
        rep = Repairer(lambda: HttpPods(kube.url), "node-1", lambda **f: logs.append(f), max_per_minute=3,
                       clock=lambda: now[0])  # fmt: skip
        first = rep.run_once()
        assert len(first) == 3 and kube.deleted_pods == [("shop", n.split("/")[1]) for n in first]
        assert any(line["outcome"] == "repair-deferred" for line in logs)
        assert any(line["outcome"] == "repair-skipped" and line["pod"] == "shop/bare" for line in logs)
        assert rep.run_once() == []  # the budget holds within the minute
        now[0] = 61.0
        assert len(rep.run_once()) == 1
        assert ("shop", "bare") not in kube.deleted_pods and ("shop", "fine") not in kube.deleted_pods
        assert ("shop", "elsewhere") not in kube.deleted_pods
        assert rep.run_once() == []


def test_kube_errors_are_bounded_and_named() -> None:
    with running() as kube:
        kube.outage = [500]
        with pytest.raises(KubeError, match="500"):
            HttpPods(kube.url, timeout=1).get("shop", "cart")
        assert HttpPods(kube.url).get("shop", "ghost") is None
    with pytest.raises(KubeError):
        HttpPods("http://127.0.0.1:9", timeout=1).get("shop", "cart")
