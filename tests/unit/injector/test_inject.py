"""inject(): refusals, template selection, native sidecar resolution, un-injection and the patch."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from injector.core import annotations as keys
from injector.core.config import load_config
from injector.core.inject import inject, uninject
from injector.core.render import canonical_service, workload_of
from injector.core.request import Request, Workload
from injector.errors import AnnotationError, Refused, TemplateError

CFG = load_config()
DOC_ANNOTATIONS = (Path(__file__).resolve().parents[3] / "docs" / "annotations.md").read_text()


def pod(annotations: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns", "annotations": annotations or {}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }
    p["spec"].update(extra)
    return p


def run(p: dict[str, Any], **kw: Any) -> Any:
    return inject(Request(pod=p, namespace="ns", config=kw.pop("config", CFG), **kw))


BAD = [
    (keys.INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/33"),
    (keys.INCLUDE_OUTBOUND_IP_RANGES, "*,10.0.0.0/8"),
    (keys.EXCLUDE_OUTBOUND_IP_RANGES, "*"),
    (keys.INCLUDE_INBOUND_PORTS, "80,http"),
    (keys.EXCLUDE_INBOUND_PORTS, "70000"),
    (keys.INCLUDE_OUTBOUND_PORTS, "0"),
    (keys.EXCLUDE_OUTBOUND_PORTS, "2000-1000"),
    (keys.EXCLUDE_INTERFACES, "eth0;reboot"),
    # Interface names istio-init refuses (they were admitted, and the pod then sat in Init:Error).
    (keys.KUBEVIRT_INTERFACES, "veth@1"),
    (keys.EXCLUDE_INTERFACES, "1eth"),
    (keys.REROUTE_VIRTUAL_INTERFACES, "net+1"),
    (keys.KUBEVIRT_INTERFACES, "a-very-long-interface-name"),
    (keys.REROUTE_VIRTUAL_INTERFACES, "net 1"),
    (keys.INTERCEPTION_MODE, "redirect"),
    (keys.PROXY_IMAGE, "proxy image"),
    (keys.PROXY_IMAGE, "proxy\n  command: [sh]"),
    (keys.PROXY_CPU, "lots"),
    (keys.PROXY_MEMORY, "128Mi\n"),
    (keys.PROXY_CPU_LIMIT, "-1"),
    (keys.PROXY_MEMORY_LIMIT, "1GB"),
    (keys.NATIVE_SIDECAR, "yes"),
    (keys.REWRITE_PROBES, "maybe"),
    (keys.LOG_LEVEL, "verbose"),
    (keys.COMPONENT_LOG_LEVEL, "upstream=debug"),
    (keys.AGENT_LOG_LEVEL, "default:chatty"),
    (keys.USER_VOLUME, "[1, 2]"),
    (keys.USER_VOLUME, '{"Bad_Name": {"emptyDir": {}}}'),
    (keys.USER_VOLUME_MOUNT, '{"certs": {"readOnly": true}}'),
    (keys.USER_VOLUME_MOUNT, "{not json"),
    (keys.BOOTSTRAP_OVERRIDE, "My_Bootstrap"),
    (keys.STATUS_PORT, "65536"),
    (keys.STATUS_PORT, "abc"),
    (keys.STATUS_PORT, "\u00b2"),  # a digit to str.isdigit(), not to int(): found by the hardening property test
    (keys.EXCLUDE_INBOUND_PORTS, "80,9\u00b2"),
    (keys.READINESS_INITIAL_DELAY, "-1"),
    (keys.READINESS_PERIOD, "0"),
    (keys.READINESS_FAILURE_THRESHOLD, "1.5"),
    (keys.PROXY_CONFIG, "holdApplicationUntilProxyStarts: yes please"),
    (keys.PROXY_CONFIG, "holdApplicationUntilProxyStart: true"),
    (keys.PROXY_CONFIG, "interceptionMode: BOGUS"),
    (keys.PROXY_CONFIG, "proxyMetadata: {PORT: 80}"),
    (keys.PROXY_CONFIG, "[1, 2]"),
    (keys.PROMETHEUS_MERGE, "sometimes"),
    (keys.TEMPLATES, "sidecar,../etc"),
]


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n.split('/')[-1]}={v!r}" for n, v in BAD])
def test_bad_annotations_refuse_the_pod_naming_annotation_and_value(name: str, value: str) -> None:
    with pytest.raises(AnnotationError) as e:
        run(pod({name: value}))
    assert e.value.name == name
    assert name in str(e.value)
    assert repr(value[:77]).strip("'")[:20] in str(e.value)


GOOD = [
    (keys.INCLUDE_OUTBOUND_IP_RANGES, " 10.0.0.0/8 , fd00::/8 ", ["-i", "10.0.0.0/8,fd00::/8"]),
    (keys.INCLUDE_OUTBOUND_IP_RANGES, "", ["-i", ""]),
    (keys.EXCLUDE_INBOUND_PORTS, "15020,9000", ["-d", "15090,15021,15020,9000"]),
    (keys.STATUS_PORT, "0", ["-d", "15090,15021"]),
    (keys.INTERCEPTION_MODE, "TPROXY", ["-m", "TPROXY"]),
    (keys.PROXY_CONFIG, '{"interceptionMode": "TPROXY"}', ["-m", "TPROXY"]),
    (keys.KUBEVIRT_INTERFACES, "vnet0", ["-k", "vnet0"]),
]


@pytest.mark.parametrize(("name", "value", "args"), GOOD, ids=[f"{n.split('/')[-1]}={v!r}" for n, v, _ in GOOD])
def test_annotations_reach_netinit_flags(name: str, value: str, args: list[str]) -> None:
    r = run(pod({name: value, keys.TEMPLATES: "sidecar"}))
    init = next(c for c in r.pod["spec"]["initContainers"] if c["name"] == "istio-init")
    flags = init["args"]
    i = flags.index(args[0])
    assert flags[i : i + 2] == args


def test_interception_annotation_beats_proxy_config() -> None:
    r = run(pod({keys.INTERCEPTION_MODE: "REDIRECT", keys.PROXY_CONFIG: "interceptionMode: TPROXY"}))
    assert "REDIRECT" in r.pod["spec"]["initContainers"][0]["args"]


def test_unknown_template_lists_known_ones() -> None:
    with pytest.raises(TemplateError, match=r"'nope' not found; have envoy, sidecar"):
        run(pod({keys.TEMPLATES: "sidecar,nope"}))


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("gateway", "gateway chart or the Gateway API"),
        ("grpc-agent", "proxyless gRPC"),
        ("grpc-simple", "proxyless gRPC"),
        ("spire", "csi.spiffe.io"),
    ],
)
def test_istios_other_templates_are_refused_with_the_reason_and_the_supported_ones(name: str, why: str) -> None:
    with pytest.raises(TemplateError) as e:
        run(pod({keys.TEMPLATES: f"sidecar,{name}"}))
    message = str(e.value)
    assert f"requested template {name!r} is one of Istio's templates and is not supported here: " in message
    assert why in message
    assert message.endswith("; supported templates: envoy, sidecar")
    assert f"`{name}`" in DOC_ANNOTATIONS  # docs/annotations.md says so too


def test_a_configured_template_may_take_an_istio_name() -> None:
    spire = "spec:\n  volumes:\n  - {name: workload-socket, csi: {driver: csi.spiffe.io, readOnly: true}}\n"
    cfg = replace(CFG, templates={**CFG.templates, "spire": spire})
    r = run(pod({keys.TEMPLATES: "sidecar,spire"}), config=cfg)
    socket = next(v for v in r.pod["spec"]["volumes"] if v["name"] == "workload-socket")
    assert socket["csi"] == {"driver": "csi.spiffe.io", "readOnly": True}


def test_partials_are_not_selectable() -> None:
    with pytest.raises(AnnotationError, match="'_common' is not a template name"):
        run(pod({keys.TEMPLATES: "_common"}))
    with pytest.raises(TemplateError, match="'_common' not found"):
        run(pod(), config=replace(CFG, default_templates=("_common",)))


def test_envoy_template_refuses_tproxy() -> None:
    with pytest.raises(TemplateError, match="TPROXY needs the sidecar template"):
        run(pod({keys.INTERCEPTION_MODE: "TPROXY"}))


def test_template_that_renders_garbage_is_refused() -> None:
    cfg = replace(CFG, templates={**CFG.templates, "broken": "spec: [unclosed"}, default_templates=("broken",))
    with pytest.raises(TemplateError, match="did not render valid YAML"):
        run(pod(), config=cfg)
    cfg = replace(CFG, templates={**CFG.templates, "odd": "kind: Pod"}, default_templates=("odd",))
    with pytest.raises(TemplateError, match="only metadata and spec"):
        run(pod(), config=cfg)


def test_refusal_happens_before_anything_is_rendered() -> None:
    # A bad annotation and an unknown template: the annotation is reported (validation comes first).
    with pytest.raises(AnnotationError):
        run(pod({keys.PROXY_CPU: "x", keys.TEMPLATES: "nope"}))
    assert issubclass(AnnotationError, Refused) and issubclass(TemplateError, Refused)


@pytest.mark.parametrize(
    ("mode", "annotation", "version", "native"),
    [
        ("auto", None, None, False),
        ("auto", None, (1, 28), False),
        ("auto", None, (1, 29), True),
        ("auto", None, (1, 33), True),
        ("true", None, None, True),
        ("false", None, (1, 33), False),
        ("false", "true", None, True),
        ("true", "false", (1, 33), False),
    ],
)
def test_native_sidecar_resolution(mode: str, annotation: str | None, version: Any, native: bool) -> None:
    ann = {keys.NATIVE_SIDECAR: annotation} if annotation else {}
    r = run(pod(ann), native_sidecar=mode, kube_version=version)
    assert r.native is native
    inits = [c["name"] for c in r.pod["spec"]["initContainers"]]
    containers = [c["name"] for c in r.pod["spec"]["containers"]]
    assert ("istio-proxy" in inits) is native
    assert ("istio-proxy" in containers) is not native


def test_uninject_of_injected_pod_gives_back_the_original() -> None:
    original = pod(
        {keys.TEMPLATES: "sidecar", "prometheus.io/port": "9100"},
        initContainers=[{"name": "setup", "image": "busybox"}],
    )
    original["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": 8080}]
    original["spec"]["containers"][0]["readinessProbe"] = {"httpGet": {"path": "/r", "port": 8080}, "periodSeconds": 3}
    injected = run(original).pod
    assert injected["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] == 15020
    back = uninject(injected)
    assert back["spec"] == original["spec"]
    # The user's scrape port is back and ours are gone; labels and default-container stay (harmless, and
    # re-injection sets them to the same values).
    ann = back["metadata"]["annotations"]
    assert ann["prometheus.io/port"] == "9100"
    assert "prometheus.io/path" not in ann and "prometheus.io/scrape" not in ann
    assert keys.STATUS not in ann


def _sidecar(annotations: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(annotations, istio-proxy env) after injecting a pod with ``annotations`` (sidecar template)."""
    out = run(pod({keys.TEMPLATES: "sidecar", **annotations})).pod
    proxy = next(c for c in out["spec"]["containers"] if c["name"] == "istio-proxy")
    return out["metadata"]["annotations"], {e["name"]: e.get("value", "") for e in proxy["env"]}


