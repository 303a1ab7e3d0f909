"""Nothing configurable is silently ignored: every values.yaml key, ProxyConfig field and config.yaml key is in
docs/annotations.md ("Values, ProxyConfig and config: what reads each"), and each one really changes the
injected pod of every built-in template the docs say "yes" for - and changes nothing where they say "no"."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from injector.core import annotations as keys
from injector.core.annotations import read_settings
from injector.core.config import CONFIG_KEYS, DEFAULTS_DIR, InjectorConfig, deep_merge, load_config
from injector.core.inject import inject
from injector.core.policy import decide
from injector.core.render import envoy_concurrency
from injector.core.request import Request
from injector.errors import AnnotationError, TemplateError

DOC = (Path(__file__).resolve().parents[3] / "docs" / "annotations.md").read_text()
CFG = load_config(env={})
TEMPLATES = ("sidecar", "envoy")

# A non-default value for every values.yaml key the docs list, and text that must then be in the output
# (None: the output must just differ).
VALUES: dict[str, tuple[Any, str | None]] = {
    "revision": ("canary", "canary"),
    "pilot.cni.enabled": (True, "istio-validation"),
    "global.hub": ("registry.example/istio", "registry.example/istio/proxyv2"),
    "global.tag": ("1.28.9", "proxyv2:1.28.9"),
    "global.imagePullPolicy": ("Always", '"imagePullPolicy": "Always"'),
    "global.imagePullSecrets": (["regcred"], '"regcred"'),
    "global.istioNamespace": ("mesh-system", "istiod.mesh-system.svc:15012"),
    "global.pilotCertProvider": ("kubernetes", '"kubernetes"'),
    "global.caAddress": ("ca.example:443", "ca.example:443"),
    "global.caName": ("GkeWorkloadCertificate", "workloadcertificates.security.cloud.google.com"),
    "global.trustBundleName": ("my-root", '"my-root"'),
    "global.mountMtlsCerts": (True, "/etc/certs/"),
    "global.logAsJson": (True, "--log_as_json"),
    "global.nativeNftables": (True, "--native-nftables"),
    "global.trustDomain": ("example.org", "example.org"),
    "global.meshID": ("mesh-7", "mesh-7"),
    "global.network": ("net-7", "net-7"),
    "global.multiCluster.clusterName": ("east", '"east"'),
    "global.logging.level": ("default:debug", "--log_output_level=default:debug"),
    "global.sds.token.aud": ("aud-7", "aud-7"),
    "global.sts.servicePort": (15463, "--stsPort=15463"),
    "global.proxy.image": ("proxyv2-custom", "proxyv2-custom"),
    "global.proxy.clusterDomain": ("corp.local", "svc.corp.local"),
    "global.proxy.logLevel": ("debug", "--proxyLogLevel=debug"),
    "global.proxy.componentLogLevel": ("misc:debug", "misc:debug"),
    "global.proxy.statusPort": (15555, "15555"),
    "global.proxy.includeIPRanges": ("10.0.0.0/8", "10.0.0.0/8"),
    "global.proxy.excludeIPRanges": ("10.1.0.0/16", "10.1.0.0/16"),
    "global.proxy.includeInboundPorts": ("8080", None),
    "global.proxy.excludeInboundPorts": ("9999", "9999"),
    "global.proxy.includeOutboundPorts": ("8443", "8443"),
    "global.proxy.excludeOutboundPorts": ("5432", "5432"),
    "global.proxy.readinessInitialDelaySeconds": (7, '"initialDelaySeconds": 7'),
    "global.proxy.readinessPeriodSeconds": (11, '"periodSeconds": 11'),
    "global.proxy.readinessFailureThreshold": (13, '"failureThreshold": 13'),
    "global.proxy.startupProbe.enabled": (False, None),
    "global.proxy.startupProbe.failureThreshold": (77, '"failureThreshold": 77'),
    "global.proxy.holdApplicationUntilProxyStarts": (True, '"postStart"'),
    "global.proxy.privileged": (True, '"privileged": true'),
    "global.proxy.capNetBindService": (True, "NET_BIND_SERVICE"),
    "global.proxy.lifecycle": ({"preStop": {"exec": {"command": ["sleep", "9"]}}}, '"sleep"'),
    "global.proxy.outlierLogPath": ("/dev/stdout", "--outlierLogPath=/dev/stdout"),
    "global.proxy.seccompProfile": ({"type": "Localhost", "localhostProfile": "p.json"}, "p.json"),
    "global.proxy.resources": ({"limits": {"cpu": "3500m"}}, "3500m"),
    "global.proxy_init.forceApplyIptables": (True, "--force-apply"),
    "global.proxy_init.image": ("registry.example/netinit:9", "registry.example/netinit:9"),
    "global.proxy_init.resources": ({"requests": {"cpu": "25m"}}, "25m"),
    "global.envoy.image": ("registry.example/envoy:9", "registry.example/envoy:9"),
    "global.envoy.logLevel": ("debug", '"--log-level", "debug"'),
    "global.envoy.accessLog": (False, None),
    "global.envoy.perConnectionBufferLimitBytes": (65536, '"per_connection_buffer_limit_bytes\\":65536'),
    "sidecarInjectorWebhook.nativeSidecar": ("true", '"restartPolicy": "Always"'),
    "sidecarInjectorWebhook.rewriteAppHTTPProbe": (False, None),
    "meshConfig.enablePrometheusMerge": (False, None),
    "meshConfig.defaultConfig.interceptionMode": ("NONE", None),
    "meshConfig.defaultConfig.holdApplicationUntilProxyStarts": (True, '"postStart"'),
    "meshConfig.defaultConfig.proxyMetadata": ({"FOO": "bar"}, '"FOO"'),
}
PROXY_CONFIG_SAMPLES: dict[str, Any] = {
    "concurrency": 3,
    "interceptionMode": "NONE",
    "holdApplicationUntilProxyStarts": True,
    "proxyMetadata": {"FOO": "bar"},
}


def _section(title: str) -> str:
    start = DOC.index(f"### {title}")
    end = DOC.find("\n#", start + 1)
    return DOC[start : end if end != -1 else None]


def _rows(title: str) -> list[list[str]]:
    rows = [
        line.strip().strip("|").split(" | ")
        for line in _section(title).splitlines()
        if line.startswith(("| `", "| every"))
    ]
    return [[c.strip() for c in r] for r in rows]


def _documented(title: str, columns: int) -> dict[str, list[str]]:
    """name -> its template cells ("yes: ..." / "no: ..."), one per template in TEMPLATES."""
    out: dict[str, list[str]] = {}
    for row in _rows(title):
        for name in re.findall(r"`([^`]+)`", row[0]):
            out[name] = row[-columns:]
    return out


DOC_VALUES = _documented("values.yaml", 2)
DOC_PROXY_CONFIG = _documented("ProxyConfig fields", 2)


def _leaves(d: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        path = f"{prefix}{k}"
        if path in DOC_VALUES or not isinstance(v, dict) or not v:
            out.append(path)
        else:
            out += _leaves(v, path + ".")
    return out


def _pod(template: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "annotations": {keys.TEMPLATES: template, **(annotations or {})}},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "app:1",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
                }
            ]
        },
    }


def _render(template: str, values: dict[str, Any] | None = None, annotations: dict[str, str] | None = None) -> str:
    config = CFG if values is None else replace(CFG, values=deep_merge(CFG.values, values), cache={})
    pod = inject(Request(pod=_pod(template, annotations), namespace="shop", config=config)).pod
    pod["metadata"]["annotations"].pop(keys.PROXY_CONFIG, None)  # the input itself is not an effect
    return json.dumps(pod, sort_keys=True)


def _nested(path: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out


def test_every_shipped_value_is_documented_and_has_a_sample() -> None:
    shipped = _leaves(yaml.safe_load((DEFAULTS_DIR / "values.yaml").read_text()))
    assert sorted(shipped) == sorted(DOC_VALUES), "docs/annotations.md values table vs values.yaml"
    assert sorted(VALUES) == sorted(DOC_VALUES), "a documented value without a sample here"
    for name, cells in DOC_VALUES.items():
        assert all(c.startswith(("yes", "no")) for c in cells), f"{name}: cells must start with yes/no: {cells}"


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("path", sorted(VALUES))
def test_every_value_reaches_the_proxy_or_is_documented_unused(path: str, template: str) -> None:
    value, expected = VALUES[path]
    default, changed = _render(template), _render(template, _nested(path, value))
    if DOC_VALUES[path][TEMPLATES.index(template)].startswith("yes"):
        assert changed != default, f"{path}={value!r} has no effect on the {template} template"
        if expected is not None:
            assert expected in changed
    else:
        assert changed == default, f"{path} is documented as unused by {template} but changes its output"


def test_every_proxy_config_field_is_documented() -> None:
    assert sorted(DOC_PROXY_CONFIG) == sorted(keys.PROXY_CONFIG_FIELDS)


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("field", sorted(keys.PROXY_CONFIG_FIELDS))
def test_every_proxy_config_field_reaches_the_proxy_or_is_documented_unused(field: str, template: str) -> None:
    sample = PROXY_CONFIG_SAMPLES.get(field, "sample-value")
    annotation = {keys.PROXY_CONFIG: json.dumps({field: sample})}
    default, changed = _render(template), _render(template, annotations=annotation)
    if DOC_PROXY_CONFIG[field][TEMPLATES.index(template)].startswith("yes"):
        assert changed != default
        if template == "sidecar":  # all of it travels to pilot-agent
            assert f'\\"{field}\\":' in changed
    else:
        assert changed == default, f"ProxyConfig {field} is documented as unused by {template} but changes it"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, 2),  # values' limit 2000m
        ({"proxy.istio.io/config": "concurrency: 3"}, 3),
        ({"proxy.istio.io/config": "concurrency: 0"}, None),  # Envoy's default: a worker per host core
        ({"sidecar.istio.io/proxyCPULimit": "1500m"}, 2),
        ({"sidecar.istio.io/proxyCPULimit": "100m"}, 1),
        ({"sidecar.istio.io/proxyCPULimit": "4"}, 4),
        ({"sidecar.istio.io/proxyCPU": "500m"}, 2),  # a request only: no limit, Istio's default
        ({"sidecar.istio.io/proxyCPULimit": "3", "proxy.istio.io/config": "concurrency: 1"}, 1),
    ],
)
def test_envoy_concurrency_follows_proxy_config_then_the_cpu_limit(config: dict[str, str], expected: int) -> None:
    assert envoy_concurrency(read_settings(config, CFG.values)) == expected
    pod = json.loads(_render("envoy", annotations=config))
    proxy = next(c for c in pod["spec"]["containers"] if c["name"] == "istio-proxy")
    args = proxy["args"]
    if expected is None:
        assert "--concurrency" not in args
    else:
        assert args[args.index("--concurrency") + 1] == str(expected)


def test_the_users_own_proxy_cpu_limit_sets_envoys_concurrency() -> None:
    p = _pod("envoy")
    p["spec"]["containers"].append({"name": "istio-proxy", "image": "auto", "resources": {"limits": {"cpu": "6"}}})
    pod = inject(Request(pod=p, namespace="shop", config=CFG, native_sidecar="false")).pod
    args = next(c for c in pod["spec"]["containers"] if c["name"] == "istio-proxy")["args"]
    assert args[args.index("--concurrency") + 1] == "6"


@pytest.mark.parametrize("bad", ["concurrency: -1", "concurrency: two", "concurrency: true", "concurrency: 1.5"])
def test_bad_concurrency_is_refused(bad: str) -> None:
    with pytest.raises(AnnotationError, match="concurrency must be an integer"):
        read_settings({keys.PROXY_CONFIG: bad}, CFG.values)


# --- config.yaml -----------------------------------------------------------------------------------------------


def _config(tmp_path: Path, **raw: Any) -> InjectorConfig:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    return load_config(tmp_path, env={})


def _plain_pod(labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "labels": labels or {}, "annotations": annotations or {}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }


CONFIG_CHECKS: dict[str, Callable[[InjectorConfig], bool]] = {
    "policy": lambda c: not decide(_plain_pod(), "shop", c).inject,
    "defaultTemplates": lambda c: "proxyv2" in json.dumps(_inject(c, _plain_pod())),
    "templates": lambda c: (
        _inject(c, _plain_pod(annotations={keys.TEMPLATES: "extra"}))["metadata"]["labels"]["x"] == "y"
    ),
    "aliases": lambda c: "proxyv2" in json.dumps(_inject(c, _plain_pod(annotations={keys.TEMPLATES: "mesh"}))),
    "neverInjectSelector": lambda c: not decide(_plain_pod({"tier": "db"}), "shop", c).inject,
    "alwaysInjectSelector": lambda c: decide(_plain_pod({"tier": "web"}), "shop", c, policy="disabled").inject,
    "injectedAnnotations": lambda c: _inject(c, _plain_pod())["metadata"]["annotations"]["team"] == "mesh",
}
CONFIG_SAMPLES: dict[str, Any] = {
    "policy": "disabled",
    "defaultTemplates": ["sidecar"],
    "templates": {"extra": "metadata:\n  labels: {x: y}\n"},
    "aliases": {"mesh": ["sidecar"]},
    "neverInjectSelector": [{"matchLabels": {"tier": "db"}}],
    "alwaysInjectSelector": [{"matchLabels": {"tier": "web"}}],
    "injectedAnnotations": {"team": "mesh"},
}


def _inject(config: InjectorConfig, pod: dict[str, Any]) -> dict[str, Any]:
    return inject(Request(pod=pod, namespace="shop", config=config)).pod


def test_every_config_key_is_documented() -> None:
    documented = {r[0].strip("`") for r in _rows("config.yaml")}
    assert documented == set(CONFIG_KEYS) == set(CONFIG_CHECKS)


@pytest.mark.parametrize("key", sorted(CONFIG_KEYS))
def test_every_config_key_has_its_effect(key: str, tmp_path: Path) -> None:
    try:
        shipped = CONFIG_CHECKS[key](CFG)
    except (KeyError, TemplateError):
        shipped = False
    assert not shipped, f"{key}: the check must fail with the shipped config"
    assert CONFIG_CHECKS[key](_config(tmp_path, **{key: CONFIG_SAMPLES[key]}))
