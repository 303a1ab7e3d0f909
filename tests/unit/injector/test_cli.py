"""`sidecar-injector kube-inject`: stdin, pass-through, exit codes and messages."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from injector.__main__ import main

POD = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: app, image: app:1}]\n"


def run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdin: str, *flags: str
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = main(["kube-inject", "-f", "-", *flags])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_stdin_to_stdout(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(monkeypatch, capsys, POD)
    assert rc == 0
    doc = yaml.safe_load(out)
    assert [c["name"] for c in doc["spec"]["containers"]] == ["app", "istio-proxy"]


def test_non_workloads_pass_through_byte_for_byte_equivalent(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        "apiVersion: v1\nkind: Secret\n"
        "metadata: {name: s, creationTimestamp: 2024-01-01T00:00:00Z}\nstringData: {a: b}\n"
    )
    rc, out, _ = run(monkeypatch, capsys, text)
    assert rc == 0
    assert yaml.safe_load(out) == yaml.safe_load(text.replace("2024-01-01T00:00:00Z", "'2024-01-01T00:00:00Z'"))


def test_refused_annotation_exits_1_with_the_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = POD.replace("metadata: {name: p}", "metadata: {name: p, annotations: {sidecar.istio.io/proxyCPU: lots}}")
    rc, out, err = run(monkeypatch, capsys, bad)
    assert rc == 1
    assert out == ""
    assert "Pod/p: invalid annotation sidecar.istio.io/proxyCPU='lots'" in err


def test_invalid_yaml_exits_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(monkeypatch, capsys, "kind: [unclosed")
    assert rc == 1 and "not valid YAML" in err


def test_bad_config_dir_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "config.yaml").write_text("policy: maybe\n")
    rc, _, err = run(monkeypatch, capsys, POD, "--config-dir", str(tmp_path))
    assert rc == 2 and "policy must be one of" in err


def test_missing_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["kube-inject", "-f", str(tmp_path / "absent.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_bad_flags_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["kube-inject", "-f", "-", "--native-sidecar", "maybe"],
        ["kube-inject", "-f", "-", "--kube-version", "new"],
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2


def test_output_file(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    dest = tmp_path / "out.yaml"
    rc, out, _ = run(monkeypatch, capsys, POD, "-o", str(dest))
    assert rc == 0 and out == ""
    assert "istio-proxy" in dest.read_text()


def test_console_script_is_installed() -> None:
    bin_dir = Path(sys.executable).parent
    p = subprocess.run(
        [str(bin_dir / "sidecar-injector"), "kube-inject", "-f", "-"],
        input=POD,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert "istio-init" in p.stdout


def test_serve_without_a_writable_tmp_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A read-only root filesystem without the Deployment's /tmp emptyDir: a clear message, not a traceback from
    deep inside certificate loading (tests/runtime/test_images.py checks the same in the real image)."""
    import tempfile

    def no_tempdir() -> str:
        raise FileNotFoundError(2, "No usable temporary directory found in ['/tmp', '/var/tmp', '/usr/tmp', '/']")

    monkeypatch.setattr(tempfile, "gettempdir", no_tempdir)
    (tmp_path / "tls.crt").write_text("x")
    (tmp_path / "tls.key").write_text("x")
    rc = main(["serve", "--tls-cert-file", str(tmp_path / "tls.crt"), "--tls-key-file", str(tmp_path / "tls.key")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "writable temporary directory" in err and "emptyDir at /tmp" in err
