"""``sidecar-injector certs``: write a CA and a serving certificate for the webhook Service, print the caBundle."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from injector.certs.crypto import (
    DEFAULT_CLUSTER_DOMAIN,
    DEFAULT_NAMESPACE,
    DEFAULT_SERVICE,
    KeyPair,
    ca_bundle,
    is_ca,
    make_ca,
    make_serving_cert,
    matches_key,
    needs_renewal,
)
from injector.files import write_atomic


class _BadInput(Exception):
    """A flag or input file the command cannot use; reported with exit code 2 before anything is written."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``certs``; kept here so the flags live next to the code that reads them."""
    p = subparsers.add_parser(
        "certs",
        help="create a CA and a serving certificate for the webhook Service",
        description="Write ca.crt, ca.key (when a CA is created), tls.crt and tls.key to --out-dir and print the "
        "base64 caBundle for the MutatingWebhookConfiguration on stdout.",
    )
    p.add_argument("--service", default=DEFAULT_SERVICE, help="webhook Service name (default: %(default)s)")
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="webhook Service namespace (default: %(default)s)")
    p.add_argument("--out-dir", required=True, help="directory to write the PEM files to (created if missing)")
    p.add_argument("--days", type=int, default=365, help="serving certificate lifetime in days (default: %(default)s)")
    p.add_argument("--ca-days", type=int, default=3650, help="CA lifetime in days (default: %(default)s)")
    p.add_argument("--cluster-domain", default=DEFAULT_CLUSTER_DOMAIN, help="cluster DNS domain (default: %(default)s)")
    p.add_argument(
        "--extra-san",
        action="append",
        default=[],
        metavar="NAME|IP",
        help="additional DNS name or IP address SAN, repeatable (e.g. 127.0.0.1 for a local demo)",
    )
    p.add_argument("--ca-cert", help="reuse this CA certificate (PEM) instead of creating one; needs --ca-key")
    p.add_argument("--ca-key", help="private key (PEM, unencrypted) of --ca-cert")


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise _BadInput(f"cannot read {what} {path}: {e.strerror}") from e


def _load_ca(args: argparse.Namespace) -> KeyPair | None:
    if args.ca_cert is None and args.ca_key is None:
        return None
    if args.ca_cert is None or args.ca_key is None:
        raise _BadInput("--ca-cert and --ca-key must be given together")
    ca = KeyPair(_read(args.ca_cert, "--ca-cert"), _read(args.ca_key, "--ca-key"))
    try:
        if not is_ca(ca.cert_pem):
            raise _BadInput(f"--ca-cert {args.ca_cert} is not a CA certificate (BasicConstraints ca=false or missing)")
        if not matches_key(ca.cert_pem, ca.key_pem):
            raise _BadInput(f"--ca-key {args.ca_key} does not match --ca-cert {args.ca_cert}")
    except ValueError as e:
        raise _BadInput(f"--ca-cert/--ca-key: {e}") from e
    return ca


def run(args: argparse.Namespace) -> int:
    """Exit codes: 0 written, 2 bad flags or unusable CA input (nothing written), 1 the files could not be written."""
    try:
        if args.days <= 0 or args.ca_days <= 0:
            raise _BadInput("--days and --ca-days must be positive")
        reused = _load_ca(args)
        ca = reused or make_ca(days=args.ca_days)
        if reused is not None and needs_renewal(ca.cert_pem, datetime.now(UTC), timedelta(0)):
            raise _BadInput(f"--ca-cert {args.ca_cert} has expired")
        try:
            serving = make_serving_cert(
                ca, args.service, args.namespace, args.days, args.cluster_domain, args.extra_san
            )
        except ValueError as e:
            raise _BadInput(str(e)) from e
    except _BadInput as e:
        print(f"sidecar-injector certs: {e}", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    files = [("ca.crt", ca.cert_pem, 0o644), ("tls.crt", serving.cert_pem, 0o644), ("tls.key", serving.key_pem, 0o600)]
    if reused is None:
        files.insert(1, ("ca.key", ca.key_pem, 0o600))
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, data, mode in files:
            write_atomic(out / name, data, mode)
    except OSError as e:
        print(f"sidecar-injector certs: cannot write to {out}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"sidecar-injector certs: wrote {', '.join(n for n, _, _ in files)} to {out}", file=sys.stderr)
    print(ca_bundle(ca.cert_pem))
    return 0
