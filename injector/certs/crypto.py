"""A private CA and the webhook's serving certificate.

The API server calls the webhook over HTTPS at ``<service>.<namespace>.svc`` and trusts only the ``caBundle`` of
the MutatingWebhookConfiguration, so the injector brings its own small CA instead of depending on cert-manager.
Everything here is pure (no Kubernetes, no clock unless ``now`` is omitted), so renewal decisions are table tests.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_SERVICE = "sidecar-injector"
DEFAULT_NAMESPACE = "sidecar-injector"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
# Certificates start slightly in the past so that a node whose clock lags ours still accepts them.
BACKDATE = timedelta(minutes=5)

_ISSUER_KEYS = (
    ec.EllipticCurvePrivateKey,
    rsa.RSAPrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_NAME = re.compile(
    r"(\*\.)?[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*"
)


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM (PKCS#8, unencrypted) private key, as they are stored in Secrets and files."""

    cert_pem: bytes
    key_pem: bytes


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_cert(cert_pem: bytes) -> x509.Certificate:
    """Parse one PEM certificate; anything unparsable is a ValueError, so callers catch one exception type."""
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except (ValueError, TypeError) as e:
        raise ValueError(f"not a PEM certificate: {e}") from e


def load_key(key_pem: bytes) -> CertificateIssuerPrivateKeyTypes:
    """Parse an unencrypted PEM private key that can sign certificates; anything else is a ValueError."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ValueError(f"not an unencrypted PEM private key: {e}") from e
    if not isinstance(key, _ISSUER_KEYS):
        raise ValueError(f"unsupported private key type {type(key).__name__}")
    return key


def _key_usage(signs_certificates: bool) -> x509.KeyUsage:
    """EC keys sign (TLS handshakes, and certificates for a CA); they never encipher."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(common_name: str = "sidecar-injector-ca", days: int = 3650, now: datetime | None = None) -> KeyPair:
    """A self-signed CA that may sign only leaf certificates (path length 0)."""
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    start = _now(now)
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - BACKDATE)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(signs_certificates=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def service_dns_names(service: str, namespace: str, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> list[str]:
    """Every name a client inside the cluster may use for the Service; the API server uses ``svc.ns.svc``."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.{cluster_domain}",
    ]


def _general_name(san: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(san))
    except ValueError:
        pass
    if not _DNS_NAME.fullmatch(san) or len(san) > 253:
        raise ValueError(f"extra SAN {san!r} is neither an IP address nor a DNS name")
    return x509.DNSName(san)


def make_serving_cert(
    ca: KeyPair,
    service: str,
    namespace: str,
    days: int = 365,
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
    extra_sans: Sequence[str] = (),
    now: datetime | None = None,
) -> KeyPair:
    """A TLS server certificate for the webhook Service, signed by ``ca``."""
    for what, value in (("service", service), ("namespace", namespace)):
        if not _DNS_LABEL.fullmatch(value):
            raise ValueError(f"{what} {value!r} is not a DNS-1123 label")
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    ca_cert, ca_key = load_cert(ca.cert_pem), load_key(ca.key_pem)
    start = _now(now)
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in service_dns_names(service, namespace, cluster_domain)]
    for san in extra_sans:
        general = _general_name(san)
        if general not in names:
            names.append(general)
    key = _new_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{service}.{namespace}.svc")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - BACKDATE)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(signs_certificates=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(
            ca_key, None if isinstance(ca_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()
        )
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def not_after(cert_pem: bytes) -> datetime:
    """When the certificate stops being valid (timezone-aware UTC)."""
    return load_cert(cert_pem).not_valid_after_utc


def not_before(cert_pem: bytes) -> datetime:
    """When the certificate starts being valid (timezone-aware UTC)."""
    return load_cert(cert_pem).not_valid_before_utc


def serial_hex(cert_pem: bytes) -> str:
    """The serial number as istioctl prints it (32 hex digits, zero-padded)."""
    return f"{load_cert(cert_pem).serial_number:032x}"


def needs_renewal(cert_pem: bytes, now: datetime, before: timedelta = timedelta(days=30)) -> bool:
    """True once ``now`` is within ``before`` of expiry (or past it): renew early so no request sees an expired cert."""
    return _now(now) + before >= not_after(cert_pem)


def matches_key(cert_pem: bytes, key_pem: bytes) -> bool:
    """Whether the private key belongs to the certificate (a mismatched pair fails every TLS handshake)."""
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    cert_pub = load_cert(cert_pem).public_key().public_bytes(serialization.Encoding.DER, spki)
    return load_key(key_pem).public_key().public_bytes(serialization.Encoding.DER, spki) == cert_pub


def signed_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    """Whether ``ca_pem`` issued ``cert_pem`` (issuer name and signature), i.e. the caBundle will verify it."""
    cert, ca = load_cert(cert_pem), load_cert(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def is_ca(cert_pem: bytes) -> bool:
    """Whether the certificate may sign others (BasicConstraints ca=True)."""
    try:
        return bool(load_cert(cert_pem).extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def subject_alt_names(cert_pem: bytes) -> list[str]:
    """The DNS and IP SANs of a certificate as text (empty when it has none), to check what it is valid for."""
    try:
        san = load_cert(cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.DNSName) + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def expected_sans(
    service: str, namespace: str, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN, extra_sans: Sequence[str] = ()
) -> list[str]:
    """The SANs :func:`make_serving_cert` puts in, in the text form :func:`subject_alt_names` reads back."""
    names = service_dns_names(service, namespace, cluster_domain)
    ips: list[str] = []
    for san in extra_sans:
        general = _general_name(san)
        bucket = ips if isinstance(general, x509.IPAddress) else names
        if str(general.value) not in bucket:
            bucket.append(str(general.value))
    return names + ips


def ca_bundle(ca_pem: bytes) -> str:
    """The base64 text that goes into ``webhooks[].clientConfig.caBundle`` of a YAML manifest."""
    return base64.b64encode(ca_pem).decode("ascii")
