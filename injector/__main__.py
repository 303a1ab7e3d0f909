"""``sidecar-injector``: serve (the admission webhook) | kube-inject (offline injection) | certs (a CA and a
serving certificate for the webhook's Service).

Thin: parse flags, call the core. Heavy modules (FastAPI, uvicorn) are imported only by ``serve``.
Exit codes: 0 done, 1 a pod was refused (kube-inject) or serving failed, 2 bad flags, config or certificate.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from injector.core.config import NATIVE_MODES, load_config, parse_kube_version
from injector.core.inject import check_config
from injector.errors import ConfigError, Refused


def _kube_version(value: str) -> tuple[int, int]:
    try:
        return parse_kube_version(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sidecar-injector", description="Istio-compatible sidecar injection.")
    sub = p.add_subparsers(dest="command", required=True)
    k = sub.add_parser("kube-inject", help="inject sidecars into manifests (like istioctl kube-inject)")
    k.add_argument("-f", "--filename", required=True, help="multi-document YAML file, or - for stdin")
    k.add_argument("-o", "--output", help="write here instead of stdout")
    k.add_argument("--config-dir", help="directory with config.yaml / values.yaml / *.yaml.j2 (default: built-in)")
    k.add_argument(
        "--native-sidecar", choices=NATIVE_MODES, help="override values' sidecarInjectorWebhook.nativeSidecar"
    )
    k.add_argument("--revision", default="", help="control-plane revision recorded in sidecar.istio.io/status")
    k.add_argument(
        "--kube-version",
        type=_kube_version,
        help="Kubernetes version of the target cluster, for --native-sidecar auto (unknown: legacy layout)",
    )
    from injector.certs import cli as certs_cli
    from injector.proxy import cli as proxy_cli

    certs_cli.add_parser(sub)
    proxy_cli.add_parser(sub)
    s = sub.add_parser("serve", help="serve the admission webhook over HTTPS")
    s.add_argument("--port", type=int, default=9443)
    s.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    s.add_argument("--tls-cert-file", help="serving certificate (PEM); re-read when it changes")
    s.add_argument("--tls-key-file", help="its private key (PEM); re-read when it changes")
    m = s.add_argument_group("self-managed certificate (instead of --tls-*-file)")
    m.add_argument("--cert-secret", help="Secret holding ca.crt/ca.key/tls.crt/tls.key; created when missing")
    m.add_argument("--webhook-config", default="sidecar-injector", help="MutatingWebhookConfiguration to patch")
    m.add_argument("--service", default="sidecar-injector", help="the webhook's Service (certificate names)")
    m.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "sidecar-injector"))
    m.add_argument("--cert-dir", default="/tmp/certs", help="where the fetched certificate is written")
    m.add_argument("--kube-api-server", help="API server URL (default: in-cluster); for tests and local runs")
    m.add_argument("--cert-check-interval", type=float, default=3600.0, help="seconds between renewal checks")
    m.add_argument("--cluster-domain", default="cluster.local", help="DNS suffix for the certificate's names")
    m.add_argument("--cert-retries", type=int, default=8, help="start-up attempts to obtain the certificate")
    m.add_argument("--cert-retry-delay", type=float, default=1.0, help="first wait between attempts (doubles)")
    s.add_argument("--config-dir", help="config.yaml / values.yaml / *.yaml.j2 (a mounted ConfigMap); watched")
    s.add_argument("--revision", default="", help="control-plane revision recorded in sidecar.istio.io/status")
    s.add_argument("--kube-version", type=_kube_version, help="API server version, for nativeSidecar auto")
    s.add_argument("--reload-interval", type=float, default=1.0, help="seconds between checks of config and certs")
    s.add_argument("--request-timeout", type=float, default=10.0, help="seconds to wait for a request body")
    s.add_argument("--workers", type=int, default=1, help="serving processes sharing the port (one per core)")
    return p


def serve(args: argparse.Namespace) -> int:
    import ssl
    from pathlib import Path

    from injector import log
    from injector.certs.keeper import SelfManaged
    from injector.certs.kube import KubeError
    from injector.server.serve import ServeOptions, run

    self_managed = None
    if args.cert_secret:
        if args.tls_cert_file or args.tls_key_file:
            print("sidecar-injector: give either --cert-secret or --tls-cert-file/--tls-key-file", file=sys.stderr)
            return 2
        cert_dir = Path(args.cert_dir)
        args.tls_cert_file, args.tls_key_file = str(cert_dir / "tls.crt"), str(cert_dir / "tls.key")
        self_managed = SelfManaged(
            args.cert_secret,
            args.webhook_config,
            args.service,
            args.namespace,
            cert_dir,
            args.kube_api_server,
            args.cert_check_interval,
            args.cluster_domain,
            max(1, args.cert_retries),
            args.cert_retry_delay,
        )
    elif not (args.tls_cert_file and args.tls_key_file):
        print("sidecar-injector: serve needs --tls-cert-file and --tls-key-file, or --cert-secret", file=sys.stderr)
        return 2
    opts = ServeOptions(
        port=args.port,
        host=args.host,
        cert_file=Path(args.tls_cert_file),
        key_file=Path(args.tls_key_file),
        config_dir=Path(args.config_dir) if args.config_dir else None,
        revision=args.revision,
        kube_version=args.kube_version,
        reload_interval=args.reload_interval,
        body_timeout=args.request_timeout,
        self_managed=self_managed,
        discover_kube_version=self_managed is not None or "KUBERNETES_SERVICE_HOST" in os.environ,
    )
    if not _has_tempdir():
        print(
            "sidecar-injector: serve needs a writable temporary directory ($TMPDIR or /tmp) to load its certificate: "
            "with a read-only root filesystem, mount an emptyDir at /tmp (as manifests/base/deployment.yaml does)",
            file=sys.stderr,
        )
        return 2
    log.configure()
    try:
        return run(opts, args.workers)
    except ConfigError as e:
        print(f"sidecar-injector: config: {e}", file=sys.stderr)
        return 2
    except (OSError, ssl.SSLError) as e:
        print(f"sidecar-injector: cannot load the serving certificate or listen: {e}", file=sys.stderr)
        return 2
    except KubeError as e:
        print(f"sidecar-injector: cannot obtain the serving certificate: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _has_tempdir() -> bool:
    """Whether ``tempfile`` finds a writable directory: certificates are staged through one before loading."""
    import tempfile

    try:
        tempfile.gettempdir()
    except FileNotFoundError:
        return False
    return True


def kube_inject(args: argparse.Namespace) -> int:
    from injector.core.workloads import Options, inject_text

    try:
        config = check_config(load_config(args.config_dir))
        text = sys.stdin.read() if args.filename == "-" else open(args.filename).read()
    except ConfigError as e:
        print(f"sidecar-injector: config: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"sidecar-injector: cannot read {args.filename}: {e.strerror}", file=sys.stderr)
        return 2
    opts = Options(config, args.revision, args.native_sidecar, args.kube_version)
    try:
        out = inject_text(text, opts)
    except Refused as e:
        print(f"sidecar-injector: refused: {e}", file=sys.stderr)
        return 1
    if args.output:
        with open(args.output, "w") as f:
            f.write(out)
    else:
        sys.stdout.write(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "kube-inject":
        return kube_inject(args)
    if args.command == "serve":
        return serve(args)
    if args.command == "proxy-config":
        from injector.proxy import cli as proxy_cli

        return proxy_cli.run(args)
    if args.command == "certs":
        from injector.certs import cli as certs_cli

        return certs_cli.run(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


def main_entry() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`sidecar-injector certs ... | head`): not an error of ours, and no traceback.
        # Python's own advice: point stdout at devnull so the flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main_entry()
