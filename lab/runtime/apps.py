"""The app images of the runtime lab: ``localhost/sidecar-injector-lab-echo:<hash>`` (and, for the benchmarks,
``binary_image``: one static binary as the entrypoint).

Why a tiny image of its own rather than ``python`` out of the injector image with a script on its command line:

- the pods then look like real workloads: the app's process comes from its image's ENTRYPOINT and its user from
  the image's ``USER 1000:1000``, so the kubelet's rules for an unset ``command`` or ``runAsUser`` (and
  ``runAsNonRoot`` checked against the image's USER) are exercised, and nothing in a pod spec is lab-specific;
- the app shares nothing with the webhook under test (no injector code or dependencies in the app container);
- it costs one ``COPY`` layer over the base the three shipped images are already built on (the pinned python
  image, or the mmdebstrap stand-in): built in about a second, offline (``--network none``), once per content
  hash, and cached by the engine like the other images.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from lab.runtime import podman

ECHO_SOURCE = Path(__file__).with_name("echo_app.py")
APP_UID = 1000

CONTAINERFILE = """\
FROM {base}
COPY echo.py /echo.py
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER {uid}:{uid}
EXPOSE 8080
ENTRYPOINT ["python3", "/echo.py"]
"""


def _build(name: str, containerfile: str, files: dict[str, bytes], mode: int = 0o644) -> str:
    """Build (or find) ``localhost/sidecar-injector-lab-NAME:<hash of the Containerfile and the files>``, offline;
    its name."""
    digest = hashlib.sha256(containerfile.encode() + b"".join(files.values())).hexdigest()[:12]
    image = f"localhost/sidecar-injector-lab-{name}:{digest}"
    if podman.image_exists(image):
        return image
    with tempfile.TemporaryDirectory(prefix=f"lab-{name}-") as d:
        Path(d, "Containerfile").write_text(containerfile)
        for file, data in files.items():
            Path(d, file).write_bytes(data)
            Path(d, file).chmod(mode)
        podman.cli("build", "--network", "none", "-q", "-f", f"{d}/Containerfile", "-t", image, d, timeout=300)
    return image


def echo_image(base: str) -> str:
    """Build (or find) the echo app image on ``base``; its name."""
    return _build("echo", CONTAINERFILE.format(base=base, uid=APP_UID), {"echo.py": ECHO_SOURCE.read_bytes()})


BINARY_CONTAINERFILE = """\
FROM {base}
COPY {name} /{name}
USER {uid}:{uid}
ENTRYPOINT {entrypoint}
"""


def binary_image(base: str, binary: Path, *args: str) -> str:
    """Build (or find) an image on ``base`` whose entrypoint is ``binary ARGS`` as uid 1000 (a static binary: the
    benchmarks' C app server); its name, by content."""
    import json

    text = BINARY_CONTAINERFILE.format(
        base=base, name=binary.name, uid=APP_UID, entrypoint=json.dumps([f"/{binary.name}", *args])
    )
    return _build(binary.name, text, {binary.name: binary.read_bytes()}, mode=0o755)
