"""What an injection is asked to do (`Request`) and the names every step agrees on. Plain data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from injector.core.config import InjectorConfig

Obj = dict[str, Any]

# The Istio release whose injection template (manifests/charts/istio-control/istio-discovery/files/
# injection-template.yaml) the `sidecar` template follows, and whose proxyv2 image values.yaml's global.tag names.
ISTIO_RELEASE = "1.28.0"

PROXY = "istio-proxy"
INIT = "istio-init"
VALIDATION = "istio-validation"
CORE_DUMP = "enable-core-dump"
PROXY_UID = PROXY_GID = 1337
AUTO_IMAGE = "auto"
NATIVE_SIDECAR_MIN_VERSION = (1, 29)
NETWORK_LABEL = "topology.istio.io/network"
CLUSTER_ENV = "ISTIO_META_CLUSTER_ID"
NETWORK_ENV = "ISTIO_META_NETWORK"


@dataclass(frozen=True)
class Workload:
    """The object that owns the pod, for names in the proxy's metadata (Istio's DeploymentMeta/TypeMeta)."""

    name: str
    namespace: str
    kind: str = "Pod"
    api_version: str = "v1"


@dataclass(frozen=True)
class Request:
    pod: Mapping[str, Any]
    namespace: str
    config: InjectorConfig
    revision: str = ""
    # Kubernetes version of the API server, for nativeSidecar "auto"; None when unknown (offline).
    kube_version: tuple[int, int] | None = None
    # Overrides the config's nativeSidecar mode (kube-inject --native-sidecar): "auto" | "true" | "false".
    native_sidecar: str | None = None
    # Proxy env from the webhook URL (/inject/cluster/X/net/Y): set on the proxy, overriding the template's.
    proxy_env: Mapping[str, str] = field(default_factory=dict)
    workload: Workload | None = None
