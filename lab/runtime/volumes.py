"""A pod's volumes made on the host the way the kubelet makes them, then bind-mounted into its containers.

Per pod, under its work directory:

- ``emptyDir``: a directory (mode 0777) shared by the pod's containers; ``medium: Memory`` is a tmpfs mounted
  there (``size`` = ``sizeLimit``), unmounted at teardown.
- ``configMap`` / ``secret``: the files of the data the lab was given (``config_maps`` / ``secrets``: name ->
  key -> text), ``items`` and ``defaultMode`` honoured; an absent one is an error unless ``optional: true``, in
  which case the volume is an empty directory (what the kubelet mounts).
- ``downwardAPI``: the files the kubelet writes: ``metadata.labels`` / ``annotations`` as ``key="value"`` lines
  (sorted, values quoted), name, namespace, uid, resourceFieldRefs of a named container.
- ``projected``: its sources (``serviceAccountToken``: a fake JWT with the audience, expiry and subject the
  kubelet would put there - no API server signed it; ``configMap``, ``secret``, ``downwardAPI``).

With a pod ``fsGroup`` the files belong to that group (and emptyDirs are setgid), as the kubelet's ownership
change does. Any other volume type, and a mount of a volume that does not exist, raise
:class:`~lab.runtime.translate.Unhonourable` naming the field.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import podspec
from lab.runtime.translate import Unhonourable

SUPPORTED = ("emptyDir", "configMap", "secret", "downwardAPI", "projected")


@dataclass
class PodVolumes:
    """The host side of a pod's volumes: name -> host directory; ``tmpfs``: what teardown unmounts."""

    root: Path
    paths: dict[str, Path] = field(default_factory=dict)
    read_only: dict[str, bool] = field(default_factory=dict)
    tmpfs: list[Path] = field(default_factory=list)

    def mounts(self, container: Mapping[str, Any], index: str) -> list[str]:
        """``--volume`` values for a container's volumeMounts (``subPath`` and ``readOnly`` honoured)."""
        out: list[str] = []
        for i, mount in enumerate(container.get("volumeMounts") or []):
            name = str(mount.get("name"))
            if name not in self.paths:
                raise Unhonourable(
                    f"container {container.get('name')!r} ({index}.volumeMounts[{i}]): volume {name!r} is not "
                    "in spec.volumes"
                )
            host = self.paths[name]
            if mount.get("subPath"):
                host = host / str(mount["subPath"])
                if not host.exists():
                    host.mkdir(parents=True, exist_ok=True)
            ro = bool(mount.get("readOnly")) or self.read_only[name]
            out.append(f"{host}:{mount['mountPath']}:{'ro' if ro else 'rw'}")
        return out

    def close(self) -> None:
        for path in reversed(self.tmpfs):
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=False)
        self.tmpfs.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def fake_token(pod: Mapping[str, Any], audience: str, seconds: int) -> str:
    """An unsigned-looking JWT shaped like a projected service-account token (nothing verifies it here)."""
    meta = pod.get("metadata") or {}
    sa = str((pod.get("spec") or {}).get("serviceAccountName") or "default")
    ns = str(meta.get("namespace") or "default")
    now = int(time.time())
    claims = {
        "aud": [audience],
        "exp": now + seconds,
        "iat": now,
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": f"system:serviceaccount:{ns}:{sa}",
        "kubernetes.io": {"namespace": ns, "pod": {"name": meta.get("name", "")}, "serviceaccount": {"name": sa}},
    }

    def part(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'kid': 'runtime-lab'})}.{part(claims)}.{part('not-signed')}"


def _quote(value: str) -> str:
    return json.dumps(value)  # the kubelet's %q for these files: a double-quoted, escaped string


def _downward_files(
    items: list[Mapping[str, Any]], pod: Mapping[str, Any], pod_ip: str, node: podspec.Node, where: str
) -> dict[str, str]:
    meta = pod.get("metadata") or {}
    containers = {str(c.get("name")): c for c in podspec.all_containers(pod)}
    out: dict[str, str] = {}
    for i, item in enumerate(items):
        path = str(item["path"])
        if "fieldRef" in item:
            ref = str(item["fieldRef"]["fieldPath"])
            if ref in ("metadata.labels", "metadata.annotations"):
                data = meta.get(ref.split(".")[1]) or {}
                out[path] = "".join(f"{k}={_quote(str(v))}\n" for k, v in sorted(data.items()))
            else:
                out[path] = podspec.field_ref(pod, ref, pod_ip, node, f"{where}.items[{i}]")
        elif "resourceFieldRef" in item:
            ref_r = item["resourceFieldRef"]
            target = containers.get(str(ref_r.get("containerName")))
            if target is None:
                raise Unhonourable(f"{where}.items[{i}]: resourceFieldRef names no container of the pod")
            out[path] = podspec.resource_value(target, str(ref_r["resource"]), ref_r.get("divisor"), node)
        else:
            raise Unhonourable(f"{where}.items[{i}]: neither fieldRef nor resourceFieldRef")
    return out


