"""The private CA, the serving certificate, and the ``certs`` command - checked by parsing the certificates and by
a real TLS handshake, not by re-reading what we asked for."""

from __future__ import annotations

import argparse
import base64
import ipaddress
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from injector.certs import cli as certs_cli
from injector.certs import crypto

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
HOST = "sidecar-injector.sidecar-injector.svc"


@pytest.fixture(scope="module")
def ca() -> crypto.KeyPair:
    return crypto.make_ca(now=NOW)


@pytest.fixture(scope="module")
def serving(ca: crypto.KeyPair) -> crypto.KeyPair:
    return crypto.make_serving_cert(ca, "sidecar-injector", "sidecar-injector", now=NOW)


def parse(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_ca_extensions(ca: crypto.KeyPair) -> None:
    cert = parse(ca.cert_pem)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "sidecar-injector-ca"
    assert crypto.signed_by(ca.cert_pem, ca.cert_pem)
    assert crypto.not_after(ca.cert_pem) == NOW + timedelta(days=3650)


def test_serving_cert_sans_cn_and_usage(ca: crypto.KeyPair) -> None:
    kp = crypto.make_serving_cert(
        ca, "hook", "mesh", cluster_domain="corp.example", extra_sans=["127.0.0.1", "hook.example.com", "::1"], now=NOW
    )
    cert = parse(kp.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [
        "hook",
        "hook.mesh",
        "hook.mesh.svc",
        "hook.mesh.svc.corp.example",
        "hook.example.com",
    ]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hook.mesh.svc"
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.issuer == parse(ca.cert_pem).subject
    assert crypto.subject_alt_names(kp.cert_pem) == crypto.expected_sans(
        "hook", "mesh", "corp.example", ["127.0.0.1", "hook.example.com", "::1"]
    )


def test_default_sans(serving: crypto.KeyPair) -> None:
    assert crypto.subject_alt_names(serving.cert_pem) == [
        "sidecar-injector",
        "sidecar-injector.sidecar-injector",
        "sidecar-injector.sidecar-injector.svc",
        "sidecar-injector.sidecar-injector.svc.cluster.local",
    ]


def test_chain_and_key_checks(ca: crypto.KeyPair, serving: crypto.KeyPair) -> None:
    other = crypto.make_ca(now=NOW)
    assert crypto.signed_by(serving.cert_pem, ca.cert_pem)
    assert not crypto.signed_by(serving.cert_pem, other.cert_pem)
    assert crypto.matches_key(serving.cert_pem, serving.key_pem)
    assert not crypto.matches_key(serving.cert_pem, ca.key_pem)
    assert crypto.is_ca(ca.cert_pem) and not crypto.is_ca(serving.cert_pem)


def test_same_subject_other_ca_is_not_the_signer(ca: crypto.KeyPair, serving: crypto.KeyPair) -> None:
    twin = crypto.make_ca(now=NOW)  # same CN, different key: only the signature tells them apart
    assert parse(twin.cert_pem).subject == parse(ca.cert_pem).subject
    assert not crypto.signed_by(serving.cert_pem, twin.cert_pem)


@pytest.mark.parametrize(
    ("elapsed_days", "before_days", "renew"),
    [(0, 30, False), (334, 30, False), (335, 30, True), (364, 0, False), (365, 0, True), (500, 30, True)],
)
def test_needs_renewal(serving: crypto.KeyPair, elapsed_days: int, before_days: int, renew: bool) -> None:
    assert crypto.not_after(serving.cert_pem) == NOW + timedelta(days=365)
    now = NOW + timedelta(days=elapsed_days)
    assert crypto.needs_renewal(serving.cert_pem, now, timedelta(days=before_days)) is renew


def test_naive_now_is_utc(ca: crypto.KeyPair) -> None:
    kp = crypto.make_serving_cert(ca, "a", "b", days=1, now=NOW.replace(tzinfo=None))
    assert crypto.not_after(kp.cert_pem) == NOW + timedelta(days=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"service": "Bad_Name"}, "not a DNS-1123 label"),
        ({"namespace": "a.b"}, "not a DNS-1123 label"),
        ({"days": 0}, "positive"),
        ({"extra_sans": ["not a name"]}, "neither an IP address nor a DNS name"),
    ],
)
def test_bad_serving_input(ca: crypto.KeyPair, kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"service": "svc", "namespace": "ns", **kwargs}
    with pytest.raises(ValueError, match=message):
        crypto.make_serving_cert(ca, **args)  # type: ignore[arg-type]


def test_garbage_is_a_value_error(serving: crypto.KeyPair) -> None:
    with pytest.raises(ValueError, match="not a PEM certificate"):
        crypto.not_after(b"junk")
    with pytest.raises(ValueError, match="private key"):
        crypto.matches_key(serving.cert_pem, b"junk")


# --- a real handshake --------------------------------------------------------------------------------------------