@pytest.mark.parametrize(
    "opt_out",
    [{"prometheus.io/scrape": "false"}, {"prometheus.io.scrape": "false"}, {"prometheus.io/scrape": "0"},
     {"prometheus-io/scrape": "F"}],
)  # fmt: skip
def test_prometheus_opt_out_in_any_spelling_leaves_the_annotations(opt_out: dict[str, str]) -> None:
    """Istio matches prometheus keys after mapping every non [A-Za-z0-9_] character to '_', and the scrape value
    with Go's ParseBool."""
    ann, env = _sidecar(opt_out)
    assert {k: v for k, v in ann.items() if "prometheus" in k and "istio" not in k} == opt_out
    assert "ISTIO_PROMETHEUS_ANNOTATIONS" not in env


def test_prometheus_merge_takes_every_spelling_and_writes_istio_keys() -> None:
    ann, env = _sidecar({"prometheus.io.scrape": "true", "prometheus.io.port": "9100", "prometheus-io/path": "/m"})
    assert not [k for k in ann if k.startswith(("prometheus.io.", "prometheus-io"))]
    assert (ann["prometheus.io/port"], ann["prometheus.io/path"], ann["prometheus.io/scrape"]) == (
        "15020", "/stats/prometheus", "true",
    )  # fmt: skip
    assert json.loads(env["ISTIO_PROMETHEUS_ANNOTATIONS"]) == {"scrape": "true", "path": "/m", "port": "9100"}


