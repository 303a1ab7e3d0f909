"""``sidecar-injector``: serve | kube-inject | certs.

The injector core and the webhook are the next milestones (issues "Injector core" and "Webhook server");
until they land this entry point says so plainly instead of pretending.
"""

from __future__ import annotations

import sys


def main() -> None:
    print(
        "sidecar-injector: not built yet - the injector core (kube-inject) and the webhook (serve) are the "
        "next milestones; netinit is available now.",
        file=sys.stderr,
    )
    sys.exit(2)


if __name__ == "__main__":
    main()
