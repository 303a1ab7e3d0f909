"""Annotation values that try to break out of their field - newlines, YAML/JSON fragments, template syntax,
control characters, overlong strings - are refused or land as inert data: they never add a key to the pod.

The property: for every single-line annotation and any value, `inject` either refuses with AnnotationError, or
the injected pod has exactly the same set of key paths as with a benign value (values may differ, structure may
not), and the pod still validates against the strict Kubernetes schema.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from injector.core import annotations as keys
from injector.core.config import load_config
from injector.core.inject import inject
from injector.core.request import Request
from injector.errors import AnnotationError

CFG = load_config(env={})
K8S = kubernetes_validate.latest_version()

# annotation -> a benign value (same structure as a valid attack-free value would produce)
SINGLE_LINE = {
    keys.INCLUDE_OUTBOUND_IP_RANGES: "10.0.0.0/8",
    keys.EXCLUDE_OUTBOUND_IP_RANGES: "10.96.0.1/32",
    keys.INCLUDE_INBOUND_PORTS: "8080",
    keys.EXCLUDE_INBOUND_PORTS: "9000",
    keys.INCLUDE_OUTBOUND_PORTS: "5432",
    keys.EXCLUDE_OUTBOUND_PORTS: "3306",
    keys.EXCLUDE_INTERFACES: "eth1",
    keys.KUBEVIRT_INTERFACES: "net1",
    keys.PROXY_IMAGE: "registry.example.com/proxy:1",
    keys.PROXY_CPU: "100m",
    keys.PROXY_MEMORY: "128Mi",
    keys.PROXY_CPU_LIMIT: "1",
    keys.PROXY_MEMORY_LIMIT: "1Gi",
    keys.LOG_LEVEL: "debug",
    keys.COMPONENT_LOG_LEVEL: "upstream:debug",
    keys.AGENT_LOG_LEVEL: "default:info",
    keys.BOOTSTRAP_OVERRIDE: "my-bootstrap",
    keys.STATUS_PORT: "15020",
    keys.READINESS_PERIOD: "5",
}
ATTACKS = st.sampled_from(
    [
        "1\nspec:\n  hostNetwork: true",
        '100m", "privileged": true, "x": "',
        "100m}, securityContext: {privileged: true",
        "{{ values }}",
        "{% for x in range(10) %}x{% endfor %}",
        "debug\r\n--- \nkind: Pod",
        "\x00",
        "a" * 100_000,
        "10.0.0.0/8\n- -j ACCEPT",
        "$(reboot)",
        "'; rm -rf /; '",
        "registry.example.com/proxy:1\n    command: [sh, -c, evil]",
    ]
)
VALUES = ATTACKS | st.text(max_size=60)


def paths(obj: Any, prefix: str = "") -> set[str]:
    """Key paths, with list indices collapsed (list lengths may legitimately differ, e.g. more CIDRs)."""
    if isinstance(obj, dict):
        out = {prefix}
        for k, v in obj.items():
            out |= paths(v, f"{prefix}/{k}")
        return out
    if isinstance(obj, list):
        out = {prefix}
        for v in obj:
            out |= paths(v, f"{prefix}/*")
        return out
    return {prefix}


def injected(annotations: dict[str, str], template: str) -> dict[str, Any]:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "annotations": {keys.TEMPLATES: template, **annotations}},
        "spec": {"containers": [{"name": "app", "image": "a:1"}]},
    }
    return inject(Request(pod=pod, namespace="ns", config=CFG)).pod


def structure(pod: dict[str, Any]) -> set[str]:
    # The annotation itself is echoed in metadata.annotations as data; everything else is structure.
    return {p for p in paths(pod) if not p.startswith("/metadata/annotations/")}


BASELINES = {(n, t): structure(injected({n: v}, t)) for n, v in SINGLE_LINE.items() for t in ("sidecar", "envoy")}


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.sampled_from(sorted(SINGLE_LINE)), VALUES, st.sampled_from(["sidecar", "envoy"]))
def test_annotation_values_cannot_add_structure(name: str, value: str, template: str) -> None:
    try:
        pod = injected({name: value}, template)
    except AnnotationError as e:
        assert e.name == name
        return
    # No path the baseline lacks: a value may take structure away (status port 0 drops the proxy's probes, as in
    # Istio), never add any.
    added = structure(pod) - BASELINES[(name, template)]
    assert not added, f"{name}={value!r} added structure to the pod: {sorted(added)}"
    kubernetes_validate.validate(pod, K8S, strict=True)


@pytest.mark.parametrize("name", sorted(SINGLE_LINE))
@pytest.mark.parametrize(
    "value", ["ok\nspec:\n  hostNetwork: true", "x\x1b[31m", "a" * 70_000], ids=["newline", "escape", "overlong"]
)
def test_the_classic_attacks_are_refused(name: str, value: str) -> None:
    with pytest.raises(AnnotationError) as e:
        injected({name: value}, "sidecar")
    assert e.value.name == name


def test_json_annotations_cannot_smuggle_fields() -> None:
    """userVolume/userVolumeMount are JSON on purpose; a name given inside, or a non-object, is refused."""
    for value in ('{"v": {"name": "other", "emptyDir": {}}}', '{"v": "emptyDir"}', '["v"]', '{"Bad Name": {}}'):
        with pytest.raises(AnnotationError):
            injected({keys.USER_VOLUME: value}, "sidecar")