def test_prometheus_merge_without_app_annotations_sets_no_env() -> None:
    ann, env = _sidecar({})
    assert ann["prometheus.io/port"] == "15020" and "ISTIO_PROMETHEUS_ANNOTATIONS" not in env


def test_prometheus_port_already_on_the_status_port_is_left_alone() -> None:
    ann, env = _sidecar({"prometheus.io/port": "15020", "prometheus.io/path": "/custom"})
    assert ann["prometheus.io/path"] == "/custom" and "prometheus.io/scrape" not in ann
    assert "ISTIO_PROMETHEUS_ANNOTATIONS" not in env


def test_prometheus_port_follows_the_status_port_annotation() -> None:
    """Deliberate difference (docs/compat.md): Istio points prometheus.io/port at the mesh default status port
    (15020) even when status.sidecar.istio.io/port moves the agent elsewhere, which scrapes a closed port; here
    it follows the annotation."""
    ann, _ = _sidecar({keys.STATUS_PORT: "15099"})
    assert ann["prometheus.io/port"] == "15099"


def test_uninject_leaves_plain_pods_alone() -> None:
    p = pod()
    assert uninject(p) == p


def test_broken_status_annotation_is_refused() -> None:
    with pytest.raises(AnnotationError, match=r"sidecar\.istio\.io/status"):
        run(pod({keys.STATUS: "not json"}))


