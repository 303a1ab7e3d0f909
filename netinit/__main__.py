"""``netinit``: istio-iptables-compatible capture. Dispatch only.

``netinit [FLAGS]`` is the apply path (``netinit.apply.cli``). ``netinit explain|show|verify ...`` are the
debugging commands (``netinit.debug.cli``), imported only when that word comes first: istio-iptables takes no
positional arguments, so the flag form is unaffected.

Exit codes: 0 done (or already in place), 2 bad input (nothing touched), 1 apply failed (rolled back),
126 validation failed.
"""

from __future__ import annotations

import os
import sys

from netinit.apply import cli as apply_cli
from netinit.apply.runner import Runner, SubprocessRunner

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

DEBUG_COMMANDS = ("explain", "show", "verify")


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None, runner: Runner | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    runner = runner or SubprocessRunner()
    if argv and argv[0] in DEBUG_COMMANDS:
        from netinit.debug import cli as debug_cli  # lazy: the apply path never imports the debugging commands

        return debug_cli.run(argv[0], argv[1:], env, runner)
    return apply_cli.run(argv, env, runner)


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
