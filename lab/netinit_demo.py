"""``make demo`` (netinit part): capture traffic of a throwaway "pod" namespace and show what happened.

Until the webhook lands this demo covers netinit alone: the rules an injected pod's istio-init would
program, then real connections in and out of the pod, and where they ended up. Exits 0 only if every
step behaved; everything it creates is removed, also on failure or Ctrl-C.
"""

from __future__ import annotations

import sys

from lab import netlab

ARGS = list(netlab.SIDECAR_ARGS)
POD, PEER = "10.88.0.2", "10.88.0.1"


def step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def check(ok: bool, what: str) -> None:
    print(f"    [{'ok' if ok else 'FAILED'}] {what}", flush=True)
    if not ok:
        raise SystemExit(1)


def main() -> int:
    with netlab.namespace("demo-pod") as pod, netlab.namespace("demo-peer") as peer:
        step(f"network namespaces: pod {pod} ({POD}) <-veth-> peer {peer} ({PEER})")
        netlab.link(pod, f"{POD}/24", peer, f"{PEER}/24")
        netlab.sh("ip", "route", "add", "default", "via", PEER, ns=pod)

        step("netinit " + " ".join(a if a else "''" for a in ARGS))
        res = netlab.run_netinit("--network-namespace", pod, *ARGS, "--run-validation")
        sys.stdout.write("".join(f"    {line}\n" for line in res.stderr.splitlines()))
        check(res.returncode == 0, "rules applied and validated (exit 0)")

        step("nat table in the pod (iptables-save -t nat)")
        nat = netlab.sh("iptables-save", "-t", "nat", ns=pod).stdout
        print("".join(f"    {line}\n" for line in nat.splitlines() if line.startswith(("-A", ":ISTIO"))), end="")

        step("a stand-in proxy listens on 15001/15006 as uid 1337 and reports SO_ORIGINAL_DST")
        listener = netlab.capture_listener(pod, [15001, 15006])
        server = netlab.plain_server(peer, "0.0.0.0", 8080)
        try:
            got = netlab.connect(peer, POD, 9080)
            ev = netlab.events(listener)
            print(f"    peer -> {POD}:9080 answered {got!r}; proxy saw {ev}")
            check(got == "captured-by-15006" and ev[0]["orig_dst"] == [POD, 9080], "inbound captured to 15006")

            got = netlab.connect(pod, PEER, 8080, uid=1000)
            ev = netlab.events(listener)
            print(f"    app(uid 1000) -> {PEER}:8080 answered {got!r}; proxy saw {ev}")
            check(got == "captured-by-15001" and ev[0]["orig_dst"] == [PEER, 8080], "outbound captured to 15001")

            got = netlab.connect(pod, PEER, 8080, uid=1337)
            ev = netlab.events(listener)
            print(f"    proxy(uid 1337) -> {PEER}:8080 answered {got!r}; proxy saw {ev}")
            check(got.startswith("direct:") and not ev, "the proxy's own traffic is not captured")

            got = netlab.connect(peer, POD, 15021)
            check(not netlab.events(listener), "excluded inbound port 15021 is not captured")
        finally:
            listener.stop()
            server.stop()

        step("re-run (what a pod sandbox restart does)")
        again = netlab.run_netinit("--network-namespace", pod, *ARGS)
        check(again.returncode == 0 and "already in place" in again.stderr, "second run is a no-op, exit 0")

        step("cleanup")
        gone = netlab.run_netinit("--network-namespace", pod, "--cleanup-only")
        check(gone.returncode == 0 and "ISTIO" not in netlab.sh("iptables-save", ns=pod).stdout, "our rules removed")
    print("\ndemo passed. The whole path (webhook, injected pod, a real Envoy): make demo.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