def _keyed_files(
    kind: str, source: Mapping[str, Any], store: Mapping[str, Mapping[str, str]], where: str
) -> dict[str, str] | None:
    """The files of a configMap/secret source; None when absent and optional."""
    name = str(source.get("name") or source.get("secretName"))
    data = store.get(name)
    if data is None:
        if source.get("optional"):
            return None
        raise Unhonourable(f"{where}: {kind} {name!r} does not exist (and is not optional)")
    items = source.get("items")
    if not items:
        return dict(data)
    out = {}
    for item in items:
        if str(item["key"]) in data:
            out[str(item["path"])] = data[str(item["key"])]
        elif not source.get("optional"):
            raise Unhonourable(f"{where}: {kind} {name!r} has no key {item['key']!r}")
    return out


def _write(directory: Path, files: Mapping[str, str], mode: int, group: int | None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)
        if group is not None:
            os.chown(target, 0, group)
    directory.chmod(0o755)


def _kind(volume: Mapping[str, Any]) -> str:
    kinds = [k for k in volume if k != "name"]
    return kinds[0] if kinds else "?"


def validate_volumes(pod: Mapping[str, Any]) -> None:
    """Refuse, before anything is made, a volume type the lab cannot make and a mount of no volume."""
    spec = pod.get("spec") or {}
    users: dict[str, list[str]] = {}
    for c in podspec.all_containers(pod):
        for m in c.get("volumeMounts") or []:
            users.setdefault(str(m.get("name")), []).append(str(c.get("name")))
    names = set()
    for i, volume in enumerate(spec.get("volumes") or []):
        name = str(volume["name"])
        names.add(name)
        kind = _kind(volume)
        if kind not in SUPPORTED:
            by = ", ".join(users.get(name, [])) or "no container"
            raise Unhonourable(
                f"pod {pod.get('metadata', {}).get('name')!r}: spec.volumes[{i}] ({name}): volume type {kind!r} is "
                f"not supported by the runtime lab (mounted by {by}); supported: {', '.join(SUPPORTED)}"
            )
    for kind in ("initContainers", "containers"):
        for j, c in enumerate(spec.get(kind) or []):
            for i, m in enumerate(c.get("volumeMounts") or []):
                if str(m.get("name")) not in names:
                    raise Unhonourable(
                        f"container {c.get('name')!r} (spec.{kind}[{j}].volumeMounts[{i}]): volume "
                        f"{m.get('name')!r} is not in spec.volumes"
                    )


def make_volumes(
    pod: Mapping[str, Any],
    root: Path,
    *,
    pod_ip: str,
    node: podspec.Node,
    config_maps: Mapping[str, Mapping[str, str]],
    secrets: Mapping[str, Mapping[str, str]],
) -> PodVolumes:
    """Make every volume of ``spec.volumes`` under ``root``; :class:`Unhonourable` for one that cannot be made."""
    out = PodVolumes(root)
    spec = pod.get("spec") or {}
    group = (spec.get("securityContext") or {}).get("fsGroup")
    group = None if group is None else int(group)
    validate_volumes(pod)
    try:
        for i, volume in enumerate(spec.get("volumes") or []):
            name = str(volume["name"])
            where = f"pod {pod.get('metadata', {}).get('name')!r}: spec.volumes[{i}] ({name})"
            kind = _kind(volume)
            path = root / name
            path.mkdir(parents=True)
            out.paths[name] = path
            out.read_only[name] = kind != "emptyDir"
            source = volume[kind] or {}
            if kind == "emptyDir":
                if source.get("medium") == "Memory":
                    size = int(podspec.quantity(source["sizeLimit"])) if source.get("sizeLimit") else 0
                    opts = "mode=0777" + (f",size={size}" if size else "")
                    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], check=True, timeout=30)
                    out.tmpfs.append(path)
                path.chmod(0o777 if group is None else 0o2777)
                if group is not None:
                    os.chown(path, 0, group)
            elif kind in ("configMap", "secret"):
                store = config_maps if kind == "configMap" else secrets
                files = _keyed_files(kind, source, store, where) or {}
                _write(path, files, int(source.get("defaultMode", 0o644)), group)
            elif kind == "downwardAPI":
                files = _downward_files(source.get("items") or [], pod, pod_ip, node, where)
                _write(path, files, int(source.get("defaultMode", 0o644)), group)
            else:
                _projected(path, source, pod, pod_ip, node, config_maps, secrets, group, where)
    except BaseException:
        out.close()
        raise
    return out


def _projected(
    path: Path,
    source: Mapping[str, Any],
    pod: Mapping[str, Any],
    pod_ip: str,
    node: podspec.Node,
    config_maps: Mapping[str, Mapping[str, str]],
    secrets: Mapping[str, Mapping[str, str]],
    group: int | None,
    where: str,
) -> None:
    files: dict[str, str] = {}
    for j, src in enumerate(source.get("sources") or []):
        at = f"{where}.projected.sources[{j}]"
        if "serviceAccountToken" in src:
            tok = src["serviceAccountToken"]
            audience = str(tok.get("audience") or "https://kubernetes.default.svc.cluster.local")
            files[str(tok["path"])] = fake_token(pod, audience, int(tok.get("expirationSeconds", 3600)))
        elif "configMap" in src or "secret" in src:
            kind = "configMap" if "configMap" in src else "secret"
            store = config_maps if kind == "configMap" else secrets
            files.update(_keyed_files(kind, src[kind], store, at) or {})
        elif "downwardAPI" in src:
            files.update(_downward_files(src["downwardAPI"].get("items") or [], pod, pod_ip, node, at))
        else:
            raise Unhonourable(f"{at}: projected source {next(iter(src), '?')!r} is not supported")
    _write(path, files, int(source.get("defaultMode", 0o644)), group)
