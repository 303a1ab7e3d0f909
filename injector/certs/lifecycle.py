"""The serving certificate's life cycle in a Secret: create, keep, renew, rotate the CA, and keep the
MutatingWebhookConfiguration's ``caBundle`` in step.

The decisions are small pure functions (table-tested without any server); :func:`ensure_serving_cert` carries them
out through the :class:`~injector.certs.kube.KubeApi` seam only.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from injector import log
from injector.certs import crypto
from injector.certs.kube import ApiError, KubeApi

CA_CERT, CA_KEY, TLS_CERT, TLS_KEY = "ca.crt", "ca.key", "tls.crt", "tls.key"
SECRET_KEYS = (CA_CERT, CA_KEY, TLS_CERT, TLS_KEY)
SECRET_LABELS = {"app.kubernetes.io/name": "sidecar-injector", "app.kubernetes.io/managed-by": "sidecar-injector"}
# Optimistic-concurrency retries when another replica writes the Secret between our read and our write.
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class CertBundle:
    """What the webhook serves with (cert, key) and what the API server must trust (ca)."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


class Action(enum.Enum):
    KEEP = "keep"  # the Secret is valid: use it as is
    CREATE = "create"  # no Secret: new CA and serving cert, create it
    RENEW = "renew"  # serving cert expiring or broken, CA fine: new serving cert from the same CA
    ROTATE_CA = "rotate-ca"  # CA expiring or broken: new CA and serving cert, caBundle must follow


@dataclass(frozen=True)
class Plan:
    action: Action
    reason: str


def plan_secret(
    data: Mapping[str, bytes] | None, *, now: datetime, renew_before: timedelta, sans: Sequence[str]
) -> Plan:
    """Decide what to do with the Secret's current content. Renewing the serving cert keeps the CA so the caBundle
    (and every API server's trust) stays unchanged; the CA is replaced only when it is itself unusable."""
    if data is None:
        return Plan(Action.CREATE, "secret does not exist")
    ca_pem, ca_key = data.get(CA_CERT, b""), data.get(CA_KEY, b"")
    if not ca_pem or not ca_key:
        return Plan(Action.ROTATE_CA, f"secret lacks {CA_CERT if not ca_pem else CA_KEY}")
    try:
        if not crypto.is_ca(ca_pem):
            return Plan(Action.ROTATE_CA, f"{CA_CERT} is not a CA certificate")
        if not crypto.matches_key(ca_pem, ca_key):
            return Plan(Action.ROTATE_CA, f"{CA_KEY} does not match {CA_CERT}")
        if crypto.needs_renewal(ca_pem, now, renew_before):
            return Plan(Action.ROTATE_CA, f"CA expires {crypto.not_after(ca_pem).isoformat()}")
    except ValueError as e:
        return Plan(Action.ROTATE_CA, f"CA unreadable: {e}")
    cert_pem, key_pem = data.get(TLS_CERT, b""), data.get(TLS_KEY, b"")
    if not cert_pem or not key_pem:
        return Plan(Action.RENEW, f"secret lacks {TLS_CERT if not cert_pem else TLS_KEY}")
    try:
        if not crypto.matches_key(cert_pem, key_pem):
            return Plan(Action.RENEW, f"{TLS_KEY} does not match {TLS_CERT}")
        if not crypto.signed_by(cert_pem, ca_pem):
            return Plan(Action.RENEW, f"{TLS_CERT} is not signed by {CA_CERT}")
        if crypto.needs_renewal(cert_pem, now, renew_before):
            return Plan(Action.RENEW, f"serving certificate expires {crypto.not_after(cert_pem).isoformat()}")
        missing = sorted(set(sans) - set(crypto.subject_alt_names(cert_pem)))
        if missing:
            return Plan(Action.RENEW, f"serving certificate lacks SANs {', '.join(missing)}")
    except ValueError as e:
        return Plan(Action.RENEW, f"serving certificate unreadable: {e}")
    return Plan(Action.KEEP, "valid")


