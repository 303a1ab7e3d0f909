"""The API server's half of admission: the shipped MutatingWebhookConfiguration's rules and selectors, the call to
the webhook, the JSON Patch applied, the result schema-checked."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from injector.core.selectors import parse_selector
from lab.shell import LabError
from lab.webhook_process import WebhookProcess

REPO = Path(__file__).resolve().parent.parent
MWC_FILE = REPO / "manifests" / "base" / "mutatingwebhook.yaml"
SHIPPED_CONFIG_DIR = REPO / "manifests" / "base" / "config"


class AdmissionRefused(LabError):
    """The webhook answered ``allowed: false`` (the API server refuses to create the pod)."""


def load_webhook_configuration(path: Path = MWC_FILE) -> dict[str, Any]:
    """The shipped MutatingWebhookConfiguration."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise LabError(f"cannot read the MutatingWebhookConfiguration {path}: {e.strerror}") from e
    if not isinstance(doc, dict) or doc.get("kind") != "MutatingWebhookConfiguration":
        raise LabError(f"{path} is not a MutatingWebhookConfiguration")
    return doc


def _rule_matches_pod_create(rule: Mapping[str, Any]) -> bool:
    def has(key: str, value: str) -> bool:
        values = rule.get(key) or []
        return value in values or "*" in values

    scope = rule.get("scope", "*")
    return (
        has("operations", "CREATE")
        and has("apiGroups", "")
        and has("apiVersions", "v1")
        and has("resources", "pods")
        and scope in ("*", "Namespaced")
    )


def selecting_webhooks(
    pod: Mapping[str, Any],
    namespace: str,
    namespace_labels: Mapping[str, str],
    mwc: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The webhooks of the MutatingWebhookConfiguration that the API server would call for this pod CREATE, in
    order. Kubernetes labels every namespace ``kubernetes.io/metadata.name=<name>``; that label is added here."""
    config = load_webhook_configuration() if mwc is None else mwc
    ns_labels = {**namespace_labels, "kubernetes.io/metadata.name": namespace}
    pod_labels = {str(k): str(v) for k, v in (pod.get("metadata", {}).get("labels") or {}).items()}
    chosen = []
    for hook in config.get("webhooks") or []:
        if not any(_rule_matches_pod_create(r) for r in hook.get("rules") or []):
            continue
        # An absent or empty selector matches everything (unlike the injector's own never/always selectors).
        if not parse_selector(hook.get("namespaceSelector") or {}).matches(ns_labels):
            continue
        if not parse_selector(hook.get("objectSelector") or {}).matches(pod_labels):
            continue
        chosen.append(dict(hook))
    return chosen


def validate_pod(pod: Mapping[str, Any]) -> None:
    """Schema-check a pod (strict: unknown fields are errors) when kubernetes-validate is installed."""
    try:
        import kubernetes_validate
    except ImportError:
        return
    obj = {"apiVersion": "v1", "kind": "Pod", **pod}
    try:
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as e:
        raise LabError(f"the admitted pod does not validate against the Kubernetes schema: {e}") from e


def webhook_for(
    mwc: Mapping[str, Any], config_dir: Path | str | None = None, *, kube_version: str | None = None
) -> WebhookProcess:
    """A webhook process with a certificate for the Service the MutatingWebhookConfiguration calls."""
    service = mwc["webhooks"][0]["clientConfig"]["service"]
    return WebhookProcess(
        config_dir, service=str(service["name"]), namespace=str(service["namespace"]), kube_version=kube_version
    )


def admit(
    pod: Mapping[str, Any],
    namespace_labels: Mapping[str, str],
    webhook: WebhookProcess,
    *,
    mwc: Mapping[str, Any] | None = None,
    namespace: str | None = None,
) -> dict[str, Any]:
    """``kubectl apply`` of a Pod as far as admission goes: the pod as the API server would store it.

    The namespace is ``namespace``, else the pod's ``metadata.namespace``, else ``default``. When no webhook
    of the shipped configuration selects the pod it comes back unchanged (a copy); otherwise each selecting
    webhook is called in order and its JSON Patch applied. ``allowed: false`` raises :class:`AdmissionRefused`.
    The result is validated with kubernetes-validate (strict) when that package is importable.
    """
    out = copy.deepcopy(dict(pod))
    ns = namespace or str(out.get("metadata", {}).get("namespace") or "default")
    hooks = selecting_webhooks(out, ns, namespace_labels, mwc)
    if not hooks:
        return out
    import jsonpatch

    out.setdefault("metadata", {})["namespace"] = ns  # the API server fills it in from the request URL
    for hook in hooks:
        path = str(hook["clientConfig"]["service"].get("path") or "/")
        response = webhook.review(out, ns, path=path, timeout=float(hook.get("timeoutSeconds", 10)))
        if response.get("allowed") is not True:
            message = (response.get("status") or {}).get("message", "")
            raise AdmissionRefused(f'admission webhook "{hook["name"]}" denied the request: {message}')
        if "patch" in response:
            if response.get("patchType") != "JSONPatch":
                raise LabError(f"webhook {hook['name']}: patchType {response.get('patchType')!r}")
            ops = json.loads(base64.b64decode(response["patch"]))
            out = jsonpatch.JsonPatch(ops).apply(out)
    validate_pod(out)
    return out


# --- the kubelet --------------------------------------------------------------------------------------------


def shipped_webhook(config_dir: Path | str | None = None, *, kube_version: str | None = None) -> WebhookProcess:
    """A webhook process for the shipped MutatingWebhookConfiguration's Service."""
    return webhook_for(load_webhook_configuration(), config_dir, kube_version=kube_version)
