"""The CNI protocol (spec 0.4.0 and 1.0.0, plus 0.3.x for old runtimes): a call in, a result or an error out. Pure.

The runtime's call is the ``CNI_*`` environment and the network config on stdin; a chained plugin answers ADD with
the ``prevResult`` it was given (we add no interfaces or addresses), and any failure with an error object whose
``code`` the spec assigns (1-11) or one of ours (100+, :class:`Code`), and whose ``msg`` names the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")


class Code(IntEnum):
    """CNI error codes: the spec's well-known ones, then ours (the spec leaves 100+ to plugins)."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENV = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_CONFIG = 7
    TRY_AGAIN_LATER = 11
    POD_REFUSED = 100  # the pod's capture settings are refused (netinit's exit 2): nothing was touched
    APPLY_FAILED = 101  # applying failed and was rolled back (netinit's exit 1)
    VALIDATION_FAILED = 102  # applied, but real connections were not captured (netinit's exit 126)
    API_SERVER = 103  # the pod could not be read from the API server
    DRIFT = 104  # CHECK: the live rules are not the ones ADD programmed


class CniError(Exception):
    """A failure the runtime is told about: ``code``, ``msg`` (names the field), ``details``."""

    def __init__(self, code: Code, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def to_json(self, version: str) -> dict[str, Any]:
        doc: dict[str, Any] = {"cniVersion": version, "code": int(self.code), "msg": self.msg}
        if self.details:
            doc["details"] = self.details
        return doc


@dataclass(frozen=True)
class Settings:
    """The plugin's own keys in the network config (all optional)."""

    exclude_namespaces: frozenset[str] = frozenset({"kube-system"})
    kubernetes_timeout: float = 5.0
    validate: bool = True  # after ADD programs the pod, probe it with real connections in its namespace (as root)


@dataclass(frozen=True)
class Call:
    """One CNI call, parsed and checked."""

    command: str
    version: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    prev_result: Mapping[str, Any] | None = None
    settings: Settings = Settings()

    @property
    def pod(self) -> tuple[str, str] | None:
        """(namespace, name) from ``CNI_ARGS``, or None when the runtime names no Kubernetes pod.

        podman (the runtime lab) passes ``K8S_POD_NAME`` only; there a name ``NAMESPACE_NAME`` carries the
        namespace, which no Kubernetes runtime can produce by accident (``_`` is not allowed in either name)."""
        name, namespace = self.args.get("K8S_POD_NAME", ""), self.args.get("K8S_POD_NAMESPACE", "")
        if name and not namespace and "_" in name:
            namespace, _, name = name.partition("_")
        return (namespace, name) if name and namespace else None


def _version(doc: Mapping[str, Any]) -> str:
    version = doc.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(Code.INVALID_CONFIG, "the network config has no cniVersion", "cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            Code.INCOMPATIBLE_VERSION,
            f"cniVersion {version!r} is not supported (supported: {', '.join(SUPPORTED_VERSIONS)})",
            "cniVersion",
        )
    return version


def parse_args(text: str) -> dict[str, str]:
    """``CNI_ARGS``: ``K=V;K=V``."""
    out: dict[str, str] = {}
    for part in filter(None, text.split(";")):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise CniError(Code.INVALID_ENV, f"CNI_ARGS: {part!r} is not KEY=VALUE", "CNI_ARGS")
        out[key] = value
    return out


def _settings(doc: Mapping[str, Any]) -> Settings:
    excluded = doc.get("excludeNamespaces", sorted(Settings.exclude_namespaces))
    if not isinstance(excluded, list) or not all(isinstance(n, str) for n in excluded):
        raise CniError(Code.INVALID_CONFIG, "excludeNamespaces must be a list of namespace names", "excludeNamespaces")
    timeout = doc.get("kubernetesTimeoutSeconds", Settings.kubernetes_timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 60:
        raise CniError(
            Code.INVALID_CONFIG, "kubernetesTimeoutSeconds must be a number in (0, 60]", "kubernetesTimeoutSeconds"
        )
    validate = doc.get("validate", True)
    if not isinstance(validate, bool):
        raise CniError(Code.INVALID_CONFIG, "validate must be true or false", "validate")
    return Settings(frozenset(excluded), float(timeout), validate)


def parse_call(env: Mapping[str, str], stdin: bytes) -> Call:
    """The runtime's call -> :class:`Call`; raises :class:`CniError` naming what is wrong."""
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        shown = repr(command) if command else "not set"
        raise CniError(Code.INVALID_ENV, f"CNI_COMMAND is {shown} (want one of {', '.join(COMMANDS)})", "CNI_COMMAND")
    try:
        doc = json.loads(stdin) if stdin.strip() else {}
    except ValueError as e:
        raise CniError(Code.DECODE_FAILURE, f"the network config on stdin is not JSON: {e}", "stdin") from None
    if not isinstance(doc, dict):
        raise CniError(Code.DECODE_FAILURE, "the network config on stdin is not a JSON object", "stdin")
    if command == "VERSION":
        version = doc.get("cniVersion") if doc.get("cniVersion") in SUPPORTED_VERSIONS else "1.0.0"
        return Call(command, str(version))
    version = _version(doc)
    for key in ("name", "type"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise CniError(Code.INVALID_CONFIG, f"the network config has no {key}", key)
    container_id = env.get("CNI_CONTAINERID", "")
    if not container_id:
        raise CniError(Code.INVALID_ENV, "CNI_CONTAINERID is not set", "CNI_CONTAINERID")
    netns = env.get("CNI_NETNS", "")
    if command != "DEL" and not netns:
        raise CniError(Code.INVALID_ENV, f"CNI_NETNS is not set (required for {command})", "CNI_NETNS")
    ifname = env.get("CNI_IFNAME", "")
    if command != "DEL" and not ifname:
        raise CniError(Code.INVALID_ENV, f"CNI_IFNAME is not set (required for {command})", "CNI_IFNAME")
    prev = doc.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(Code.INVALID_CONFIG, "prevResult is not a JSON object", "prevResult")
    if command in ("ADD", "CHECK") and prev is None:
        raise CniError(
            Code.INVALID_CONFIG,
            f"prevResult is missing: netinit-cni is a chained plugin and must come after the network plugin "
            f"in the conflist ({command})",
            "prevResult",
        )
    return Call(
        command=command,
        version=version,
        container_id=container_id,
        netns=netns,
        ifname=ifname,
        args=parse_args(env.get("CNI_ARGS", "")),
        config=doc,
        prev_result=prev,
        settings=_settings(doc),
    )


def version_result(version: str) -> dict[str, Any]:
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


def add_result(call: Call) -> dict[str, Any]:
    """ADD's answer: the previous plugin's result, unchanged but for the config's ``cniVersion`` (the spec's rule
    for a plugin that does not change the result)."""
    assert call.prev_result is not None
    return {**call.prev_result, "cniVersion": call.version}