@contextmanager
def tls_server(cert: Path, key: Path) -> Iterator[int]:
    """Serve TLS on a free loopback port; each connection gets b"ok" after the handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)  # poll, so the thread notices `stop` (close() does not wake a blocked accept)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    with ctx.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(b"ok")
                except (ssl.SSLError, OSError):
                    pass  # the client refused our certificate: that is what some tests expect

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def handshake(port: int, ca_file: Path, server_hostname: str) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        return tls.recv(2)


@pytest.fixture
def pem_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    ca = crypto.make_ca()
    kp = crypto.make_serving_cert(ca, "sidecar-injector", "sidecar-injector", extra_sans=["127.0.0.1"])
    paths = tmp_path / "ca.crt", tmp_path / "tls.crt", tmp_path / "tls.key"
    for path, data in zip(paths, (ca.cert_pem, kp.cert_pem, kp.key_pem), strict=True):
        path.write_bytes(data)
    return paths


def test_tls_handshake_with_service_hostname(pem_files: tuple[Path, Path, Path]) -> None:
    ca_file, cert, key = pem_files
    with tls_server(cert, key) as port:
        assert handshake(port, ca_file, HOST) == b"ok"
        assert handshake(port, ca_file, HOST + ".cluster.local") == b"ok"
        assert handshake(port, ca_file, "127.0.0.1") == b"ok"
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            handshake(port, ca_file, "sidecar-injector.other-namespace.svc")


def test_tls_handshake_fails_with_another_ca(pem_files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, cert, key = pem_files
    other = tmp_path / "other-ca.crt"
    other.write_bytes(crypto.make_ca().cert_pem)
    with tls_server(cert, key) as port, pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        handshake(port, other, HOST)


# --- the CLI -----------------------------------------------------------------------------------------------------


def cli(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sidecar-injector")
    certs_cli.add_parser(p.add_subparsers(dest="command", required=True))
    return p.parse_args(["certs", *argv])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_cli_defaults() -> None:
    args = cli("--out-dir", "x")
    assert (args.service, args.namespace, args.days, args.ca_days) == (
        "sidecar-injector",
        "sidecar-injector",
        365,
        3650,
    )
    assert (args.cluster_domain, args.extra_san, args.ca_cert, args.ca_key) == ("cluster.local", [], None, None)


def test_cli_creates_ca_and_serving_cert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "nested"
    rc = certs_cli.run(
        cli("--out-dir", str(out), "--service", "hook", "--namespace", "mesh", "--extra-san", "127.0.0.1")
    )
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    assert (mode(out / "ca.key"), mode(out / "tls.key")) == (0o600, 0o600)
    assert (mode(out / "ca.crt"), mode(out / "tls.crt")) == (0o644, 0o644)
    ca_pem, tls_pem = (out / "ca.crt").read_bytes(), (out / "tls.crt").read_bytes()
    assert crypto.signed_by(tls_pem, ca_pem) and crypto.matches_key(tls_pem, (out / "tls.key").read_bytes())
    assert crypto.matches_key(ca_pem, (out / "ca.key").read_bytes())
    assert "hook.mesh.svc" in crypto.subject_alt_names(tls_pem) and "127.0.0.1" in crypto.subject_alt_names(tls_pem)
    stdout = capsys.readouterr().out
    assert base64.b64decode(stdout.strip(), validate=True) == ca_pem
    assert stdout.count("\n") == 1


def test_cli_tightens_existing_key_file(tmp_path: Path) -> None:
    (tmp_path / "tls.key").write_text("old")
    (tmp_path / "tls.key").chmod(0o666)
    assert certs_cli.run(cli("--out-dir", str(tmp_path))) == 0
    assert mode(tmp_path / "tls.key") == 0o600
    assert (tmp_path / "tls.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_cli_reuses_given_ca(tmp_path: Path, ca: crypto.KeyPair, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "my-ca.crt").write_bytes(ca.cert_pem)
    (tmp_path / "my-ca.key").write_bytes(ca.key_pem)
    out = tmp_path / "out"
    args = cli("--out-dir", str(out), "--ca-cert", str(tmp_path / "my-ca.crt"), "--ca-key", str(tmp_path / "my-ca.key"))
    assert certs_cli.run(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
    assert (out / "ca.crt").read_bytes() == ca.cert_pem
    assert crypto.signed_by((out / "tls.crt").read_bytes(), ca.cert_pem)
    assert base64.b64decode(capsys.readouterr().out) == ca.cert_pem


def _bad_args(case: str, tmp: Path, ca: crypto.KeyPair, serving: crypto.KeyPair) -> list[str]:
    def ca_files(cert: bytes, key: bytes) -> list[str]:
        (tmp / "c.crt").write_bytes(cert)
        (tmp / "c.key").write_bytes(key)
        return ["--ca-cert", str(tmp / "c.crt"), "--ca-key", str(tmp / "c.key")]

    if case == "mismatch":
        return ca_files(ca.cert_pem, crypto.make_ca().key_pem)
    if case == "unreadable":
        return [*ca_files(ca.cert_pem, ca.key_pem)[:2], "--ca-key", str(tmp / "missing.key")]
    if case == "garbage":
        return ca_files(b"junk", ca.key_pem)
    if case == "only cert":
        return ca_files(ca.cert_pem, ca.key_pem)[:2]
    if case == "leaf as ca":
        return ca_files(serving.cert_pem, serving.key_pem)
    if case == "expired ca":
        old = crypto.make_ca(days=1, now=datetime.now(UTC) - timedelta(days=2))
        return ca_files(old.cert_pem, old.key_pem)
    return {"bad service": ["--service", "No_Such"], "bad san": ["--extra-san", "a b"], "zero days": ["--days", "0"]}[
        case
    ]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("mismatch", "does not match"),
        ("unreadable", "cannot read --ca-key"),
        ("garbage", "not a PEM certificate"),
        ("only cert", "must be given together"),
        ("leaf as ca", "is not a CA certificate"),
        ("expired ca", "has expired"),
        ("bad service", "not a DNS-1123 label"),
        ("bad san", "neither an IP address nor a DNS name"),
        ("zero days", "must be positive"),
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(
    tmp_path: Path,
    ca: crypto.KeyPair,
    serving: crypto.KeyPair,
    case: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    assert certs_cli.run(cli("--out-dir", str(out), *_bad_args(case, tmp_path, ca, serving))) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""
    assert not out.exists()
