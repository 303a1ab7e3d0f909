"""The installer's part of the agent: put the plugin binary into the node's CNI bin dir and the plugin into the
node's conflist as the last plugin of the chain; keep it there; take it out on uninstall.

The conflist is the first ``*.conflist`` / ``*.conf`` in the CNI conf dir in lexical order - the one the kubelet's
runtime uses. A single-plugin ``.conf`` is turned into a ``.conflist`` (the ``.conf`` removed), as istio-cni does,
because only a list can chain. Every write is a new file renamed over the old one, so the runtime never reads half
a file. The pure edit is :func:`with_plugin` / :func:`without_plugin`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from netinit_cni.files import write_atomic

PLUGIN_TYPE = "netinit-cni"


def with_plugin(conf: Mapping[str, Any], plugin: Mapping[str, Any]) -> dict[str, Any]:
    """``conf`` (a conflist, or a single-plugin conf) with ``plugin`` as the last of its chain, exactly once."""
    if "plugins" in conf:
        plugins = conf["plugins"]
        if not isinstance(plugins, list):
            raise ValueError("the conflist's plugins is not a list")
        out = {k: v for k, v in conf.items() if k != "plugins"}
    else:  # a .conf: one plugin, its keys at the top level
        if "type" not in conf:
            raise ValueError("the network config has neither plugins nor type")
        out = {k: conf[k] for k in ("cniVersion", "name") if k in conf}
        plugins = [{k: v for k, v in conf.items() if k not in ("cniVersion", "name")}]
    kept = [p for p in plugins if not (isinstance(p, dict) and p.get("type") == PLUGIN_TYPE)]
    return {**out, "plugins": [*kept, dict(plugin)]}


def without_plugin(conf: Mapping[str, Any]) -> dict[str, Any]:
    plugins = conf.get("plugins")
    if not isinstance(plugins, list):
        return dict(conf)
    return {**conf, "plugins": [p for p in plugins if not (isinstance(p, dict) and p.get("type") == PLUGIN_TYPE)]}


def primary_conf(conf_dir: Path) -> Path | None:
    names = sorted(p for p in conf_dir.glob("*") if p.suffix in (".conflist", ".conf", ".json") and p.is_file())
    return names[0] if names else None


def install_binary(source: Path, bin_dir: Path) -> Path:
    """Copy the plugin into the CNI bin dir under its type name (atomically: a running runtime may exec it)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    target = bin_dir / PLUGIN_TYPE
    write_atomic(target, source.read_bytes(), 0o755)
    return target


def ensure(conf_dir: Path, plugin: Mapping[str, Any]) -> str | None:
    """Make the primary conflist end with ``plugin``; what was done, or None when it already does."""
    path = primary_conf(conf_dir)
    if path is None:
        return None  # no network plugin yet: nothing to chain after; the loop comes back
    text = path.read_text()
    try:
        conf = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{path}: not JSON ({e}); left alone") from None
    if not isinstance(conf, dict):
        raise ValueError(f"{path}: not a JSON object; left alone")
    new = with_plugin(conf, plugin)
    if conf == new:
        return None
    target = path if path.suffix == ".conflist" else path.with_suffix(".conflist")
    write_atomic(target, json.dumps(new, indent=2) + "\n")
    if target != path:
        path.unlink()
        return f"converted {path.name} to {target.name} with {PLUGIN_TYPE} chained last"
    return f"chained {PLUGIN_TYPE} last in {path.name}"


def uninstall(conf_dir: Path, bin_dir: Path) -> list[str]:
    done = []
    for path in sorted(conf_dir.glob("*.conflist")):
        try:
            conf = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(conf, dict) and conf != without_plugin(conf):
            write_atomic(path, json.dumps(without_plugin(conf), indent=2) + "\n")
            done.append(f"removed {PLUGIN_TYPE} from {path.name}")
    binary = bin_dir / PLUGIN_TYPE
    if binary.exists():
        binary.unlink()
        done.append(f"removed {binary}")
    return done
