"""Golden tests: input manifests -> `sidecar-injector kube-inject` output files.

Each ``golden/<case>.in.yaml`` starts with ``# kube-inject: <flags>``; the expected output is
``golden/<case>.out.yaml``. Refresh with ``UPDATE_GOLDEN=1 pytest tests/unit/injector``; a golden without an
input fails, so stale files cannot linger. Every output is also checked against the Kubernetes OpenAPI schema
and must be a fixed point of injection (re-injecting it changes nothing).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from injector.__main__ import main

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.name.removesuffix(".in.yaml") for p in GOLDEN.glob("*.in.yaml"))
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
K8S_VERSION = kubernetes_validate.latest_version()


def _flags(case: str) -> list[str]:
    first = (GOLDEN / f"{case}.in.yaml").read_text().splitlines()[0]
    assert first.startswith("# kube-inject:"), f"{case}.in.yaml must start with '# kube-inject: <flags>'"
    return shlex.split(first.removeprefix("# kube-inject:"))


def kube_inject(capsys: pytest.CaptureFixture[str], path: Path, flags: list[str]) -> tuple[int, str, str]:
    rc = main(["kube-inject", "-f", str(path), *flags])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(autouse=True)
def _at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # --config-dir paths in the cases are relative to the repository


def test_no_stale_goldens() -> None:
    outs = {p.name.removesuffix(".out.yaml") for p in GOLDEN.glob("*.out.yaml")}
    assert outs <= set(CASES), f"goldens without an input: {sorted(outs - set(CASES))}"
    assert len(CASES) >= 10


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = kube_inject(capsys, GOLDEN / f"{case}.in.yaml", _flags(case))
    assert rc == 0, err
    golden = GOLDEN / f"{case}.out.yaml"
    if UPDATE:
        golden.write_text(out)
    assert golden.exists(), f"missing {golden.name}; run with UPDATE_GOLDEN=1"
    assert out == golden.read_text()


def _objects(doc: object) -> list[dict[str, Any]]:
    if isinstance(doc, dict) and doc.get("kind") == "List":
        return [o for item in doc.get("items") or [] for o in _objects(item)]
    return [doc] if isinstance(doc, dict) else []


@pytest.mark.parametrize("case", CASES)
def test_output_matches_kubernetes_schema(case: str) -> None:
    golden = GOLDEN / f"{case}.out.yaml"
    for doc in yaml.safe_load_all(golden.read_text()):
        for obj in _objects(doc):
            if obj.get("apiVersion") == "apps.openshift.io/v1":  # not in Kubernetes' schemas: check its pod
                tmpl = obj["spec"]["template"]
                obj = {"apiVersion": "v1", "kind": "Pod", "metadata": tmpl["metadata"], "spec": tmpl["spec"]}
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("case", CASES)
def test_reinjecting_output_changes_nothing(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    golden = GOLDEN / f"{case}.out.yaml"
    rc, out, err = kube_inject(capsys, golden, _flags(case))
    assert rc == 0, err
    assert out == golden.read_text()


def test_schema_check_bites() -> None:
    """The schema check is strict: a field the API does not know (as a careless template would add) fails."""
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "a"}]},
    }
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    obj["spec"]["containers"][0]["securityContext"] = {"fsGroup": 1337}  # valid for the pod, not a container
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_workloads_warn_about_what_they_leave_alone(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _out, err = kube_inject(capsys, GOLDEN / "workloads-all.in.yaml", _flags("workloads-all"))
    assert rc == 0
    assert "DaemonSet/node-exporter: not injected (hostNetwork)" in err
    assert 'Job/once: not injected (sidecar.istio.io/inject label is "false")' in err
