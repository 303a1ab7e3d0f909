"""`sidecar-injector kube-inject`: stdin, pass-through, exit codes and messages."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from injector.__main__ import main
from lab.shell import console_script

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


@pytest.mark.parametrize(
    ("given", "native"),
    [("v1.29.3-gke.1", True), ("1.30+", True), ("v1.31.0+k3s1", True), ("1.28", False), ("v1.28.9-eks-036c24b", False)],
)
def test_kube_version_takes_real_server_versions(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], given: str, native: bool
) -> None:
    """Managed clusters report versions such as v1.29.3-gke.1 and minor "30+"; only MAJOR.MINOR decides."""
    rc, out, err = run(monkeypatch, capsys, POD, "--kube-version", given)
    assert rc == 0, err
    init = [c["name"] for c in yaml.safe_load(out)["spec"].get("initContainers") or []]
    assert ("istio-proxy" in init) is native


@pytest.mark.parametrize("bad", ["new", "1", "1.x", "v1.29.3 extra", "1.29..3"])
def test_kube_version_refuses_what_is_not_a_version(capsys: pytest.CaptureFixture[str], bad: str) -> None:
    with pytest.raises(SystemExit) as e:
        main(["kube-inject", "-f", "-", "--kube-version", bad])
    assert e.value.code == 2
    assert "expected a Kubernetes version such as 1.31" in capsys.readouterr().err


def test_serve_cert_secret_outside_a_cluster_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    p = subprocess.run(
        [*console_script("sidecar-injector"), "serve", "--cert-secret", "s", "--cert-dir", str(tmp_path),
         "--cert-retries", "1", "--port", "0"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert "not running in a Kubernetes pod" in p.stderr and "--kube-api-server" in p.stderr


def test_certs_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """`sidecar-injector certs ... | head -c1`: the reader goes away before the caBundle is printed."""
    cmd = [*console_script("sidecar-injector"), "certs", "--out-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # nobody reads: the print hits a broken pipe
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err
    assert (tmp_path / "tls.crt").exists()  # the files were written before stdout was
