"""``sidecar-injector``: kube-inject (offline injection of manifests). ``serve`` and ``certs`` come with the
webhook issue; until then they are not offered rather than half-working.

Exit codes: 0 injected (or nothing to inject), 1 a pod was refused (bad annotation, unknown template) or the
input is not YAML, 2 bad flags or a broken config directory.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from .config import NATIVE_MODES, load_config
from .errors import ConfigError, Refused


def _kube_version(value: str) -> tuple[int, int]:
    m = re.fullmatch(r"v?(\d+)\.(\d+)(\.\d+)?", value)
    if not m:
        raise argparse.ArgumentTypeError(f"expected MAJOR.MINOR such as 1.31, got {value!r}")
    return int(m.group(1)), int(m.group(2))


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
    return p


def kube_inject(args: argparse.Namespace) -> int:
    from .workloads import Options, inject_text

    try:
        config = load_config(args.config_dir)
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
    return 2  # pragma: no cover - argparse rejects unknown commands


def main_entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
