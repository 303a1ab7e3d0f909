"""One netinit at a time per network namespace.

Applying is read (snapshot) -> diff -> restore. Two runs against the same namespace - a restarted init container
racing its predecessor, two people debugging by hand - could both read "no jumps yet" and both add them, or one
could read the other's half-finished state as drift. A lock held from the snapshot to the end of the apply makes
the second run see the first one's result (and exit 0, "already in place").

The lock file is named after the namespace's identity (device and inode of /proc/self/ns/net, read after
entering it), so runs in unrelated namespaces never wait for each other. It is not /run/xtables.lock: the
iptables-restore we start takes that one itself.
"""

from __future__ import annotations

import os
import sys
import time

from netinit.errors import ApplyError

LOCK_DIR = "/run/netinit"  # an empty file per namespace ever locked; /run is a tmpfs


def acquire(timeout: float = 60.0, lock_dir: str = LOCK_DIR) -> int | None:
    """Block until this namespace is ours (returns the fd; the lock lives until the process exits or the fd is
    closed). None when no lock file can be made (e.g. a read-only /run): then we go on unlocked, saying so."""
    import fcntl

    st = os.stat("/proc/self/ns/net")
    path = os.path.join(lock_dir, f"netns-{st.st_dev}-{st.st_ino}.lock")
    try:
        os.makedirs(lock_dir, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        print(f"netinit: cannot create {path} ({e.strerror}); applying without the namespace lock", file=sys.stderr)
        return None
    deadline = time.monotonic() + timeout
    waited = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise ApplyError(
                    f"netinit: another netinit has held this network namespace for {timeout:.0f}s ({path})"
                ) from None
            if not waited:
                print("netinit: another netinit is working on this network namespace; waiting", file=sys.stderr)
                waited = True
            time.sleep(0.02)
