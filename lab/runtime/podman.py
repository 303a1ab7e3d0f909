"""The container engine, from Python: build the project's images and run them.

One home for how podman (or docker) is invoked, for tests/runtime and the runtime lab. The engine's settings
(podman with runc and ulimits this machine allows) come from ``scripts/podman-env.sh`` and the builds from
``scripts/images.sh`` - the same commands ``make images`` runs - so a Python caller and a shell user get the
same images from the same cache.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV_SCRIPT = ROOT / "scripts" / "podman-env.sh"
IMAGES_SCRIPT = ROOT / "scripts" / "images.sh"
IMAGE_NAMES = ("netinit", "injector", "envoy")


class EngineError(RuntimeError):
    """The engine could not be set up, or a command that had to succeed failed (the message has its output)."""


def missing() -> str | None:
    """Why images cannot be built and run here, or None. For skips: the reason is the message."""
    engine = os.environ.get("CONTAINER_ENGINE") or ("podman" if shutil.which("podman") else None)
    engine = engine or ("docker" if shutil.which("docker") else None)
    if engine is None:
        return "no container engine (apt-get install -y podman runc mmdebstrap)"
    if engine == "podman":
        if os.geteuid() != 0:
            return "podman here runs as root (rootless needs subuid ranges this machine lacks)"
        if not (shutil.which("runc") or shutil.which("crun")):
            return "podman has no OCI runtime (apt-get install -y runc)"
    elif shutil.which(engine) is None:
        return f"CONTAINER_ENGINE={engine} is not on PATH"
    return None


_OVERRIDES: list[Mapping[str, str]] = []


def engine_env() -> Mapping[str, str]:
    """The environment podman runs with: :func:`base_env`, or what :func:`using` set for the block."""
    return _OVERRIDES[-1] if _OVERRIDES else base_env()


@contextmanager
def using(env: Mapping[str, str]) -> Iterator[None]:
    """Run every podman command of the block with ``env`` (a second engine setup: the CNI node's own store and
    network backend, lab.runtime.cni_node), then go back."""
    _OVERRIDES.append(env)
    try:
        yield
    finally:
        _OVERRIDES.remove(env)


@functools.cache
def base_env() -> Mapping[str, str]:
    """``os.environ`` plus what scripts/podman-env.sh exports (CONTAINER_ENGINE, CONTAINERS_CONF)."""
    proc = subprocess.run(["bash", str(ENV_SCRIPT)], capture_output=True, text=True, timeout=30, check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise EngineError(f"{ENV_SCRIPT.name}: {proc.stderr.strip()}")
    env = dict(os.environ)
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key] = value
    return env


def engine() -> str:
    return engine_env()["CONTAINER_ENGINE"]


def cli(
    *args: str, check: bool = True, timeout: float = 120, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``podman ARGS`` (or docker) with the project's engine settings; ``check`` raises EngineError on failure."""
    proc = subprocess.run(
        [engine(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=input,
        env=dict(engine_env()),
    )
    if check and proc.returncode != 0:
        raise EngineError(f"{engine()} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass(frozen=True)
class Built:
    """What scripts/images.sh built: image names by short name, whether each came from the cache, the base."""

    engine: str
    base: str
    images: dict[str, str]
    status: dict[str, str]
    output: str = field(repr=False)


def build_images(env: Mapping[str, str] | None = None, timeout: float = 3600) -> Built:
    """Run scripts/images.sh (cached: seconds when nothing changed) and say what it built."""
    with tempfile.TemporaryDirectory(prefix="images-") as d:
        summary = Path(d, "summary")
        proc = subprocess.run(
            ["bash", str(IMAGES_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=ROOT,
            env={**engine_env(), **(env or {}), "IMAGES_SUMMARY": str(summary)},
        )
        if proc.returncode != 0:
            raise EngineError(f"scripts/images.sh exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        values = dict(line.split("=", 1) for line in summary.read_text().splitlines() if "=" in line)
    return Built(
        engine=values["engine"],
        base=values["base"],
        images={n: values[n] for n in IMAGE_NAMES},
        status={n: values[f"{n}_status"] for n in IMAGE_NAMES},
        output=proc.stdout + proc.stderr,
    )


def image_exists(image: str) -> bool:
    return cli("image", "inspect", image, check=False).returncode == 0


def image_size(image: str) -> int:
    """Uncompressed size in bytes, as ``podman images`` counts it."""
    return int(cli("image", "inspect", "-f", "{{.Size}}", image).stdout.strip())


def image_user(image: str) -> str:
    """The image's USER (``uid:gid`` as written in the Dockerfile; empty means root)."""
    user = local_image_user(image)
    if user is None:
        raise EngineError(f"image {image!r} is not in the local store")
    return user


def local_image_user(image: str) -> str | None:
    """The image's USER, or None when the image is not in the local store: one inspect for both questions."""
    proc = cli("image", "inspect", "-f", "{{.Config.User}}", image, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


@dataclass(frozen=True)
class Opts:
    """How to run a container. ``read_only`` is Kubernetes' ``readOnlyRootFilesystem``: nothing is writable unless
    ``tmpfs`` says so (podman would otherwise add its own tmpfs on /tmp). ``extra``: more ``run`` flags."""

    user: str | None = None
    entrypoint: str | None = None
    read_only: bool = False
    tmpfs: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    extra: tuple[str, ...] = ()

    def args(self, image: str, cmd: Sequence[str] = ()) -> list[str]:
        """The arguments of ``podman run`` after ``run``."""
        out: list[str] = []
        if self.user is not None:
            out += ["--user", self.user]
        if self.entrypoint is not None:
            out += ["--entrypoint", self.entrypoint]
        if self.read_only:
            out += ["--read-only"]
            if engine() == "podman":
                out += ["--read-only-tmpfs=false"]
        for path in self.tmpfs:
            out += ["--tmpfs", path]
        for volume in self.volumes:
            out += ["-v", volume]
        for key, value in self.env:
            out += ["-e", f"{key}={value}"]
        return [*out, *self.extra, image, *cmd]


def run(
    image: str, *cmd: str, opts: Opts = Opts(), timeout: float = 120, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a throwaway container to completion (``--rm``); the result whatever the exit code."""
    return cli("run", "--rm", *opts.args(image, cmd), check=False, timeout=timeout, input=input)


def run_and_diff(
    image: str, *cmd: str, opts: Opts = Opts(), timeout: float = 120
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run a container to completion, then list what it changed in its filesystem (``podman diff``: lines
    ``A path``, ``C path``, ``D path``); the container is removed either way."""
    name = f"si-diff-{uuid.uuid4().hex[:12]}"
    try:
        proc = cli("run", "--name", name, *opts.args(image, cmd), check=False, timeout=timeout)
        changes = cli("diff", name).stdout.splitlines()
    finally:
        cli("rm", "-f", name, check=False)
    return proc, changes


@contextmanager
def container(image: str, *cmd: str, opts: Opts = Opts()) -> Iterator[str]:
    """A detached container for the duration of the block; yields its name, always removed."""
    name = f"si-{uuid.uuid4().hex[:12]}"
    cli("run", "-d", "--name", name, *opts.args(image, cmd))
    try:
        yield name
    finally:
        cli("rm", "-f", "-t", "0", name, check=False)


def logs(name: str) -> str:
    proc = cli("logs", name, check=False)
    return proc.stdout + proc.stderr


@dataclass(frozen=True)
class CgroupMemory:
    """A container's memory as its memory cgroup counts it, in bytes: what cadvisor exports and the kubelet acts
    on. ``usage`` is ``container_memory_usage_bytes`` (Istio's performance runs report this for istio-proxy);
    ``working_set`` is usage less the inactive page cache, ``container_memory_working_set_bytes``: what
    ``kubectl top`` shows and evictions and memory limits go by; ``anon`` is the container's own heap and stacks;
    ``file`` the page cache charged to it (files it was the first to read)."""

    usage: int
    working_set: int
    anon: int
    file: int


def cgroup_memory(usage: str, stat: str, version: int) -> CgroupMemory:
    """Parse a memory cgroup's usage file and ``memory.stat`` (v1: ``memory.usage_in_bytes`` and its ``total_*``
    rows, which include child cgroups; v2: ``memory.current``, whose rows already do), as cadvisor does."""
    rows = {}
    for line in stat.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            rows[key] = int(value)
    prefix, anon, file = ("total_", "rss", "cache") if version == 1 else ("", "anon", "file")
    used = int(usage.strip())
    inactive = rows.get(f"{prefix}inactive_file", 0)
    return CgroupMemory(
        usage=used,
        working_set=used - inactive if inactive < used else 0,
        anon=rows.get(f"{prefix}{anon}", 0),
        file=rows.get(f"{prefix}{file}", 0),
    )


def memory_cgroup(name: str, root: Path = Path("/sys/fs/cgroup")) -> tuple[int, Path]:
    """The cgroup version and directory of a running container's memory controller (``podman inspect`` names its
    cgroup; hybrid hosts such as this one keep the memory controller on v1)."""
    rel = cli("inspect", "-f", "{{.State.CgroupPath}}", name).stdout.strip().lstrip("/")
    if not rel:
        raise EngineError(f"container {name}: podman reports no cgroup (is it running?)")
    for version, directory, usage in (
        (1, root / "memory" / rel, "memory.usage_in_bytes"),
        (2, root / rel, "memory.current"),
    ):
        if (directory / usage).is_file():
            return version, directory
    raise EngineError(f"container {name}: no memory cgroup under {root} for {rel}")


def read_memory(version: int, directory: Path) -> CgroupMemory:
    """The memory cgroup ``directory`` now (no podman call: cheap enough to sample every second under load)."""
    usage = directory / ("memory.usage_in_bytes" if version == 1 else "memory.current")
    return cgroup_memory(usage.read_text(), (directory / "memory.stat").read_text(), version)


def container_memory(name: str) -> CgroupMemory:
    """A running container's memory as its cgroup counts it."""
    return read_memory(*memory_cgroup(name))
