"""Every label and annotation the injector reads or writes, with its parser.

`read_settings` validates *all* of a pod's annotations before anything is rendered, so a bad value refuses the
pod with a message naming the annotation and the value - and nothing half-rendered escapes. Values reach the
templates already parsed and typed; templates never look at raw annotation strings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from injector.core.config import deep_merge
from injector.errors import AnnotationError
from netinit.core import values as capture
from netinit.core.values import go_bool
from netinit.errors import InvalidValue

# --- names ------------------------------------------------------------------------------------------------------
INJECT = "sidecar.istio.io/inject"  # label (preferred) or annotation
REVISION_LABEL = "istio.io/rev"
TEMPLATES = "inject.istio.io/templates"
STATUS = "sidecar.istio.io/status"
OVERRIDES = "proxy.istio.io/overrides"
PROXY_CONFIG = "proxy.istio.io/config"

INCLUDE_OUTBOUND_IP_RANGES = "traffic.sidecar.istio.io/includeOutboundIPRanges"
EXCLUDE_OUTBOUND_IP_RANGES = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
INCLUDE_INBOUND_PORTS = "traffic.sidecar.istio.io/includeInboundPorts"
EXCLUDE_INBOUND_PORTS = "traffic.sidecar.istio.io/excludeInboundPorts"
INCLUDE_OUTBOUND_PORTS = "traffic.sidecar.istio.io/includeOutboundPorts"
EXCLUDE_OUTBOUND_PORTS = "traffic.sidecar.istio.io/excludeOutboundPorts"
EXCLUDE_INTERFACES = "traffic.sidecar.istio.io/excludeInterfaces"
KUBEVIRT_INTERFACES = "traffic.sidecar.istio.io/kubevirtInterfaces"
REROUTE_VIRTUAL_INTERFACES = "istio.io/reroute-virtual-interfaces"

INTERCEPTION_MODE = "sidecar.istio.io/interceptionMode"
PROXY_IMAGE = "sidecar.istio.io/proxyImage"
PROXY_CPU = "sidecar.istio.io/proxyCPU"
PROXY_MEMORY = "sidecar.istio.io/proxyMemory"
PROXY_CPU_LIMIT = "sidecar.istio.io/proxyCPULimit"
PROXY_MEMORY_LIMIT = "sidecar.istio.io/proxyMemoryLimit"
NATIVE_SIDECAR = "sidecar.istio.io/nativeSidecar"
CAP_NET_BIND_SERVICE = "sidecar.istio.io/capNetBindService"
REWRITE_PROBES = "sidecar.istio.io/rewriteAppHTTPProbers"
LOG_LEVEL = "sidecar.istio.io/logLevel"
COMPONENT_LOG_LEVEL = "sidecar.istio.io/componentLogLevel"
AGENT_LOG_LEVEL = "sidecar.istio.io/agentLogLevel"
USER_VOLUME = "sidecar.istio.io/userVolume"
USER_VOLUME_MOUNT = "sidecar.istio.io/userVolumeMount"
BOOTSTRAP_OVERRIDE = "sidecar.istio.io/bootstrapOverride"
STATUS_PORT = "status.sidecar.istio.io/port"
READINESS_INITIAL_DELAY = "readiness.status.sidecar.istio.io/initialDelaySeconds"
READINESS_PERIOD = "readiness.status.sidecar.istio.io/periodSeconds"
READINESS_FAILURE_THRESHOLD = "readiness.status.sidecar.istio.io/failureThreshold"
PROMETHEUS_MERGE = "prometheus.istio.io/merge-metrics"

# Written by injection.
DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"
DEFAULT_LOGS_CONTAINER = "kubectl.kubernetes.io/default-logs-container"
TLS_MODE_LABEL = "security.istio.io/tlsMode"
CANONICAL_NAME_LABEL = "service.istio.io/canonical-name"
CANONICAL_REVISION_LABEL = "service.istio.io/canonical-revision"
PROMETHEUS_SCRAPE = "prometheus.io/scrape"
PROMETHEUS_PORT = "prometheus.io/port"
PROMETHEUS_PATH = "prometheus.io/path"

INTERCEPTION_MODES = ("REDIRECT", "TPROXY", "NONE")
ENVOY_LOG_LEVELS = ("trace", "debug", "info", "warning", "warn", "error", "critical", "off")
AGENT_LOG_LEVELS = ("debug", "info", "warn", "warning", "error", "fatal", "none")

# ProxyConfig's top-level fields (istio.mesh.v1alpha1.ProxyConfig), so a typo is refused as Istio's proto parser
# would refuse it instead of being silently ignored.
PROXY_CONFIG_FIELDS = frozenset(
    """configPath binaryPath serviceCluster drainDuration discoveryAddress discoveryRefreshDelay zipkinAddress
    statsdUdpAddress proxyAdminPort controlPlaneAuthPolicy customConfigFile statNameLength concurrency
    proxyBootstrapTemplatePath interceptionMode tracing sds envoyAccessLogService envoyMetricsService proxyMetadata
    runtimeValues statusPort extraStatTags gatewayTopology terminationDrainDuration meshId readinessProbe
    proxyStatsMatcher holdApplicationUntilProxyStarts caCertificatesPem image privateKeyProvider proxyHeaders
    fileFlushInterval fileFlushMinSizeKb parentShutdownDuration envoyMetricsServiceAddress
    proxyMetadataEnvoyTracing""".split()
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_QUANTITY = re.compile(r"^\+?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COMPONENT = re.compile(r"^[a-z_0-9]+$")


@dataclass(frozen=True)
class Resources:
    requests: Mapping[str, str]
    limits: Mapping[str, str]

    def as_dict(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        if self.requests:
            out["requests"] = dict(self.requests)
        if self.limits:
            out["limits"] = dict(self.limits)
        return out


@dataclass(frozen=True)
class Settings:
    """A pod's injection settings: annotations parsed and validated, falling back to values.yaml."""

    templates: tuple[str, ...] | None
    interception_mode: str
    include_ip_ranges: str
    exclude_ip_ranges: str
    include_inbound_ports: str
    exclude_inbound_ports: str
    include_outbound_ports: str
    exclude_outbound_ports: str
    exclude_interfaces: str
    kubevirt_interfaces: str
    proxy_image: str | None
    resources: Resources
    native_sidecar: bool | None
    rewrite_probes: bool | None
    log_level: str
    envoy_log_level: str  # the envoy template's: the annotation, else values global.envoy.logLevel
    component_log_level: str
    agent_log_level: str
    user_volumes: Mapping[str, Any]
    user_volume_mounts: Mapping[str, Any]
    bootstrap_override: str | None
    status_port: int
    readiness_initial_delay: int
    readiness_period: int
    readiness_failure_threshold: int
    proxy_config: Mapping[str, Any]
    hold_application: bool
    prometheus_merge: bool
    cap_net_bind_service: bool


