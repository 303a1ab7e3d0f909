"""The runtime lab's kubelet itself (lab.runtime.kubelet): what it refuses before creating anything, how a pod
fails, what it leaves behind, and what it does inside the time bench.pod_startup counts."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from lab.runtime import kubelet, podman
from lab.runtime.translate import Unhonourable
from lab.runtime.webhook import WebhookContainer
from lab.shell import LabError

from .test_pods import admit, make_pod

pytestmark = [pytest.mark.requires_podman, pytest.mark.timeout(300)]


def host_rules() -> str:
    """The host's firewall as both iptables flavours and nft list it, counters dropped."""
    out = []
    for cmd in (["iptables-nft-save"], ["iptables-legacy-save"], ["ip6tables-nft-save"], ["nft", "list", "ruleset"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        for line in proc.stdout.splitlines():
            if line.startswith("#"):
                continue
            out.append(_strip_counters(line.split(" [", 1)[0] if line.startswith(":") else line))
    return "\n".join(out)


def _strip_counters(line: str) -> str:
    words = line.split()
    if "packets" in words:
        i = words.index("packets")
        del words[i : i + 4]
    return " ".join(words)


def test_a_pod_start_reads_each_image_once_and_before_the_sandbox(
    webhook: WebhookContainer, echo_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench.pod_startup times from the sandbox on: an image inspect per container start (25 ms each, which a
    kubelet does not pay: it has the image's config) would be counted as injection's cost."""
    calls: list[tuple[str, ...]] = []
    real = podman.cli

    def recorded(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(podman, "cli", recorded)
    admitted = admit(webhook, make_pod(echo_image))
    with kubelet.run_pod(admitted) as running:
        assert running.get(8080).status == 200
    images = {c["image"] for c in [*admitted["spec"]["initContainers"], *admitted["spec"]["containers"]]}
    sandbox = next(i for i, args in enumerate(calls) if args[:2] == ("pod", "create"))
    users = [args[-1] for args in calls if args[:2] == ("image", "inspect") and "{{.Config.User}}" in args]
    assert sorted(users) == sorted(images), calls  # each image's USER read once
    assert len([args for args in calls if args[:2] == ("image", "inspect")]) == len(images), calls  # and nothing more
    assert not [args for args in calls[sandbox:] if args[:2] == ("image", "inspect")], calls[sandbox:]
    assert len([args for args in calls[sandbox:] if args[0] == "run"]) == len(running.containers), calls[sandbox:]


def test_teardown_leaves_no_container_namespace_mount_or_host_rule(webhook: WebhookContainer, echo_image: str) -> None:
    before = host_rules()
    pod = make_pod(echo_image, annotations={"sidecar.istio.io/nativeSidecar": "true"})
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "mem", "mountPath": "/scratch"}]
    pod["spec"]["volumes"] = [{"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}]
    with kubelet.run_pod(admit(webhook, pod), node_iptables="nft") as running:
        name, netns, workdir = running.name, running.netns, running.workdir
        assert Path("/run/netns", netns).exists() and str(workdir) in Path("/proc/mounts").read_text()
    left = podman.cli("ps", "-a", "--filter", f"label={kubelet.LABEL}={name}", "--format", "{{.Names}}").stdout
    assert left.strip() == ""
    assert podman.cli("pod", "exists", name, check=False).returncode == 1
    assert not Path("/run/netns", netns).exists() and not workdir.exists()
    assert str(workdir) not in Path("/proc/mounts").read_text()
    assert host_rules() == before


def test_a_failing_init_container_stops_the_pod_with_its_exit_code_and_logs(echo_image: str) -> None:
    pod = make_pod(echo_image)
    pod["spec"]["initContainers"] = [
        {"name": "setup", "image": echo_image, "command": ["sh", "-c", "echo setting up; echo broken >&2; exit 3"]}
    ]
    t0 = time.monotonic()
    with pytest.raises(LabError) as err, kubelet.run_pod(pod):
        pass
    message = str(err.value)
    assert "'setup'" in message and "exited 3" in message and "broken" in message and "setting up" in message
    assert time.monotonic() - t0 < 30
    name = message.split("pod ", 1)[1].split(":", 1)[0]
    assert name.startswith("rt-web-") and podman.cli("pod", "exists", name, check=False).returncode == 1


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (
            lambda p: (
                p["spec"].update(volumes=[{"name": "data", "nfs": {"server": "x", "path": "/"}}])
                or p["spec"]["containers"][0].update(volumeMounts=[{"name": "data", "mountPath": "/d"}])
            ),
            ["spec.volumes[0] (data)", "'nfs'", "mounted by web"],
        ),
        (lambda p: p["spec"]["containers"][0].update(image="localhost/nope:1"), ["'web'", ".image", "nope:1"]),
        (
            lambda p: p["spec"]["containers"][0].update(securityContext={"runAsNonRoot": True, "runAsUser": 0}),
            ["'web'", "runAsNonRoot", "uid 0"],
        ),
        (
            lambda p: p["spec"]["containers"][0].update(securityContext={"seLinuxOptions": {"level": "s0"}}),
            ["'web'", "securityContext.seLinuxOptions"],
        ),
        (
            lambda p: p["spec"]["containers"][0].update(volumeMounts=[{"name": "ghost", "mountPath": "/g"}]),
            ["'web'", "volumeMounts[0]", "'ghost'"],
        ),
    ],
    ids=["unknown-volume-type", "missing-image", "run-as-non-root-uid-0", "selinux", "unknown-volume"],
)
def test_a_spec_the_runtime_cannot_honour_is_refused_naming_the_field(
    echo_image: str, change: Any, words: list[str]
) -> None:
    pod = make_pod(echo_image)
    change(pod)
    t0 = time.monotonic()
    with pytest.raises(Unhonourable) as err, kubelet.run_pod(pod):
        pass
    for word in words:
        assert word in str(err.value), err.value
    assert time.monotonic() - t0 < 20


def test_a_container_that_exits_before_its_probe_passes_fails_the_pod_with_its_state_and_logs(echo_image: str) -> None:
    """The wait asks the runtime whether the container still runs once a second (the kubelet's cadence), not
    after every failed attempt; a container that is gone must still fail the wait then, not at its deadline."""
    pod = make_pod(echo_image, command=["sh", "-c", "echo about to fail; exit 4"])
    t0 = time.monotonic()
    with pytest.raises(LabError) as err, kubelet.run_pod(pod, ready_timeout=60):
        pass
    message = str(err.value)
    assert "'web' is exited 4 before its readinessProbe passed" in message and "about to fail" in message, message
    assert time.monotonic() - t0 < 20