def test_patch_applies_to_the_original_and_leaves_it_untouched() -> None:
    original = pod({keys.TEMPLATES: "sidecar"})
    original["metadata"]["managedFields"] = [{"manager": "kubectl", "operation": "Update"}]
    before = copy.deepcopy(original)
    r = run(original)
    assert original == before
    assert jsonpatch.apply_patch(original, r.patch) == r.pod
    assert not any(op["path"].startswith("/metadata/managedFields") for op in r.patch)


def test_reinjection_yields_an_empty_patch() -> None:
    first = run(pod({keys.TEMPLATES: "sidecar"})).pod
    again = run(first)
    assert again.pod == first
    assert again.patch == []


def test_proxy_env_from_the_webhook_path_wins() -> None:
    r = run(pod({keys.TEMPLATES: "sidecar"}), proxy_env={"ISTIO_META_CLUSTER_ID": "c2", "ISTIO_META_NETWORK": "n2"})
    proxy = next(c for c in r.pod["spec"]["containers"] if c["name"] == "istio-proxy")
    env = {e["name"]: e.get("value") for e in proxy["env"]}
    assert env["ISTIO_META_CLUSTER_ID"] == "c2"
    assert env["ISTIO_META_NETWORK"] == "n2"
    assert r.pod["metadata"]["labels"]["topology.istio.io/network"] == "n2"


def test_workload_of_controller_owned_pods() -> None:
    def owned(kind: str, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        ref = {"kind": kind, "name": name, "apiVersion": "apps/v1", "controller": True, "uid": "u"}
        return {"metadata": {"generateName": name + "-", "labels": labels or {}, "ownerReferences": [ref]}}

    assert workload_of(owned("ReplicaSet", "web-7d4b9c", {"pod-template-hash": "7d4b9c"}), "ns") == Workload(
        "web", "ns", "Deployment", "apps/v1"
    )
    assert workload_of(owned("ReplicaSet", "rs"), "ns") == Workload("rs", "ns", "ReplicaSet", "apps/v1")
    assert workload_of(owned("StatefulSet", "db"), "ns") == Workload("db", "ns", "StatefulSet", "apps/v1")
    assert workload_of(owned("Job", "nightly-29123456"), "ns").kind == "CronJob"
    assert workload_of(owned("Job", "nightly-12345678901"), "ns").kind == "Job"  # Istio: 8-10 digits only
    rollout = owned("ReplicaSet", "canary-5f6d", {"rollouts-pod-template-hash": "5f6d"})
    assert workload_of(rollout, "ns") == Workload("canary", "ns", "Rollout", "v1alpha1")
    dc = owned("ReplicationController", "hello-3", {"deploymentconfig": "hello"})
    assert workload_of(dc, "ns").name == "hello" and workload_of(dc, "ns").kind == "DeploymentConfig"
    assert workload_of({"metadata": {"name": "solo"}}, "ns") == Workload("solo", "ns")
    assert workload_of({"metadata": {"generateName": "gen-"}}, "ns").name == "gen"


def test_canonical_names_fall_back_and_fit_a_label() -> None:
    assert canonical_service({"app": "a", "version": "v1"}, "w") == ("a", "v1")
    assert canonical_service({"app.kubernetes.io/name": "n", "app": "a"}, "w") == ("n", "latest")
    name, _ = canonical_service({}, "x" * 62 + "-y" * 10)
    assert len(name) <= 63 and name[-1].isalnum()


def test_custom_controller_pod_takes_the_controller_name_cut_to_63() -> None:
    """Istio's golden truncate-canonical-name-custom-controller-pod: the canonical name is the controller's name cut
    to 63 characters with the trailing '-' dropped; the workload name keeps all of it."""
    owner = "helloworld-helloworld-helloworld-helloworld-helloworld-hellowo-ld"  # 66 characters
    p = pod({keys.TEMPLATES: "sidecar"})
    p["metadata"] = {"generateName": "helloworld-", "namespace": "ns",
                     "annotations": p["metadata"]["annotations"],
                     "ownerReferences": [{"apiVersion": "foo/v1", "kind": "Bar", "name": owner, "controller": True,
                                          "uid": "u"}]}  # fmt: skip
    out = run(p).pod
    assert out["metadata"]["labels"]["service.istio.io/canonical-name"] == owner[:62]
    proxy = next(c for c in out["spec"]["containers"] if c["name"] == "istio-proxy")
    env = {e["name"]: e.get("value") for e in proxy["env"]}
    assert env["ISTIO_META_WORKLOAD_NAME"] == owner
    assert env["ISTIO_META_OWNER"] == f"kubernetes://apis/foo/v1/namespaces/ns/bars/{owner}"