# --- validators: each takes (name, value) and returns the parsed value or raises AnnotationError -----------------


MAX_SINGLE_LINE = 4096  # longer than any image reference, quantity or log setting a person writes
MAX_LIST = 65536  # CIDR and port lists can be long (thousands of ranges); the API caps all annotations at 256 KiB


def _single_line(name: str, value: str, limit: int = MAX_SINGLE_LINE) -> str:
    if _CONTROL.search(value):
        raise AnnotationError(name, value, "control characters and newlines are not allowed")
    if len(value) > limit:
        raise AnnotationError(name, value, f"longer than {limit} characters")
    return value


def _capture_list(name: str, value: str, check: Callable[[str, str], object], allow_wildcard: bool = False) -> str:
    """A comma list that becomes a netinit flag, checked by netinit's own validator (so whatever is admitted
    here, istio-init accepts); returned as the comma list it will be passed as."""
    _single_line(name, value, MAX_LIST)
    items = capture.split_list(value)
    if allow_wildcard and items == [capture.WILDCARD]:
        return capture.WILDCARD
    if capture.WILDCARD in items:
        why = "'*' must stand alone" if allow_wildcard else "'*' is not allowed here"
        raise AnnotationError(name, value, why)
    try:
        check(name, ",".join(items))
    except InvalidValue as e:
        raise AnnotationError(name, value, f"{e.value!r}: {e.why}") from None
    return ",".join(items)


