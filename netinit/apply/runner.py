"""The seam between netinit and the commands it runs (iptables-save/-restore, nft, ip).

Everything that runs a command goes through a ``Runner``: tests wrap the real one to inject a failure at an exact
step, or replace it to serve canned output; production uses ``SubprocessRunner``.

``SubprocessRunner`` starts commands with ``os.posix_spawnp``, not the ``subprocess`` module: importing
``subprocess`` (with ``signal``, ``threading``, ``selectors``, ``locale``, ...) cost more start-up than the
commands it ran, and netinit's run time is pod start-up time. stdin is a memfd holding the whole input (nothing to
feed while reading), stdout and stderr are pipes read until both close, within ``TIMEOUT``.
"""

from __future__ import annotations

import os
import select
import time

from netinit.typing_lite import NamedTuple, Protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

TIMEOUT = 60.0  # seconds a command may run before it is killed


class Completed(NamedTuple):
    """What a command did: its exit code and output."""

    returncode: int
    stdout: str
    stderr: str


class Runner(Protocol):
    """Runs ``argv`` (with ``stdin``) to completion; a missing binary is exit 127, not an exception."""

    def run(self, argv: Sequence[str], stdin: str | None = None) -> Completed: ...


class SubprocessRunner:
    """Runs the command, ``timeout`` seconds at most: one that takes longer is killed and reported as failed."""

    timeout = TIMEOUT

    def run(self, argv: Sequence[str], stdin: str | None = None) -> Completed:
        return spawn(argv, stdin, self.timeout)


_SIGKILL = 9
_DEFAULT_SIGNALS = (13, 25)  # SIGPIPE, SIGXFSZ: Python ignores them, a child gets the defaults back (as subprocess)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")  # any byte goes back unchanged into a later restore


def spawn(argv: Sequence[str], stdin: str | None, timeout: float) -> Completed:
    """Run ``argv`` (looked up on PATH) with ``stdin`` as its input and collect its exit code and output. A missing
    binary is exit 127; one still running after ``timeout`` seconds is killed (exit -9, and stderr says so)."""
    fds: list[int] = []  # ours to close, whatever happens
    try:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        fds += [out_r, out_w, err_r, err_w]
        actions = [(os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)]
        if stdin is not None:
            data = os.memfd_create("netinit-stdin", os.MFD_CLOEXEC)
            fds.append(data)
            payload = memoryview(stdin.encode("utf-8", "surrogateescape"))
            while payload:
                payload = payload[os.write(data, payload) :]
            os.lseek(data, 0, os.SEEK_SET)
            actions.append((os.POSIX_SPAWN_DUP2, data, 0))
        try:
            pid = os.posix_spawnp(argv[0], list(argv), os.environ, file_actions=actions, setsigdef=_DEFAULT_SIGNALS)
        except FileNotFoundError:
            return Completed(127, "", f"{argv[0]}: not found")
        for fd in (out_w, err_w):  # the child holds its copies: EOF on both pipes when it is done
            os.close(fd)
            fds.remove(fd)
        chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
        poll = select.poll()
        for fd in chunks:
            poll.register(fd, select.POLLIN)
        open_fds = len(chunks)
        deadline = time.monotonic() + timeout
        while open_fds:
            left = deadline - time.monotonic()
            ready = poll.poll(left * 1000) if left > 0 else []
            if not ready:  # past the deadline
                os.kill(pid, _SIGKILL)
                os.waitpid(pid, 0)
                err = _text(b"".join(chunks[err_r]))
                return Completed(
                    -_SIGKILL, _text(b"".join(chunks[out_r])), f"{err}{argv[0]}: killed after {timeout:g}s"
                )
            for fd, _event in ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    chunks[fd].append(chunk)
                else:
                    poll.unregister(fd)
                    open_fds -= 1
        _pid, status = os.waitpid(pid, 0)
        return Completed(
            os.waitstatus_to_exitcode(status), _text(b"".join(chunks[out_r])), _text(b"".join(chunks[err_r]))
        )
    finally:
        for fd in fds:
            os.close(fd)


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
