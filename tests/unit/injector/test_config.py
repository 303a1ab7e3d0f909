"""Config directory loading: defaults, overrides, env, and clear errors for broken files."""

from __future__ import annotations

from pathlib import Path

import pytest

from injector.core.config import load_config
from injector.errors import ConfigError


def test_defaults() -> None:
    cfg = load_config(env={})
    assert cfg.policy == "enabled"
    assert cfg.default_templates == ("envoy",)
    assert {"sidecar", "envoy", "_common"} <= set(cfg.templates)
    assert cfg.native_sidecar_mode == "auto"
    assert cfg.resolve_templates(["istio", "envoy"]) == ["sidecar", "envoy"]


def test_directory_overrides_values_deeply_and_adds_templates(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("policy: disabled\ntemplates:\n  inline: 'spec: {}'\n")
    (tmp_path / "values.yaml").write_text(
        "global:\n  proxy:\n    statusPort: 15099\nsidecarInjectorWebhook:\n  nativeSidecar: true\n"
    )
    (tmp_path / "mine.yaml.j2").write_text("spec: {}\n")
    cfg = load_config(tmp_path, env={})
    assert cfg.policy == "disabled"
    assert cfg.values["global"]["proxy"]["statusPort"] == 15099
    assert cfg.values["global"]["proxy"]["clusterDomain"] == "cluster.local"  # untouched defaults survive
    assert cfg.native_sidecar_mode == "true"
    assert {"inline", "mine", "sidecar"} <= set(cfg.templates)


def test_env_overrides_default_templates() -> None:
    assert load_config(env={"SIDECAR_INJECTOR_DEFAULT_TEMPLATES": "sidecar, envoy"}).default_templates == (
        "sidecar",
        "envoy",
    )


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"config.yaml": "policy: sometimes"}, "policy must be one of enabled, disabled"),
        ({"config.yaml": "defaultTemplates: [nope]"}, "default template(s) nope not found"),
        ({"config.yaml": "[1, 2]"}, "must hold a mapping"),
        ({"config.yaml": "policy: [unclosed"}, "is not valid YAML"),
        ({"values.yaml": "sidecarInjectorWebhook: {nativeSidecar: maybe}"}, "nativeSidecar must be auto|true|false"),
        (
            {"config.yaml": "neverInjectSelector: [{matchExpressions: [{key: a, operator: In}]}]"},
            "needs at least one value",
        ),
        ({"config.yaml": "aliases: {x: 3}"}, "aliases.x must be a list"),
    ],
)
def test_broken_config_is_a_clear_error(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("|", r"\|")):
        load_config(tmp_path, env={})


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent", env={})
