"""The agent's hands: netinit itself, run in the pod's namespace - the same planner, validator, atomic apply and
rollback as an ``istio-init`` container - and a record per container of what ADD programmed, so DEL undoes only
that and CHECK compares with it.

netinit runs as a child process (``python -m netinit --network-namespace CNI_NETNS ...``): setns(2) would move
an agent thread, and a crash in one pod's apply must not take the agent down. The records live on the node's
tmpfs (``/var/run/netinit-cni/pods``), so an agent restart keeps them and a node reboot, which drops every pod
namespace too, clears them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from netinit_cni.files import write_atomic
from netinit_cni.protocol import CniError, Code

BACKENDS = {"auto": (), "legacy": ("--force-iptables-binary", "legacy"), "nft": ("--force-iptables-binary", "nft")}
BACKENDS["native-nft"] = ("--native-nftables",)
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}")


@dataclass(frozen=True)
class Record:
    """What ADD programmed for one container (sandbox)."""

    netns: str
    args: tuple[str, ...]
    env: Mapping[str, str]
    pod: str


class Programmer:
    def __init__(self, state_dir: Path, backend: str = "auto", timeout: float = 60.0, python: str = sys.executable):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}")
        self.state_dir, self.backend, self.timeout, self.python = state_dir, backend, timeout, python

    # the records -----------------------------------------------------------------------------------------------

    def _path(self, container_id: str) -> Path:
        if not _SAFE_ID.fullmatch(container_id):
            raise CniError(
                Code.INVALID_ENV, f"CNI_CONTAINERID {container_id!r} is not a container ID", "CNI_CONTAINERID"
            )
        return self.state_dir / f"{container_id}.json"

    def record(self, container_id: str) -> Record | None:
        try:
            doc = json.loads(self._path(container_id).read_text())
        except FileNotFoundError:
            return None
        return Record(doc["netns"], tuple(doc["args"]), dict(doc["env"]), doc["pod"])

    def _save(self, container_id: str, rec: Record) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        doc = {"netns": rec.netns, "args": list(rec.args), "env": dict(rec.env), "pod": rec.pod}
        write_atomic(self._path(container_id), json.dumps(doc), 0o600)

    # netinit ---------------------------------------------------------------------------------------------------

    def _args(self, args: Sequence[str]) -> list[str]:
        native = "--native-nftables" in args
        return [*args, *(() if native else BACKENDS[self.backend])]

    def _netinit(self, argv: Sequence[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "PYTHONPATH")}
        try:
            return subprocess.run(
                [self.python, "-m", "netinit", *argv],
                env={**base, **env},
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise CniError(Code.TRY_AGAIN_LATER, f"netinit did not finish in {self.timeout:g}s", "timeout") from None

    @staticmethod
    def _require_netns(netns: str) -> None:
        if not os.path.exists(netns):
            raise CniError(Code.INVALID_ENV, f"CNI_NETNS {netns!r} does not exist", "CNI_NETNS")

    def add(
        self, container_id: str, netns: str, args: Sequence[str], env: Mapping[str, str], pod: str, validate: bool
    ) -> str:
        """Program (idempotent: netinit leaves rules that are in place alone) and record; the log line's text."""
        self._require_netns(netns)
        again = self.record(container_id) == Record(netns, tuple(args), dict(env), pod)
        # A repeated ADD (a runtime's retry) re-checks the rules but does not probe again: the pod's proxy may be
        # listening on the ports the probe needs by now.
        probe = validate and not again
        argv = ["--network-namespace", netns, *self._args(args), *(["--run-validation"] if probe else [])]
        proc = self._netinit(argv, env)
        out = (proc.stderr or proc.stdout).strip()
        if proc.returncode == 2:
            raise CniError(Code.POD_REFUSED, f"{pod}: netinit refused the pod's capture settings: {out}", "args")
        if proc.returncode == 126:
            raise CniError(Code.VALIDATION_FAILED, f"{pod}: capture programmed but not working: {out}", "validation")
        if proc.returncode != 0:
            raise CniError(Code.APPLY_FAILED, f"{pod}: netinit exited {proc.returncode} (rolled back): {out}", "apply")
        self._save(container_id, Record(netns, tuple(args), dict(env), pod))
        return out.splitlines()[-1] if out else "applied"

    def delete(self, container_id: str, netns: str) -> str:
        """Undo what ADD recorded for this container, and only that; a namespace that is gone is done."""
        rec = self.record(container_id)
        if rec is None:
            return "nothing recorded for this container: nothing to undo"
        path = netns or rec.netns
        if not os.path.exists(path):
            self._path(container_id).unlink(missing_ok=True)
            return f"namespace {path} is gone: nothing to undo"
        native = "--native-nftables" in rec.args
        argv = ["--network-namespace", path, "--cleanup-only", *(["--native-nftables"] if native else [])]
        proc = self._netinit([*argv, *(() if native else BACKENDS[self.backend])], {})
        if proc.returncode != 0:
            raise CniError(Code.IO_FAILURE, f"{rec.pod}: cleanup failed: {(proc.stderr or proc.stdout).strip()}")
        self._path(container_id).unlink(missing_ok=True)
        return f"removed the capture of {rec.pod}"

    def check(self, container_id: str, netns: str) -> str:
        """CHECK: the live rules against the plan of the recorded flags (``netinit verify``)."""
        rec = self.record(container_id)
        if rec is None:
            raise CniError(Code.DRIFT, "CHECK: ADD recorded no capture for this container", "CNI_CONTAINERID")
        self._require_netns(netns)
        backend = () if "--native-nftables" in rec.args else BACKENDS[self.backend]
        proc = self._netinit(["verify", "--network-namespace", netns, *backend, *rec.args], rec.env)
        if proc.returncode != 0:
            raise CniError(Code.DRIFT, f"{rec.pod}: the capture drifted: {proc.stdout.strip()}", "rules")
        return "rules as programmed"