def issue(
    plan: Plan,
    data: Mapping[str, bytes] | None,
    *,
    service: str,
    namespace: str,
    now: datetime,
    extra_sans: Sequence[str] = (),
    cluster_domain: str = crypto.DEFAULT_CLUSTER_DOMAIN,
    cert_days: int = 365,
    ca_days: int = 3650,
) -> dict[str, bytes]:
    """The Secret content after carrying out ``plan`` (no I/O): reuse what it keeps, mint what it replaces."""
    if plan.action is Action.KEEP:
        assert data is not None
        return {k: data[k] for k in SECRET_KEYS}
    if plan.action is Action.RENEW:
        assert data is not None
        ca = crypto.KeyPair(data[CA_CERT], data[CA_KEY])
    else:
        ca = crypto.make_ca(days=ca_days, now=now)
    serving = crypto.make_serving_cert(
        ca, service, namespace, days=cert_days, cluster_domain=cluster_domain, extra_sans=extra_sans, now=now
    )
    return {CA_CERT: ca.cert_pem, CA_KEY: ca.key_pem, TLS_CERT: serving.cert_pem, TLS_KEY: serving.key_pem}


def bundle_from_secret(data: Mapping[str, bytes]) -> CertBundle:
    return CertBundle(data[CA_CERT], data[TLS_CERT], data[TLS_KEY])


def stale_webhooks(bundles: Mapping[str, bytes], ca_pem: bytes) -> list[str]:
    """Webhooks whose caBundle is not exactly our CA; patching only when this is non-empty keeps restarts write-free."""
    return [name for name, bundle in bundles.items() if bundle != ca_pem]


# --- orchestration ----------------------------------------------------------------------------------------------


def ensure_serving_cert(
    api: KubeApi,
    *,
    namespace: str,
    secret_name: str,
    service: str,
    mwc_name: str,
    now: datetime,
    renew_before: timedelta = timedelta(days=30),
    extra_sans: Sequence[str] = (),
    cluster_domain: str = crypto.DEFAULT_CLUSTER_DOMAIN,
    cert_days: int = 365,
    ca_days: int = 3650,
) -> CertBundle:
    """Make the Secret hold a valid CA and serving cert and the webhook trust that CA; safe to run from every replica
    at once. Writes happen only when something is missing or expiring: a restart with a good Secret is read-only."""
    for what, days in (("cert_days", cert_days), ("ca_days", ca_days)):
        if timedelta(days=days) <= renew_before:
            # Every fresh certificate would already be due, and every start would rewrite the Secret.
            raise ValueError(f"{what}={days} must be longer than renew_before={renew_before}")
    sans = crypto.expected_sans(service, namespace, cluster_domain, extra_sans)
    bundle: CertBundle | None = None
    for _ in range(MAX_ATTEMPTS):
        data = api.get_secret(namespace, secret_name)
        plan = plan_secret(data, now=now, renew_before=renew_before, sans=sans)
        content = issue(
            plan,
            data,
            service=service,
            namespace=namespace,
            now=now,
            extra_sans=extra_sans,
            cluster_domain=cluster_domain,
            cert_days=cert_days,
            ca_days=ca_days,
        )
        if plan.action is not Action.KEEP:
            log.info("certificate secret " + plan.action.value, secret=f"{namespace}/{secret_name}", reason=plan.reason)
            try:
                if plan.action is Action.CREATE:
                    api.create_secret(namespace, secret_name, content, dict(SECRET_LABELS))
                else:
                    api.replace_secret(namespace, secret_name, content)
            except ApiError as e:
                if e.status != 409:
                    raise
                where = f"{namespace}/{secret_name}"
                log.info("certificate secret written concurrently; re-reading", secret=where, reason=e.reason)
                continue
        bundle = bundle_from_secret(content)
        break
    if bundle is None:
        raise ApiError(409, "Conflict", f"secret {namespace}/{secret_name} kept changing; gave up after {MAX_ATTEMPTS}")
    bundles = api.get_webhook_ca_bundles(mwc_name)
    if not bundles:
        log.warning("mutatingwebhookconfiguration has no webhooks; nothing will call the injector", name=mwc_name)
    stale = stale_webhooks(bundles, bundle.ca_pem)
    if stale:
        log.info("mutatingwebhookconfiguration caBundle updated", name=mwc_name, webhooks=stale)
        api.patch_webhook_ca_bundle(mwc_name, bundle.ca_pem)
    return bundle
