"""Injector configuration: the shipped defaults under ``injector/``, overridden by a config directory.

The directory has Istio's two halves as files - ``config.yaml`` (policy, templates, selectors) and
``values.yaml`` (images, ports, resources) - so the ConfigMap that mounts it looks like Istio's
``istio-sidecar-injector``. Templates are Jinja2 YAML: the built-ins in ``injector/core/templates/``, then any
``<name>.yaml.j2`` file in the directory, then inline ``templates:`` entries in config.yaml (last wins).
Loading is pure over the files it reads; nothing here caches or watches (the webhook does that).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from injector.core.selectors import LabelSelector, parse_selector
from injector.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULTS_DIR = PACKAGE_DIR / "defaults"
BUILTIN_TEMPLATES_DIR = PACKAGE_DIR / "templates"
TEMPLATE_SUFFIX = ".yaml.j2"
DEFAULT_TEMPLATES_ENV = "SIDECAR_INJECTOR_DEFAULT_TEMPLATES"

POLICIES = ("enabled", "disabled")
CONFIG_KEYS = frozenset(
    {
        "policy",
        "defaultTemplates",
        "templates",
        "aliases",
        "neverInjectSelector",
        "alwaysInjectSelector",
        "injectedAnnotations",
    }
)
NATIVE_MODES = ("auto", "true", "false")
# A Kubernetes version as servers and people write it: v1.29.3, 1.30, managed clusters' 1.30+ (an EKS/GKE minor
# with a "+"), v1.29.3-gke.1, v1.31.0+k3s1. Only MAJOR.MINOR matters here.
_KUBE_VERSION = re.compile(r"v?(\d+)\.(\d+)\+?(?:\.\d+)?(?:[-+][0-9A-Za-z.+-]*)?")


def parse_kube_version(text: str) -> tuple[int, int]:
    """(major, minor) of a Kubernetes version string; ValueError naming the accepted forms otherwise."""
    m = _KUBE_VERSION.fullmatch(text.strip())
    if not m:
        raise ValueError(f"expected a Kubernetes version such as 1.31, v1.29.3-gke.1 or 1.30+, got {text!r}")
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True)
class InjectorConfig:
    policy: str
    default_templates: tuple[str, ...]
    templates: Mapping[str, str]
    aliases: Mapping[str, tuple[str, ...]]
    never_inject: tuple[LabelSelector, ...]
    always_inject: tuple[LabelSelector, ...]
    injected_annotations: Mapping[str, str]
    values: Mapping[str, Any] = field(repr=False)
    # Memo of pure functions of this config (e.g. parsed template output); dies with the config on reload.
    cache: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def native_sidecar_mode(self) -> str:
        return str(self.values["sidecarInjectorWebhook"]["nativeSidecar"])

    def resolve_templates(self, names: list[str]) -> list[str]:
        """Expand aliases (one level, like Istio) keeping order; unknown names stay for the caller to refuse."""
        out: list[str] = []
        for n in names:
            out.extend(self.aliases.get(n, (n,)))
        return out


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Values overlay: maps merge key by key, anything else (lists included) is replaced."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} must hold a mapping, found {type(doc).__name__}")
    return doc


def _names(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [p for p in (s.strip() for s in value.split(",")) if p]
    if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
        raise ConfigError(f"{what} must be a list of template names, got {value!r}")
    return tuple(value)


def _templates_from(directory: Path) -> dict[str, str]:
    if not directory.is_dir():
        return {}
    return {p.name[: -len(TEMPLATE_SUFFIX)]: p.read_text() for p in sorted(directory.glob("*" + TEMPLATE_SUFFIX))}


def load_config(config_dir: str | Path | None = None, env: Mapping[str, str] | None = None) -> InjectorConfig:
    """Defaults, overlaid by ``config_dir`` when given; raises ConfigError naming the file and key."""
    env = os.environ if env is None else env
    raw = _read_yaml(DEFAULTS_DIR / "config.yaml")
    values = _read_yaml(DEFAULTS_DIR / "values.yaml")
    templates = _templates_from(BUILTIN_TEMPLATES_DIR)
    if config_dir is not None:
        d = Path(config_dir)
        if not d.is_dir():
            raise ConfigError(f"config directory {d} does not exist")
        if (d / "config.yaml").exists():
            user = _read_yaml(d / "config.yaml")
            _check_keys(user)
            raw = {**raw, **user}
        if (d / "values.yaml").exists():
            values = deep_merge(values, _read_yaml(d / "values.yaml"))
        templates.update(_templates_from(d))
    return _build(raw, values, templates, env)


def _check_keys(raw: dict[str, Any]) -> None:
    """Unknown keys are refused: a typo, or a file caught half-written, must not pass as "use the defaults"."""
    unknown = sorted(str(k) for k in raw if k not in CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"config.yaml: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(CONFIG_KEYS))}")


def _build(
    raw: dict[str, Any], values: dict[str, Any], templates: dict[str, str], env: Mapping[str, str]
) -> InjectorConfig:
    policy = raw.get("policy", "enabled")
    if policy not in POLICIES:
        raise ConfigError(f"config.yaml policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    inline = raw.get("templates") or {}
    if not isinstance(inline, dict) or not all(isinstance(v, str) for v in inline.values()):
        raise ConfigError("config.yaml templates must map names to template text")
    templates.update(inline)
    defaults = _names(raw.get("defaultTemplates", ["sidecar"]), "config.yaml defaultTemplates")
    if env.get(DEFAULT_TEMPLATES_ENV, "").strip():
        defaults = _names(env[DEFAULT_TEMPLATES_ENV], DEFAULT_TEMPLATES_ENV)
    aliases_raw = raw.get("aliases") or {}
    if not isinstance(aliases_raw, dict):
        raise ConfigError("config.yaml aliases must be a mapping of name -> list of template names")
    aliases = {str(k): _names(v, f"config.yaml aliases.{k}") for k, v in aliases_raw.items()}
    selectors: dict[str, tuple[LabelSelector, ...]] = {}
    for key in ("neverInjectSelector", "alwaysInjectSelector"):
        items = raw.get(key) or []
        if not isinstance(items, list):
            raise ConfigError(f"config.yaml {key} must be a list of label selectors")
        try:
            selectors[key] = tuple(parse_selector(s) for s in items)
        except ValueError as e:
            raise ConfigError(f"config.yaml {key}: {e}") from e
    injected = raw.get("injectedAnnotations") or {}
    if not isinstance(injected, dict):
        raise ConfigError("config.yaml injectedAnnotations must be a mapping")
    cfg = InjectorConfig(
        policy=policy,
        default_templates=defaults,
        templates=templates,
        aliases=aliases,
        never_inject=selectors["neverInjectSelector"],
        always_inject=selectors["alwaysInjectSelector"],
        injected_annotations={str(k): str(v) for k, v in injected.items()},
        values=values,
    )
    mode = str(values.get("sidecarInjectorWebhook", {}).get("nativeSidecar", "auto")).lower()
    if mode not in NATIVE_MODES:
        raise ConfigError(f"values.yaml sidecarInjectorWebhook.nativeSidecar must be auto|true|false, got {mode!r}")
    values["sidecarInjectorWebhook"]["nativeSidecar"] = mode
    pilot = values.get("pilot") or {}
    cni = (pilot.get("cni") or {}) if isinstance(pilot, dict) else None
    enabled = cni.get("enabled", False) if isinstance(cni, dict) else None
    if not isinstance(enabled, bool) or not isinstance(cni, dict):  # "false" (a string) would switch it on
        raise ConfigError(f"values.yaml pilot.cni.enabled must be true or false, got {enabled!r}")
    values["pilot"] = {**pilot, "cni": {**cni, "enabled": enabled}}
    unknown = [n for n in cfg.resolve_templates(list(defaults)) if n not in templates]
    if unknown:
        raise ConfigError(f"default template(s) {', '.join(unknown)} not found; have {', '.join(sorted(templates))}")
    return cfg
