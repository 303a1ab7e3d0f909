#!/usr/bin/env bash
# Set up everything on a fresh Debian machine: system packages (as root), a venv, the project and its
# test tools. Idempotent and quiet when there is nothing to do.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v iptables-legacy-restore >/dev/null 2>&1 || need_pkgs+=(iptables)
command -v iptables-nft-restore >/dev/null 2>&1 || need_pkgs+=(iptables)
# nft for `netinit --native-nftables`; often only in /usr/sbin, which a non-root PATH may lack.
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || need_pkgs+=(nftables)
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v setpriv >/dev/null 2>&1 || need_pkgs+=(util-linux)
# The runtime tests (tests/runtime, `make images`): a real container engine and a way to make a base image offline.
command -v podman >/dev/null 2>&1 || need_pkgs+=(podman)
command -v runc >/dev/null 2>&1 || need_pkgs+=(runc)
command -v mmdebstrap >/dev/null 2>&1 || need_pkgs+=(mmdebstrap)
# CNI mode: the plugin is a static C binary (gcc + libc.a), run by podman's CNI backend with Debian's plugins
command -v cc >/dev/null 2>&1 || need_pkgs+=(gcc)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -e /usr/lib/aarch64-linux-gnu/libc.a ] || need_pkgs+=(libc6-dev)
[ -x /usr/lib/cni/bridge ] || need_pkgs+=(containernetworking-plugins)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "bootstrap: need root to install: ${need_pkgs[*]}" >&2; exit 1
  fi
  echo "bootstrap: installing ${need_pkgs[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.bootstrap-stamp
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  log=$(mktemp)
  if ! .venv/bin/python -m pip install -q -e '.[test]' >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; exit 1
  fi
  rm -f "$log"
  touch "$stamp"
fi