def _cidrs(name: str, value: str, allow_wildcard: bool) -> str:
    return _capture_list(name, value, capture.cidrs, allow_wildcard)


def _ports(name: str, value: str, allow_wildcard: bool) -> str:
    return _capture_list(name, value, capture.ports, allow_wildcard)


def _interfaces(name: str, value: str) -> str:
    return _capture_list(name, value, capture.interfaces)


def _quantity(name: str, value: str) -> str:
    _single_line(name, value)
    if not _QUANTITY.match(value.strip()):
        raise AnnotationError(name, value, "not a Kubernetes quantity (e.g. 100m, 0.5, 128Mi, 1G)")
    return value.strip()


def _bool(name: str, value: str) -> bool:
    parsed = go_bool(_single_line(name, value))
    if parsed is None:
        raise AnnotationError(name, value, "expected true or false")
    return parsed


def _exact_bool(name: str, value: str) -> bool:
    return _choice(name, value, ("true", "false")) == "true"


def _int(name: str, value: str, low: int, high: int = 2**31 - 1) -> int:
    v = _single_line(name, value).strip()
    if not (v.isascii() and v.isdigit()) or not low <= int(v) <= high:
        raise AnnotationError(name, value, f"expected an integer {low}-{high}")
    return int(v)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise AnnotationError(name, value, f"expected one of {', '.join(choices)}")
    return value


def _component_levels(name: str, value: str) -> str:
    _single_line(name, value)
    for item in capture.split_list(value):
        comp, sep, level = item.partition(":")
        if not sep or not _COMPONENT.match(comp) or level not in ENVOY_LOG_LEVELS:
            raise AnnotationError(name, value, f"{item!r} is not component:level (level one of {ENVOY_LOG_LEVELS})")
    return ",".join(capture.split_list(value))


def _agent_levels(name: str, value: str) -> str:
    _single_line(name, value)
    for item in capture.split_list(value):
        scope, sep, level = item.rpartition(":")
        if (sep and not _COMPONENT.match(scope)) or level not in AGENT_LOG_LEVELS:
            raise AnnotationError(name, value, f"{item!r} is not [scope:]level (level one of {AGENT_LOG_LEVELS})")
    return ",".join(capture.split_list(value))


def _image(name: str, value: str) -> str:
    _single_line(name, value)
    if not _IMAGE.match(value):
        raise AnnotationError(name, value, "not a container image reference")
    return value


