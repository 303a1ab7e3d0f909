#!/usr/bin/env bash
# Build the three images (`make images`):
#
#   $IMAGE_REGISTRY/netinit:$IMAGE_TAG    Dockerfile.init      the istio-init container (netinit)
#   $IMAGE_REGISTRY/injector:$IMAGE_TAG   Dockerfile.injector  the webhook (sidecar-injector serve)
#   $IMAGE_REGISTRY/envoy:$IMAGE_TAG      Dockerfile.envoy     Envoy for the `envoy` template
#
# IMAGE_REGISTRY defaults to ghcr.io/sidecar-injector and IMAGE_TAG to the version in pyproject.toml, which are
# the names the manifests and the shipped values use. With podman (preferred) or docker (CONTAINER_ENGINE=...).
#
# The base: PYTHON_IMAGE if set, else the pinned base of the Dockerfiles when it is present or can be pulled,
# else a stand-in built locally with mmdebstrap (Debian bookworm's python3; no registry needed) and imported as
# localhost/sidecar-injector-python-standin:<recipe hash>. The stand-in is built once per recipe and reused.
# IMAGES_BASE=pinned|standin forces one or the other.
#
# Builds use the engine's layer cache: with no source change a second run takes seconds. It prints, per image,
# whether it was built or came from the cache, how long it took, its size and its size over the base.
#
# HTTPS from build containers may go through a TLS-intercepting proxy whose CA only the host trusts: the host's
# CA bundle is bind-mounted for RUN steps (podman only; never copied into a layer). IMAGES_HOST_CA=0 turns it
# off. IMAGES_VERBOSE=1 streams the build output (it is otherwise kept in $IMAGES_LOG_DIR and shown on failure).
# IMAGES_SUMMARY=FILE also writes what was built as KEY=VALUE lines (base, netinit, injector, envoy: image names;
# <name>_status: built|cached) for programs (lab/runtime/podman.py).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/podman-env.sh
engine=$CONTAINER_ENGINE

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n1)
registry=${IMAGE_REGISTRY:-ghcr.io/sidecar-injector}
tag=${IMAGE_TAG:-$version}
log_dir=${IMAGES_LOG_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sidecar-injector/images}
mkdir -p "$log_dir"

