"""The CNI agent's one atomic file writer: a temporary file in the same directory, renamed over the target, so a
runtime (reading a conflist, executing the plugin) or a restarted agent (reading a record) never sees half a
file. (The injector has its own in injector.files; the agent's image carries no injector.)"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
