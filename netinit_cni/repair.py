"""The repair loop: pods on this node that started without capture (the agent was down when their sandbox was
made, so their ``istio-validation`` exited 126 and the kubelet keeps restarting it) are deleted, so that their
controller recreates them and the plugin, now back, programs the new sandbox - istio-cni's repair controller.

Bounded three ways so it cannot loop or flatten a node: a pod (by UID) is deleted at most once per agent lifetime;
at most ``max_per_minute`` deletions per minute on the node; and only pods a controller owns (a ReplicaSet,
StatefulSet, Job, ...) - a bare pod would not come back, so it is logged instead. A pod recreated while capture is
still broken fails validation again with a new UID: the rate limit holds that to a trickle, and the log says so.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from netinit_cni.decide import VALIDATION
from netinit_cni.kube import KubeError, Pods

VALIDATION_FAILED = 126  # netinit's (and istio-iptables') exit code for failed validation


def validation_failed(pod: Mapping[str, Any]) -> bool:
    """The pod's istio-validation init container last ended with exit 126. Pure."""
    status = pod.get("status") if isinstance(pod.get("status"), dict) else {}
    assert isinstance(status, dict)
    for cs in status.get("initContainerStatuses") or []:
        if not isinstance(cs, dict) or cs.get("name") != VALIDATION:
            continue
        for key in ("state", "lastState"):
            term = (cs.get(key) or {}).get("terminated") or {}
            if term.get("exitCode") == VALIDATION_FAILED:
                return True
    return False


def controlled(pod: Mapping[str, Any]) -> bool:
    owners = (pod.get("metadata") or {}).get("ownerReferences") or []
    return any(isinstance(o, dict) and o.get("controller") is True for o in owners)


class Repairer:
    def __init__(
        self,
        pods: Callable[[], Pods],
        node: str,
        log: Callable[..., None],
        *,
        max_per_minute: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pods, self.node, self.log, self.max_per_minute, self._clock = pods, node, log, max_per_minute, clock
        self.deleted: set[str] = set()
        self._recent: deque[float] = deque()

    def _budget(self) -> bool:
        now = self._clock()
        while self._recent and now - self._recent[0] > 60:
            self._recent.popleft()
        return len(self._recent) < self.max_per_minute

    def run_once(self) -> list[str]:
        """One pass; the pods deleted (``namespace/name``)."""
        try:
            pods = self._pods().on_node(self.node)
        except KubeError as e:
            self.log(msg=f"repair: cannot list the node's pods: {e}", outcome="error")
            return []
        done: list[str] = []
        for pod in pods:
            meta = pod.get("metadata") or {}
            uid, where = str(meta.get("uid", "")), f"{meta.get('namespace')}/{meta.get('name')}"
            if not validation_failed(pod) or uid in self.deleted:
                continue
            if not controlled(pod):
                why = "no controller would recreate it: left alone (delete it once the agent is healthy)"
                self.log(msg=f"repair: {where} failed validation, but {why}", outcome="repair-skipped", pod=where)
                self.deleted.add(uid)
                continue
            if not self._budget():
                why = f"{self.max_per_minute} pods deleted in the last minute"
                self.log(msg=f"repair: {where} waits: {why}", outcome="repair-deferred", pod=where)
                continue
            try:
                gone = self._pods().delete(str(meta.get("namespace")), str(meta.get("name")), uid)
            except KubeError as e:
                self.log(msg=f"repair: deleting {where} failed: {e}", outcome="error", pod=where)
                continue
            self.deleted.add(uid)
            self._recent.append(self._clock())
            if gone:
                done.append(where)
                self.log(msg=f"repair: deleted {where} (it started without capture)", outcome="repaired", pod=where)
        return done