# The pinned base, from the Dockerfile itself (one source of truth).
pinned=$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile.injector | head -n1)

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1fs", b - a }'; }
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1e6 }'; }
image_id() { "$engine" image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
image_size() { "$engine" image inspect -f '{{.Size}}' "$1"; }
say() { echo "images: $*" >&2; }

# --- the stand-in base -------------------------------------------------------------------------------------------
STANDIN_SUITE=bookworm
STANDIN_VARIANT=minbase
STANDIN_INCLUDE=python3,python3-venv,python3-pip,python-is-python3,ca-certificates
STANDIN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

standin_image() {
  local recipe key
  recipe="mmdebstrap --variant=$STANDIN_VARIANT --include=$STANDIN_INCLUDE $STANDIN_SUITE; ENV PATH=$STANDIN_PATH"
  key=$(printf '%s' "$recipe" | sha256sum | cut -c1-12)
  echo "localhost/sidecar-injector-python-standin:$STANDIN_SUITE-$key"
}

build_standin() {
  local image=$1 t0 work
  if [ -n "$(image_id "$image")" ]; then
    say "base $image: cached"
    return 0
  fi
  command -v mmdebstrap >/dev/null 2>&1 || {
    say "the pinned base cannot be pulled and mmdebstrap is missing (apt-get install -y mmdebstrap)"
    return 1
  }
  t0=$(now)
  work=$(mktemp -d)
  say "base $image: building with mmdebstrap ($STANDIN_SUITE, $STANDIN_VARIANT + python3)"
  if ! mmdebstrap --quiet --variant="$STANDIN_VARIANT" --include="$STANDIN_INCLUDE" \
    "$STANDIN_SUITE" "$work/rootfs.tar" >"$log_dir/base.log" 2>&1; then
    cat "$log_dir/base.log" >&2
    rm -rf "$work"
    return 1
  fi
  "$engine" import -q --change "ENV PATH=$STANDIN_PATH" --change 'CMD ["python3"]' \
    "$work/rootfs.tar" "$image" >/dev/null
  rm -rf "$work"
  say "base $image: built in $(secs "$t0" "$(now)")"
}

choose_base() {
  if [ -n "${PYTHON_IMAGE:-}" ]; then
    echo "$PYTHON_IMAGE"
    return 0
  fi
  local mode=${IMAGES_BASE:-auto}
  if [ "$mode" != standin ]; then
    # docker.io/library/ spelled out: podman would otherwise ask which registry a short name means.
    local full=$pinned
    case $full in */*) ;; *) full=docker.io/library/$full ;; esac
    if [ -n "$(image_id "$full")" ] || [ -n "$(image_id "$pinned")" ] \
      || timeout 300 "$engine" pull -q "$full" >"$log_dir/pull.log" 2>&1; then
      echo "$pinned"
      return 0
    fi
    if [ "$mode" = pinned ]; then
      say "cannot pull the pinned base $full:"
      cat "$log_dir/pull.log" >&2
      return 1
    fi
    say "the pinned base cannot be pulled ($(tail -n1 "$log_dir/pull.log" | sed "s/.*: //")); using the stand-in"
  fi
  local image
  image=$(standin_image)
  build_standin "$image" >&2
  echo "$image"
}

# --- the three images --------------------------------------------------------------------------------------------
base=$(choose_base)
base_size=$(image_size "$base")
build_args=(--build-arg "PYTHON_IMAGE=$base")
mounts=()
if [ "$engine" = podman ] && [ "${IMAGES_HOST_CA:-1}" = 1 ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  mounts=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
fi
layers=()
# --format docker: Docker's image format keeps SHELL (the OCI format drops it).
[ "$engine" = podman ] && layers=(--layers --format docker)

summary=()
machine=("engine=$engine" "base=$base")
build_one() {
  local name=$1 dockerfile=$2 image="$registry/$1:$tag" before after t0 status size over log
  log="$log_dir/build-$name.log"
  before=$(image_id "$image")
  t0=$(now)
  say "$name: $engine build -f $dockerfile -t $image"
  local cmd=("$engine" build "${layers[@]}" -f "$dockerfile" -t "$image" "${build_args[@]}" "${mounts[@]}" .)
  if [ "${IMAGES_VERBOSE:-0}" = 1 ]; then
    "${cmd[@]}" 2>&1 | tee "$log" >&2
    [ "${PIPESTATUS[0]}" = 0 ] || { say "$name: build failed (log: $log)"; return 1; }
  elif ! "${cmd[@]}" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    say "$name: build failed (whole log: $log)"
    return 1
  fi
  after=$(image_id "$image")
  status=built
  [ "$before" = "$after" ] && status=cached
  size=$(image_size "$image")
  if [ "$name" = envoy ]; then
    over="(FROM scratch)"
  else
    over="+$(mb $((size - base_size))) over the base"
  fi
  machine+=("$name=$image" "${name}_status=$status")
  summary+=("$(printf '%-44s %-7s %7s %10s  %s' "$image" "$status" "$(secs "$t0" "$(now)")" "$(mb "$size")" "$over")")
}

t_all=$(now)
build_one netinit Dockerfile.init
build_one injector Dockerfile.injector
build_one envoy Dockerfile.envoy

echo "base: $base ($(mb "$base_size"))"
for line in "${summary[@]}"; do
  echo "$line"
done
echo "total: $(secs "$t_all" "$(now)") (builds; engine $engine)"
if [ -n "${IMAGES_SUMMARY:-}" ]; then
  printf '%s\n' "${machine[@]}" >"$IMAGES_SUMMARY"
fi