def _json_objects(name: str, value: str, required: str | None) -> dict[str, Any]:
    try:
        doc = json.loads(value)
    except ValueError as e:
        raise AnnotationError(name, value, f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise AnnotationError(name, value, "expected a JSON object of name -> object")
    for key, item in doc.items():
        if not _DNS_LABEL.match(key):
            raise AnnotationError(name, value, f"{key!r} is not a valid volume name (DNS-1123 label)")
        if not isinstance(item, dict):
            raise AnnotationError(name, value, f"{key!r} must map to an object")
        if required and not isinstance(item.get(required), str):
            raise AnnotationError(name, value, f"{key!r} needs a string {required}")
        if "name" in item:
            raise AnnotationError(name, value, f"{key!r}: give the name as the key, not as a field")
    return doc


def _proxy_config(name: str, value: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise AnnotationError(name, value, f"not YAML/JSON: {e}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise AnnotationError(name, value, "expected a ProxyConfig mapping")
    unknown = sorted(str(k) for k in doc if k not in PROXY_CONFIG_FIELDS)
    if unknown:
        raise AnnotationError(name, value, f"unknown ProxyConfig field(s) {', '.join(unknown)}")
    if "holdApplicationUntilProxyStarts" in doc and not isinstance(doc["holdApplicationUntilProxyStarts"], bool):
        raise AnnotationError(name, value, "holdApplicationUntilProxyStarts must be true or false")
    if "interceptionMode" in doc and doc["interceptionMode"] not in INTERCEPTION_MODES:
        raise AnnotationError(name, value, f"interceptionMode must be one of {', '.join(INTERCEPTION_MODES)}")
    concurrency = doc.get("concurrency")
    if concurrency is not None and (
        not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 0
    ):
        raise AnnotationError(name, value, "concurrency must be an integer >= 0 (0: one worker per host core)")
    meta = doc.get("proxyMetadata", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise AnnotationError(name, value, "proxyMetadata must map strings to strings (quote numbers)")
    return doc


def _template_names(name: str, value: str) -> tuple[str, ...]:
    _single_line(name, value)
    names = tuple(p.strip() for p in value.split(","))
    for n in names:
        if not _TEMPLATE_NAME.match(n):
            raise AnnotationError(name, value, f"{n!r} is not a template name")
    return names


def _configmap_name(name: str, value: str) -> str:
    _single_line(name, value)
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise AnnotationError(name, value, "not a ConfigMap name (DNS-1123 subdomain)")
    return value


# --- the pod's settings -------------------------------------------------------------------------------------------


def read_settings(annotations: Mapping[str, str], values: Mapping[str, Any]) -> Settings:
    """Parse and validate every annotation the injector reads; values.yaml fills what the pod leaves out."""
    a = annotations
    g = values["global"]
    proxy = g["proxy"]

    def get(name: str, parse: Callable[[str, str], Any], default: Any) -> Any:
        raw = a.get(name)
        if raw is None:
            return default
        if not isinstance(raw, str):
            raise AnnotationError(name, repr(raw), "annotation values must be strings")
        return parse(name, raw)

    pc = get(PROXY_CONFIG, _proxy_config, {})
    proxy_config = deep_merge(values["meshConfig"]["defaultConfig"], pc)
    mode = get(
        INTERCEPTION_MODE,
        lambda n, v: _choice(n, _single_line(n, v), INTERCEPTION_MODES),
        proxy_config.get("interceptionMode", "REDIRECT"),
    )
    quantities = {
        name: get(name, _quantity, None) for name in (PROXY_CPU, PROXY_MEMORY, PROXY_CPU_LIMIT, PROXY_MEMORY_LIMIT)
    }
    if any(v is not None for v in quantities.values()):
        # Istio: any resource annotation replaces values' resources entirely.
        requests = {k: v for k, v in (("cpu", quantities[PROXY_CPU]), ("memory", quantities[PROXY_MEMORY])) if v}
        limits = {
            k: v for k, v in (("cpu", quantities[PROXY_CPU_LIMIT]), ("memory", quantities[PROXY_MEMORY_LIMIT])) if v
        }
        resources = Resources(requests, limits)
    else:
        r = proxy.get("resources") or {}
        resources = Resources(dict(r.get("requests") or {}), dict(r.get("limits") or {}))
    kubevirt = get(KUBEVIRT_INTERFACES, _interfaces, "")

    def log_level(n: str, v: str) -> str:
        return _choice(n, _single_line(n, v), ENVOY_LOG_LEVELS)

    return Settings(
        templates=get(TEMPLATES, _template_names, None),
        interception_mode=mode,
        include_ip_ranges=get(INCLUDE_OUTBOUND_IP_RANGES, lambda n, v: _cidrs(n, v, True), proxy["includeIPRanges"]),
        exclude_ip_ranges=get(EXCLUDE_OUTBOUND_IP_RANGES, lambda n, v: _cidrs(n, v, False), proxy["excludeIPRanges"]),
        include_inbound_ports=get(INCLUDE_INBOUND_PORTS, lambda n, v: _ports(n, v, True), proxy["includeInboundPorts"]),
        exclude_inbound_ports=get(
            EXCLUDE_INBOUND_PORTS, lambda n, v: _ports(n, v, False), proxy["excludeInboundPorts"]
        ),
        include_outbound_ports=get(
            INCLUDE_OUTBOUND_PORTS, lambda n, v: _ports(n, v, False), proxy["includeOutboundPorts"]
        ),
        exclude_outbound_ports=get(
            EXCLUDE_OUTBOUND_PORTS, lambda n, v: _ports(n, v, False), proxy["excludeOutboundPorts"]
        ),
        exclude_interfaces=get(EXCLUDE_INTERFACES, _interfaces, ""),
        # Istio's newer name wins over the old one when both are set.
        kubevirt_interfaces=get(REROUTE_VIRTUAL_INTERFACES, _interfaces, kubevirt),
        proxy_image=get(PROXY_IMAGE, _image, None),
        resources=resources,
        native_sidecar=get(NATIVE_SIDECAR, _exact_bool, None),
        rewrite_probes=get(REWRITE_PROBES, _bool, None),
        log_level=get(LOG_LEVEL, log_level, proxy["logLevel"]),
        envoy_log_level=get(LOG_LEVEL, log_level, g["envoy"]["logLevel"]),
        component_log_level=get(COMPONENT_LOG_LEVEL, _component_levels, proxy["componentLogLevel"]),
        agent_log_level=get(AGENT_LOG_LEVEL, _agent_levels, g["logging"]["level"]),
        user_volumes=get(USER_VOLUME, lambda n, v: _json_objects(n, v, None), {}),
        user_volume_mounts=get(USER_VOLUME_MOUNT, lambda n, v: _json_objects(n, v, "mountPath"), {}),
        bootstrap_override=get(BOOTSTRAP_OVERRIDE, _configmap_name, None),
        status_port=get(STATUS_PORT, lambda n, v: _int(n, v, 0, 65535), int(proxy["statusPort"])),
        readiness_initial_delay=get(
            READINESS_INITIAL_DELAY, lambda n, v: _int(n, v, 0), proxy["readinessInitialDelaySeconds"]
        ),
        readiness_period=get(READINESS_PERIOD, lambda n, v: _int(n, v, 1), proxy["readinessPeriodSeconds"]),
        readiness_failure_threshold=get(
            READINESS_FAILURE_THRESHOLD, lambda n, v: _int(n, v, 1), proxy["readinessFailureThreshold"]
        ),
        proxy_config=proxy_config,
        hold_application=bool(proxy_config.get("holdApplicationUntilProxyStarts"))
        or bool(proxy.get("holdApplicationUntilProxyStarts")),
        prometheus_merge=get(PROMETHEUS_MERGE, _bool, bool(values["meshConfig"].get("enablePrometheusMerge", True))),
        cap_net_bind_service=get(CAP_NET_BIND_SERVICE, _exact_bool, bool(proxy.get("capNetBindService"))),
    )


def exclude_inbound_with_status(status_port: int, excluded: str) -> str:
    """Istio's excludeInboundPort: the status port joins the excluded inbound ports unless 0 or already there."""
    ports = capture.split_list(excluded)
    if status_port and str(status_port) not in ports:
        ports.append(str(status_port))
    return ",".join(ports)


def capture_args(s: Settings, proxy_uid: int) -> list[str]:
    """netinit's flags for this pod, in the istio-iptables order Istio's template uses."""
    args = ["-p", "15001", "-z", "15006", "-u", str(proxy_uid), "-m", s.interception_mode]
    args += ["-i", s.include_ip_ranges, "-x", s.exclude_ip_ranges, "-b", s.include_inbound_ports]
    args += [
        "-d",
        ",".join(p for p in ("15090,15021", exclude_inbound_with_status(s.status_port, s.exclude_inbound_ports)) if p),
    ]
    for flag, value in (
        ("-q", s.include_outbound_ports),
        ("-o", s.exclude_outbound_ports),
        ("-k", s.kubevirt_interfaces),
        ("-c", s.exclude_interfaces),
    ):
        if value:
            args += [flag, value]
    return args
