"""Re-read a file-backed value when its files change, keeping the last good one when the new one is broken.

Serves the config directory (a mounted ConfigMap, with its ``..data`` symlink swaps) and the serving certificate.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from injector import log
from injector.server.metrics import Metrics

T = TypeVar("T")


def fingerprint(paths: list[Path]) -> Hashable:
    """What changes when a file or a directory's files change - also through ConfigMap ``..data`` symlink swaps."""
    out: list[tuple[str, int, int, int]] = []
    for p in paths:
        files = sorted(p.iterdir()) if p.is_dir() else [p]
        for f in files:
            try:
                st = f.stat()  # follows symlinks: a swapped ..data target changes inode/mtime
            except OSError:
                continue
            if not f.is_dir():
                out.append((str(f), st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


@dataclass
class Reloader(Generic[T]):
    """Re-runs ``load`` when ``paths`` change and stay unchanged for ``debounce`` seconds; keeps the last good
    value when ``load`` fails. Poll-driven (``poll(now)``) so it needs no inotify and is tested with a clock."""

    what: str
    paths: list[Path]
    load: Callable[[], T]
    metrics: Metrics
    debounce: float = 0.5
    retry_failures: bool = False  # certs: a key written just after its cert is worth retrying
    value: T | None = None
    last_error: str | None = None
    _applied: Hashable = None
    _pending: Hashable = None
    _pending_since: float = 0.0
    _counted_failure: Hashable = field(default=None, repr=False)

    def initial(self) -> T:
        """The first load; errors propagate (a server without a config must not start)."""
        self._applied = fingerprint(self.paths)
        self.value = self.load()
        self.metrics.last_reload_ok.labels(self.what).set(1)
        return self.value

    def initial_or_wait(self) -> bool:
        """The first load, but a failure only means "not yet": the value stays None (not ready) until the
        files change and load. True when loaded."""
        try:
            self.initial()
        except Exception as e:  # noqa: BLE001 - any failure: report, wait for the files to change
            self.last_error = f"{type(e).__name__}: {e}"
            self.metrics.last_reload_ok.labels(self.what).set(0)
            log.error(f"{self.what} not loadable yet; not ready until it is", error=self.last_error)
            return False
        return True

    def poll(self, now: float) -> bool:
        """Reload if due; True when a new value was installed."""
        fp = fingerprint(self.paths)
        if fp == self._applied:
            self._pending = None
            return False
        if fp != self._pending:
            self._pending, self._pending_since = fp, now
            return False
        if now - self._pending_since < self.debounce:
            return False
        try:
            value = self.load()
        except Exception as e:  # noqa: BLE001 - any failure keeps the last good value; the message says which
            self.last_error = f"{type(e).__name__}: {e}"
            if self._counted_failure != fp:
                self._counted_failure = fp
                self.metrics.reloads.labels(self.what, "failure").inc()
                self.metrics.last_reload_ok.labels(self.what).set(0)
                msg = f"{self.what} reload failed; keeping the last good one"
                log.error(msg, error=self.last_error)
            if not self.retry_failures:
                self._applied = fp
            return False
        self.value, self._applied, self.last_error = value, fp, None
        self.metrics.reloads.labels(self.what, "success").inc()
        self.metrics.last_reload_ok.labels(self.what).set(1)
        log.info(f"{self.what} reloaded")
        return True
