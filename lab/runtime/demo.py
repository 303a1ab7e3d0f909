"""``make demo-runtime`` (or ``DEMO_RUNTIME=podman make demo``): the walk-through of ``make demo`` with real
containers - the shipped images, run by podman as a kubelet would run them (:mod:`lab.runtime.kubelet`).

The webhook is the injector image in its own pod, under the Deployment's securityContext; the sample pod's
AdmissionReview goes to it over verified TLS on podman's bridge; the pod it returns runs with istio-init from the
netinit image, istio-proxy from the envoy image and the app from the lab's echo image. Exits 0 only if every
check passed; every pod, container, volume and rule it made is removed, also on failure or Ctrl-C.
"""

from __future__ import annotations

import base64
import json
import time

from lab import apiserver
from lab.demo import NAMESPACE, NAMESPACE_LABELS, SAMPLE_POD, _delta, check, injection_summary, say, step
from lab.runtime import apps, echo_app, kubelet, podman
from lab.runtime.webhook import WebhookContainer

GATEWAY = "10.88.0.1"
APP_PORT = 8080


def run(backend: str) -> int:
    started = time.monotonic()
    step("bootstrap: the container engine and the three images (make images; cached after the first build)")
    why = podman.missing()
    check(why is None, "podman (with runc) can run containers here", why or "")
    built = podman.build_images()
    for name, image in built.images.items():
        say(f"{name:<9} {image}  ({built.status[name]})")
    echo = apps.echo_image(built.base)
    say(f"app       {echo}  (the lab's echo server: answers who it is and who called)")

    step("the webhook as it ships: the Deployment's pod (overlays/cert-manager, file mode) in its own container")
    with WebhookContainer(built.images) as webhook:
        pod = webhook.pod
        assert pod is not None
        name = "sidecar-injector"
        say(f"pod IP {pod.ip}; https://{pod.ip}:{webhook.port}/inject verified as {webhook.server_name}")
        user, ro = pod.inspect(name, "{{.Config.User}}"), pod.inspect(name, "{{.HostConfig.ReadonlyRootfs}}")
        caps = pod.effective_caps(name)
        check(
            user == "65532:65532" and ro == "true" and caps == [],
            f"runs as {user}, read-only root {ro}, capabilities {caps or 'none'} (the Deployment's securityContext)",
        )
        check(webhook.get("/readyz")[0] == 200, "webhook /readyz answers 200 over verified TLS")

        step(f"kubectl label namespace {NAMESPACE} istio-injection=enabled; kubectl apply -f web.yaml")
        sample = json.loads(json.dumps(SAMPLE_POD))
        sample["spec"]["containers"][0]["image"] = echo
        chosen = apiserver.selecting_webhooks(sample, NAMESPACE, NAMESPACE_LABELS)
        check(bool(chosen), f"the API server would call {', '.join(h['name'] for h in chosen)}")
        injected = apiserver.admit(sample, NAMESPACE_LABELS, webhook, namespace=NAMESPACE)
        ops = json.loads(base64.b64decode((webhook.last_response or {}).get("patch") or "W10="))
        check(bool(ops), f"admitted with a JSON Patch of {len(ops)} operations")
        for line in injection_summary(sample, injected):
            say(line)

        step(f"the kubelet: podman runs the pod spec the webhook returned (node iptables: {backend})")
        with kubelet.run_pod(injected, node_iptables=backend, progress=say) as running:
            check(
                running.effective_caps("istio-init") == ["CAP_NET_ADMIN", "CAP_NET_RAW"],
                "istio-init had only NET_ADMIN and NET_RAW (podman inspect EffectiveCaps)",
            )
            check(
                running.effective_caps("istio-proxy") == []
                and running.inspect("istio-proxy", "{{.Config.User}}") == "1337:1337",
                "istio-proxy runs as 1337:1337 with no capabilities, on a read-only root",
            )
            step("the nat rules istio-init programmed in the pod")
            for line in running.rules(backend).splitlines():
                if line.startswith(("-A", ":ISTIO")) or "redirect" in line:
                    say(line.strip())

            step(f"inbound: the node (host, {GATEWAY}) -> {running.ip}:{APP_PORT}")
            before = running.envoy_stats()
            res = running.get(APP_PORT)
            after = running.envoy_stats()
            say(f"answer: {res.body.strip() or res.error}  ({res.seconds * 1000:.1f} ms)")
            check("peer=127.0.0.6:" in res.body, "the app saw 127.0.0.6: Envoy's inbound upstream carried it")
            check(_delta(before, after, "cluster.InboundPassthroughCluster.upstream_cx_total") == 1, "one inbound hop")

            step(f"outbound: the app (uid 1000, podman exec) -> a server outside the pod on {GATEWAY}")
            server = echo_app.serve_in_thread("outside", GATEWAY, 0)
            try:
                port = int(server.server_address[1])
                before = running.envoy_stats()
                res = running.exec_get("web", GATEWAY, port)
                after = running.envoy_stats()
            finally:
                server.shutdown()
                server.server_close()
            say(f"answer: {res.body.strip() or res.error}  ({res.seconds * 1000:.1f} ms)")
            check(res.status == 200 and f"peer={running.ip}:" in res.body, "the server saw the pod IP")
            loops = _delta(before, after, "listener.0.0.0.0_15001.downstream_cx_total")
            check(loops == 1, "captured to 15001 once: Envoy's own connection (uid 1337) was not captured again")

            step("the kubelet's view: probe and metrics ports")
            check(running.get(15021, "/healthz/ready").status == 200, f"GET {running.ip}:15021/healthz/ready: 200")
            check(running.get(15090, "/stats/prometheus").status == 200, f"GET {running.ip}:15090/stats/prometheus")

            step("istio-init again in the same sandbox")
            again = running.rerun_init()
            check(
                again.returncode == 0 and "already in place" in again.stdout + again.stderr, "exit 0, already in place"
            )
            pod_name = running.name
            step("cleanup: podman pod rm, volumes, work directory")
    check(podman.cli("pod", "exists", pod_name, check=False).returncode == 1, "the pod and its containers are gone")
    print(f"\nruntime demo passed in {time.monotonic() - started:.1f}s (see docs/install.md: what it proves).")
    return 0
