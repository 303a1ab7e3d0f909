#!/usr/bin/env bash
# The one place that says how this project runs a container engine. Source it (scripts/images.sh, the runtime
# lab) or execute it (lab/runtime/podman.py reads its output):
#
#   . scripts/podman-env.sh        exports CONTAINER_ENGINE (podman or docker) and, for podman, CONTAINERS_CONF
#   scripts/podman-env.sh          prints those two as KEY=VALUE lines
#
# Podman here needs two settings its defaults get wrong on machines like the CI's (see docs/benchmarks.md):
#   - runtime runc: crun fails on hybrid cgroups v1 ("cgroups in hybrid mode not supported");
#   - default_ulimits no higher than this shell's hard limits: root without CAP_SYS_RESOURCE cannot raise them,
#     and podman's default nofile (1048576) makes every container start fail with "setrlimit: Operation not
#     permitted".
# The file is written, not committed, because the limits are this machine's. CONTAINER_ENGINE=docker (or no
# podman on PATH) selects docker, which needs none of this.

_podman_env_main() {
  local engine=${CONTAINER_ENGINE:-}
  if [ -z "$engine" ]; then
    if command -v podman >/dev/null 2>&1; then
      engine=podman
    elif command -v docker >/dev/null 2>&1; then
      engine=docker
    else
      echo "podman-env: neither podman nor docker on PATH (apt-get install -y podman runc)" >&2
      return 1
    fi
  fi
  export CONTAINER_ENGINE=$engine
  if [ "$engine" != podman ]; then
    return 0
  fi
  local dir=${SIDECAR_PODMAN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sidecar-injector/podman}
  mkdir -p "$dir"
  local nofile nproc runtime=runc
  nofile=$(ulimit -Hn)
  nproc=$(ulimit -Hu)
  [ "$nofile" = unlimited ] && nofile=1048576
  [ "$nproc" = unlimited ] && nproc=32768
  [ "$nproc" -gt 32768 ] && nproc=32768
  command -v runc >/dev/null 2>&1 || runtime=crun
  local conf="$dir/containers.conf" tmp
  tmp=$(mktemp "$dir/.containers.conf.XXXXXX")
  cat >"$tmp" <<EOF
# Written by scripts/podman-env.sh; rewritten on every use.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "$runtime"
EOF
  mv -f "$tmp" "$conf"
  export CONTAINERS_CONF=$conf
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  _podman_env_main
  echo "CONTAINER_ENGINE=$CONTAINER_ENGINE"
  [ "$CONTAINER_ENGINE" = podman ] && echo "CONTAINERS_CONF=$CONTAINERS_CONF"
  exit 0
else
  _podman_env_main
fi
