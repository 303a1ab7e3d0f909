"""The seam between netinit and the commands it runs (iptables-save/-restore, nft, ip).

Everything that runs a command goes through a ``Runner``: tests wrap the real one to inject a failure at an exact
step, or replace it to serve canned output; production uses ``SubprocessRunner``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from typing import NamedTuple, Protocol


class Completed(NamedTuple):
    """What a command did: its exit code and output."""

    returncode: int
    stdout: str
    stderr: str


class Runner(Protocol):
    """Runs ``argv`` (with ``stdin``) to completion; a missing binary is exit 127, not an exception."""

    def run(self, argv: Sequence[str], stdin: str | None = None) -> Completed: ...


class SubprocessRunner:
    def run(self, argv: Sequence[str], stdin: str | None = None) -> Completed:
        try:
            p = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=60, check=False)
        except FileNotFoundError:
            return Completed(127, "", f"{argv[0]}: not found")
        return Completed(p.returncode, p.stdout, p.stderr)


def find_executable(name: str) -> str | None:
    """`shutil.which` for plain names, without importing shutil (and fnmatch) on the start-up path."""
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(d or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")  # an init container's PATH may lack sbin


def find_tool(name: str) -> str | None:
    """``name`` on PATH, else in the usual system directories."""
    found = find_executable(name)
    if found:
        return found
    return next((p for p in (os.path.join(d, name) for d in SBIN_DIRS) if os.access(p, os.X_OK)), None)


_DENIED = ("permission denied", "operation not permitted", "you must be root")


def denied(stderr: str) -> bool:
    """Did a command fail for want of privilege (not root, no CAP_NET_ADMIN)?"""
    low = stderr.lower()
    return any(d in low for d in _DENIED)


def privilege_message(what: str, detail: str) -> str:
    return (
        f"netinit: {what} needs root, or CAP_NET_ADMIN (and CAP_NET_RAW) in the target network namespace; "
        f"running as uid {os.geteuid()} it was refused ({detail}). Nothing was changed"
    )
