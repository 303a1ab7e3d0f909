"""The injector's one logger: every line is one JSON object, so a log pipeline can parse every line.

``configure()`` (called by ``serve``) installs the JSON formatter; library code only calls ``info``/``warning``/
``error`` with a message and fields. Nothing else in the product creates a logger.
"""

from __future__ import annotations

import json
import logging
from typing import IO, Any

NAME = "sidecar_injector"
log = logging.getLogger(NAME)


def emit(level: int, fields: dict[str, Any]) -> None:
    """One JSON line from ``fields`` as they are (the request log line has no ``msg``)."""
    if log.isEnabledFor(level):
        log.log(level, json.dumps(fields, default=str))


def info(msg: str, **fields: Any) -> None:
    emit(logging.INFO, {"msg": msg, **fields})


def warning(msg: str, **fields: Any) -> None:
    emit(logging.WARNING, {"msg": msg, **fields})


def error(msg: str, **fields: Any) -> None:
    emit(logging.ERROR, {"msg": msg, **fields})


def configure(stream: IO[str] | None = None) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter('{"ts":"%(asctime)s","level":"%(levelname)s","log":%(message)s}'))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
