"""Strategic merge for Pod: merge keys, appends, directives."""

from __future__ import annotations

from typing import Any

import pytest

from injector.core.merge import strategic_merge


def spec(**kw: Any) -> dict[str, Any]:
    return {"spec": kw}


def test_containers_merge_by_name_keeping_place_and_appending_new() -> None:
    base = spec(containers=[{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}])
    out = strategic_merge(base, spec(containers=[{"name": "c", "image": "c:1"}, {"name": "a", "image": "a:2"}]))
    assert [(c["name"], c["image"]) for c in out["spec"]["containers"]] == [("a", "a:2"), ("b", "b:1"), ("c", "c:1")]


def test_nested_keys_env_ports_mounts() -> None:
    base = spec(
        containers=[
            {
                "name": "p",
                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "1"}],
                "ports": [{"containerPort": 80, "name": "http"}],
                "volumeMounts": [{"mountPath": "/x", "name": "x"}],
                "args": ["one", "two"],
            }
        ]
    )
    patch = spec(
        containers=[
            {
                "name": "p",
                "env": [{"name": "B", "value": "2"}, {"name": "C", "value": "3"}],
                "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 90}],
                "volumeMounts": [{"mountPath": "/x", "readOnly": True}],
                "args": ["three"],
            }
        ]
    )
    c = strategic_merge(base, patch)["spec"]["containers"][0]
    assert c["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}, {"name": "C", "value": "3"}]
    assert c["ports"] == [{"containerPort": 80, "name": "http", "protocol": "TCP"}, {"containerPort": 90}]
    assert c["volumeMounts"] == [{"mountPath": "/x", "name": "x", "readOnly": True}]
    assert c["args"] == ["three"]  # no merge key: replaced


def test_volumes_and_pull_secrets_by_name() -> None:
    base = spec(volumes=[{"name": "v", "emptyDir": {}}], imagePullSecrets=[{"name": "a"}])
    out = strategic_merge(
        base, spec(volumes=[{"name": "w", "emptyDir": {}}], imagePullSecrets=[{"name": "a"}, {"name": "b"}])
    )
    assert [v["name"] for v in out["spec"]["volumes"]] == ["v", "w"]
    assert out["spec"]["imagePullSecrets"] == [{"name": "a"}, {"name": "b"}]


def test_patch_replace_on_a_map_and_a_list() -> None:
    base = spec(containers=[{"name": "p", "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "2"}}}])
    out = strategic_merge(
        base, spec(containers=[{"name": "p", "resources": {"$patch": "replace", "limits": {"memory": "1Gi"}}}])
    )
    assert out["spec"]["containers"][0]["resources"] == {"limits": {"memory": "1Gi"}}
    out = strategic_merge(base, spec(containers=[{"$patch": "replace"}, {"name": "only"}]))
    assert out["spec"]["containers"] == [{"name": "only"}]


def test_patch_delete_and_null() -> None:
    base = spec(containers=[{"name": "a", "image": "x", "tty": True}, {"name": "b"}])
    out = strategic_merge(base, spec(containers=[{"name": "b", "$patch": "delete"}, {"name": "a", "tty": None}]))
    assert out["spec"]["containers"] == [{"name": "a", "image": "x"}]


def test_inputs_are_not_modified() -> None:
    base = spec(containers=[{"name": "a", "env": [{"name": "X", "value": "1"}]}])
    patch = spec(containers=[{"name": "a", "env": [{"name": "Y", "value": "2"}]}])
    strategic_merge(base, patch)
    assert base == spec(containers=[{"name": "a", "env": [{"name": "X", "value": "1"}]}])
    assert patch == spec(containers=[{"name": "a", "env": [{"name": "Y", "value": "2"}]}])


def test_element_without_merge_key_is_an_error() -> None:
    with pytest.raises(ValueError, match="lacks its merge key 'name'"):
        strategic_merge(spec(containers=[]), spec(containers=[{"image": "x"}]))
