#!/bin/bash
# `make test-deploy`: deploy/compose.yaml (+ compose.cpu.yaml) brought up for real.
#
# Uses the Docker engine that answers (DOCKER_HOST or the default socket); when none does,
# starts its own dockerd (root needed) with its data root under .kbatch/deploy/docker/root,
# kept as a cache of base images and layers, and stops it at the end, restoring iptables
# and ip_forward as they were. Upstream base images are replaced by local stand-ins built
# from a debootstrap'ed Debian bookworm (deploy/local/*.Dockerfile): no registry needed.
# Without a compose v2 plugin, one is built with Go into .kbatch/deploy (~/.docker untouched).
#
# `test-deploy.sh --images-to DIR` builds the same images and saves them into DIR as
# docker-save archives, running no test (make test-k8s imports them into its cluster).
set -euo pipefail

cd "$(dirname "$0")/../.."
REPO=$PWD
STATE=$REPO/.kbatch/deploy
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
COMPOSE_VERSION=${COMPOSE_VERSION:-v2.29.7}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ENGINE=$STATE/docker
EXEC_ROOT=/tmp/kbatch-dockerd-exec
mkdir -p "$STATE"

# shellcheck source=deploy/local/iptables.sh
source "$REPO/deploy/local/iptables.sh"

log() { printf '[test-deploy %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

DOCKERD_PID=""
cleanup() {
  local status=$?
  # The test tears its stack down; this covers a run interrupted before it could.
  if docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    docker compose -p kbatch-deploy-test -f deploy/compose.yaml -f deploy/compose.cpu.yaml \
      down --volumes --remove-orphans >/dev/null 2>&1 || true
  fi
  if [[ -n $DOCKERD_PID ]]; then
    log "stopping the dockerd this run started (pid $DOCKERD_PID)"
    kill -TERM "$DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$DOCKERD_PID" 2>/dev/null || true
    wait "$DOCKERD_PID" 2>/dev/null || true
    rm -rf "$EXEC_ROOT"
    if ! iptables-save | grep -v '^#' | sed 's/\[[0-9:]*\]//' |
      cmp -s - <(grep -v '^#' "$ENGINE/iptables.before" | sed 's/\[[0-9:]*\]//'); then
      log "restoring the iptables rules found before dockerd started"
      restore_iptables "$ENGINE/iptables.before"
    fi
    sysctl -qw "net.ipv4.ip_forward=$(cat "$ENGINE/ip_forward.before")"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_engine() {
  if docker info >/dev/null 2>&1; then
    log "using the Docker engine that answers"
    return
  fi
  [[ $(id -u) -eq 0 ]] || { log "no Docker engine answers; start one or run as root"; exit 1; }
  mkdir -p "$ENGINE"
  iptables-save >"$ENGINE/iptables.before"
  cat /proc/sys/net/ipv4/ip_forward >"$ENGINE/ip_forward.before"
  export DOCKER_HOST=unix://$ENGINE/docker.sock
  log "starting dockerd (data root $ENGINE/root)"
  # --bridge=none: no docker0 left behind; compose makes (and removes) its own network.
  dockerd --data-root "$ENGINE/root" --exec-root "$EXEC_ROOT" -H "$DOCKER_HOST" \
    --pidfile "$ENGINE/dockerd.pid" --bridge=none >"$ENGINE/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 120); do
    docker info >/dev/null 2>&1 && return
    kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -20 "$ENGINE/dockerd.log"; exit 1; }
    sleep 0.5
  done
  log "dockerd did not answer within 60 s"; exit 1
}

ensure_compose() {
  docker compose version >/dev/null 2>&1 && return
  export DOCKER_CONFIG=$STATE/docker-config
  local plugin=$DOCKER_CONFIG/cli-plugins/docker-compose
  if [[ ! -x $plugin ]]; then
    log "building docker compose $COMPOSE_VERSION with Go (a few minutes, once)"
    GOBIN=$STATE/gobin "${GO:-$(command -v go || echo /usr/local/go/bin/go)}" install \
      "github.com/docker/compose/v2/cmd@$COMPOSE_VERSION"
    mkdir -p "$(dirname "$plugin")"
    cp "$STATE/gobin/cmd" "$plugin"
  fi
}

# BuildKit reads deploy/Dockerfile.dockerignore and sends only what the build copies.
build() {
  if docker buildx version >/dev/null 2>&1; then
    docker buildx build --load --network host "$@"
  else
    DOCKER_BUILDKIT=1 "${BUILDKIT_CLIENT:-/usr/bin/docker}" build --network host "$@"
  fi
}

ensure_debian() {
  docker image inspect kbatch-local/debian:bookworm >/dev/null 2>&1 && return
  log "debootstrap bookworm from $DEBIAN_MIRROR (once per data root)"
  local rootfs=$STATE/rootfs
  rm -rf "$rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" >"$STATE/debootstrap.log"
  tar -C "$rootfs" -c . | docker import - kbatch-local/debian:bookworm >/dev/null
  rm -rf "$rootfs"
}

build_stand_ins() {
  local context=$STATE/context
  mkdir -p "$context/python" "$context/empty" "$context/kafka"
  # The host's CA bundle: pip in the build then trusts what the host trusts.
  cp /etc/ssl/certs/ca-certificates.crt "$context/python/"
  build -q -f deploy/local/python.Dockerfile -t kbatch-local/python:3.11 "$context/python"
  build -q -f deploy/local/prometheus.Dockerfile -t kbatch-local/prometheus:bookworm \
    "$context/empty"
  local pom=deploy/local/kafka/pom.xml
  if ! cmp -s "$pom" "$context/kafka/libs/.pom"; then
    rm -rf "$context/kafka/libs"
    mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
      "-DoutputDirectory=$context/kafka/libs"
    cp "$pom" "$context/kafka/libs/.pom"
  fi
  rm -rf "$context/kafka/kafka" && cp -r deploy/local/kafka "$context/kafka/kafka"
  build -q -f deploy/local/kafka.Dockerfile -t kbatch-local/kafka:4.1.2 "$context/kafka"
}

# llama-cpp-python compiles for minutes: the wheel pip already built for .venv is reused.
ensure_llama_wheel() {
  local version
  version=$("$PYTHON" -c 'from importlib.metadata import version; print(version("llama_cpp_python"))')
  compgen -G "deploy/wheels/llama_cpp_python-$version-*.whl" >/dev/null && return
  local cached
  cached=$(find ~/.cache/pip -name "llama_cpp_python-$version-*.whl" 2>/dev/null | head -1)
  if [[ -n $cached ]]; then
    cp "$cached" deploy/wheels/
  else
    "$PYTHON" -m pip wheel --quiet --no-deps -w deploy/wheels "llama-cpp-python==$version"
  fi
}

build_kbatch() {
  local base=(--build-arg BASE=kbatch-local/python:3.11 --build-arg BUILDER=kbatch-local/python:3.11)
  build -q -f deploy/Dockerfile "${base[@]}" --target service -t kbatch:latest .
  build -q -f deploy/Dockerfile "${base[@]}" --target llamacpp -t kbatch-llamacpp:latest .
}

IMAGES=(kbatch:latest kbatch-llamacpp:latest kbatch-local/kafka:4.1.2 kbatch-local/prometheus:bookworm)

save_images() {
  local dir=$1
  mkdir -p "$dir"
  for image in "${IMAGES[@]}"; do
    log "saving $image"
    docker save "$image" -o "$dir/$(tr '/:' '__' <<<"$image").tar"
  done
}

start_engine
log "building images"
ensure_debian
build_stand_ins
ensure_llama_wheel
build_kbatch
if [[ ${1:-} == --images-to ]]; then
  save_images "$2"
  exit 0
fi
ensure_compose
log "running tests/deploy"
RUN_DEPLOY_TEST=1 COMPOSE_PROJECT_NAME=kbatch-deploy-test \
  KAFKA_IMAGE=kbatch-local/kafka:4.1.2 PROMETHEUS_IMAGE=kbatch-local/prometheus:bookworm \
  "$PYTHON" -m pytest tests/deploy "$@"
