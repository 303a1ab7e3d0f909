"""kube-inject's output reads back, through Go's YAML reader, with every string still the same string.

The reader is the real one: `kubectl kustomize` (sigs.k8s.io/yaml, as kubectl apply and the API server parse
manifests) over a directory holding the output; its output is compared, string by string, with what went in.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from injector.core import manifest_yaml
from injector.core.config import load_config
from injector.core.workloads import Options, inject_text

GOLDEN = Path(__file__).parent / "golden"
TRICKY = [
    "5e10", "123e4", "1e3", "1E3", "1.5e3", "-1e-3", "0o644", "0O17", "0x1F", "0b1010", "1_000", "0644", "007",
    "+1", "-0", "1.", ".5", "-.5", "+.5", "1:20", "190:20:30", "1:20.5", "yes", "No", "ON", "off", "y", "N",
    "true", "False", "~", "null", "Null", "NULL", ".inf", "-.Inf", ".NaN", "2024-01-01", "2001-12-14t21:59:43.10-05:00",
    "2024-1-1", "=", "<<", "+__2E06", "1_0e1_0", "0b_", "0x_", ".3_",
    "1.2.3", "10.0.0.1", "::1", "0.0", "00", "1e", "e1", "0x", "-", "1-2", "v1.0", "abc",
]  # fmt: skip


class _GoOutputLoader(manifest_yaml.ManifestLoader):
    """Reads what Go wrote: Go writes a string plain whenever *its* reader sees a string, so ``=``, ``<<``,
    dates and PyYAML-only numbers (``0b_``) must stay strings here (the product loader already keeps all but the
    merge key ``<<``, which manifests may use); numbers and bools are still read as such, so a string Go turned
    into a number shows up as a mismatch."""

    # kustomize writes with Go's yaml.v3, whose resolver (YAML 1.2) reads no number with an "_" in it: such a
    # plain scalar in its output is a string (kubectl's yaml.v2 would read it as a number, which is why we
    # quote them; the output here is kustomize's own).
    def construct_yaml_int(self, node: yaml.ScalarNode) -> Any:
        return self.construct_scalar(node) if "_" in node.value else super().construct_yaml_int(node)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> Any:
        return self.construct_scalar(node) if "_" in node.value else super().construct_yaml_float(node)


_GoOutputLoader.add_constructor("tag:yaml.org,2002:int", _GoOutputLoader.construct_yaml_int)
_GoOutputLoader.add_constructor("tag:yaml.org,2002:float", _GoOutputLoader.construct_yaml_float)
_GoOutputLoader.yaml_implicit_resolvers = {
    k: [(t, rx) for t, rx in v if t != "tag:yaml.org,2002:merge"]
    for k, v in manifest_yaml.ManifestLoader.yaml_implicit_resolvers.items()
}


def _kustomize(tmp: Path, text: str) -> list[Any]:
    """What Go's reader makes of ``text``: its objects after `kubectl kustomize`, re-read."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is required (kubectl kustomize is the Go YAML reader these tests compare with)"
    (tmp / "out.yaml").write_text(text)
    (tmp / "kustomization.yaml").write_text("resources: [out.yaml]\n")
    res = subprocess.run([kubectl, "kustomize", str(tmp)], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.load_all(res.stdout, Loader=_GoOutputLoader) if d is not None]


def _strings(obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _strings(v, (*path, i))
    elif isinstance(obj, str):
        yield path, obj


def _by_name(docs: list[Any]) -> dict[tuple[str, str], Any]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def _assert_same_strings(ours: list[Any], go: list[Any]) -> None:
    """Every string we wrote is, to Go, a string with the same value at the same place (kustomize may reorder
    keys and documents, and adds nothing we compare)."""
    go_by = _by_name(go)
    for doc in ours:
        theirs = go_by[(doc["kind"], doc["metadata"]["name"])]
        for path, value in _strings(doc):
            got: Any = theirs
            for key in path:
                got = got[key]
            assert got == value, f"{doc['kind']}/{doc['metadata']['name']} {'.'.join(map(str, path))}: {got!r}"


def _workloads(values: list[str]) -> str:
    """A Deployment whose template labels and a ConfigMap whose data hold ``values`` (the issue's two cases:
    injected objects and passed-through ones)."""
    labels = {f"l{i}": v for i, v in enumerate(values)}
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": labels},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web", **labels}, "annotations": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "web:1",
                            "env": [{"name": f"E{i}", "value": v} for i, v in enumerate(values)],
                        }
                    ]
                },
            },
        },
    }
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cfg"},
        "data": {f"k{i}": v for i, v in enumerate(values)},
    }
    return manifest_yaml.dump_all([deploy, cm])


OPTS = Options(load_config(None))


def test_tricky_strings_survive_go(tmp_path: Path) -> None:
    out = inject_text(_workloads(TRICKY), OPTS, warn=lambda _m: None)
    ours = manifest_yaml.load_all(out)
    assert ours[1]["data"]["k0"] == "5e10"  # as PyYAML reads it (it would also read a plain 5e10 as a string)
    _assert_same_strings(ours, _kustomize(tmp_path, out))


def test_the_check_bites(tmp_path: Path) -> None:
    """Without the quoting rule PyYAML writes 5e10 and 0o644 plain, and Go reads numbers: the check sees it."""
    plain = yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
                            "data": {"a": "5e10", "b": "0o644"}})  # fmt: skip
    assert "a: 5e10" in plain
    with pytest.raises(AssertionError, match=r"5e10|0o644"):
        _assert_same_strings(manifest_yaml.load_all(plain), _kustomize(tmp_path, plain))


def test_goldens_survive_go(tmp_path: Path) -> None:
    for out in sorted(GOLDEN.glob("*.out.yaml")):
        ours = [d for d in manifest_yaml.load_all(out.read_text()) if d.get("kind") != "List"]
        if not ours:
            continue
        d = tmp_path / out.stem
        d.mkdir()
        _assert_same_strings(ours, _kustomize(d, manifest_yaml.dump_all(ours)))


# Strings built from the characters that make YAML resolvers see numbers, bools, nulls and times.
PIECES = st.sampled_from(["0", "1", "7", "9", "e", "E", ".", ":", "-", "+", "_", "x", "o", "b", "inf", "nan",
                          "y", "n", "on", "off", "true", "null", "~", "T", " ", "Z", "a", "f"])  # fmt: skip
NUMBER_SHAPED = st.from_regex(
    r"[-+]?[0-9_.]{1,4}([eE][-+]?[0-9]{1,2})?|0[oOxXbB][0-9a-fA-F_]{1,3}|[0-9]{1,3}(:[0-9]{2}){1,2}(\.[0-9])?",
    fullmatch=True,
)
TRICKY_TEXT = (st.lists(PIECES, min_size=1, max_size=6).map("".join) | NUMBER_SHAPED).filter(
    lambda s: s == s.strip() and s != ""
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(TRICKY_TEXT, min_size=20, max_size=40))
def test_hypothesis_strings_survive_go(tmp_path_factory: pytest.TempPathFactory, values: list[str]) -> None:
    tmp = tmp_path_factory.mktemp("go")
    out = inject_text(_workloads(values), OPTS, warn=lambda _m: None)
    _assert_same_strings(manifest_yaml.load_all(out), _kustomize(tmp, out))
