"""``proxy-config log``'s grammar, pure: istioctl's ``--level`` spec and Envoy's ``/logging`` answer.

``--level`` is istioctl's: ``LEVEL`` (every logger), or ``LOGGER:LEVEL,...`` (``=`` also separates; the logger
``level`` means every logger, as in istioctl), levels ``trace debug info warning error critical off`` with
``warn`` for ``warning``. Logger names are checked against the ones the proxy itself lists, so a typo is
refused before any level changes.
"""

from __future__ import annotations

# istioctl's stringToLevel; the values are the names Envoy's /logging takes.
LEVELS = {
    "trace": "trace",
    "debug": "debug",
    "info": "info",
    "warning": "warning",
    "warn": "warning",
    "error": "error",
    "critical": "critical",
    "off": "off",
}
ALL = "level"  # istioctl's defaultLoggerName: "level:debug" is "debug" for every logger


class LevelError(ValueError):
    """A ``--level`` that names an unknown level or logger (exit 2; nothing was changed)."""


def level(text: str) -> str:
    """A level as Envoy's /logging names it; LevelError when it is not one."""
    try:
        return LEVELS[text.strip().lower()]
    except KeyError:
        raise LevelError(
            f"unrecognized logging level: {text} (one of {', '.join(sorted(set(LEVELS.values())))})"
        ) from None


def parse_spec(spec: str, loggers: set[str]) -> tuple[str | None, dict[str, str]]:
    """``--level`` -> (the level for every logger or None, {logger: level}); ``loggers`` are the proxy's."""
    every: str | None = None
    per: dict[str, str] = {}
    for item in (i.strip() for i in spec.split(",")):
        if not item:
            continue
        if ":" not in item and "=" not in item:
            every = level(item)
            continue
        last = item.split("::")[-1]  # istioctl drops a "namespace::" before the logger
        cuts = [i for i in (last.find(":"), last.find("=")) if i >= 0]
        if not cuts:
            raise LevelError(f"--level {item!r}: expected LOGGER:LEVEL")
        cut = min(cuts)
        name, value = last[:cut].strip(), last[cut + 1 :]
        if name == ALL:
            every = level(value)
        elif name not in loggers:
            raise LevelError(f"unrecognized logger name: {name} (the proxy has: {', '.join(sorted(loggers))})")
        else:
            per[name] = level(value)
    if every is None and not per:
        raise LevelError(f"--level {spec!r} names no level")
    return every, per


def parse_loggers(text: str) -> dict[str, str]:
    """Envoy's ``active loggers:`` answer -> {logger: level}, in its order; ValueError when it is not that."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "active loggers:":
        raise ValueError(f"not Envoy's /logging answer ({text[:80]!r})")
    out: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.strip().partition(": ")
        if sep:
            out[name] = value.strip()
    return out
